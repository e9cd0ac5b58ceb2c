"""The BERT forward pass, written once against the Backend protocol.

Each block reads as its equation (HF BertModel semantics, post-LN):
    x_0   = LN(E_word[ids] + E_type[types] + E_pos[0..T))
    a     = softmax(Q K^T / sqrt(D) + mask) V                    per head, Q = x W_q^T + b_q, ...
    x'    = LN(x + a W_o^T + b_o)
    x_l+1 = LN(x' + act(x' W_1^T + b_1) W_2^T + b_2)
    pooled = tanh(x_L[:, 0] W_p^T + b_p);  logits = pooled W_c^T + b_c
Op names are the weight-key prefixes, so an op, its weights and its layer are found by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.base import Backend
from .errors import UserError
from .spec import ModelSpec
from .weights import Weights, layer_prefix


@dataclass
class ForwardResult:
    hidden_states: list[Any]  # L + 1 entries, each (B, T, C): embeddings output, then each layer
    pooled: Any | None  # (B, C) pooler output, when the model has a pooler
    logits: Any | None  # (B, num_labels), when the model has a classification head

    @property
    def last_hidden_state(self):
        return self.hidden_states[-1]


def executable_problem(spec: ModelSpec) -> str | None:
    """Why this variant cannot run yet, or None. Each variant's issue fills in its blocks."""
    v = spec.variant
    unsupported = [
        (v.softmax != "exact", f"softmax={v.softmax}"),
        (v.norm != "layernorm", f"norm={v.norm}"),
        (v.ffn != "dense", f"ffn={v.ffn}"),
        (v.retention is not None, "retention (PoWER-BERT)"),
        (v.mask != "additive", f"mask={v.mask}"),
    ]
    missing = [label for bad, label in unsupported if bad]
    return f"variant {', '.join(missing)} is not executable yet" if missing else None


def forward(
    spec: ModelSpec,
    weights: Weights,
    input_ids: np.ndarray,
    backend: Backend,
    attention_mask: np.ndarray | None = None,
    token_type_ids: np.ndarray | None = None,
) -> ForwardResult:
    """input_ids, attention_mask, token_type_ids: (B, T) integer arrays (mask 1 = real token)."""
    problem = executable_problem(spec)
    if problem:
        raise UserError(problem)
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise UserError(f"input_ids must be (batch, tokens), got shape {input_ids.shape}")
    B, T = input_ids.shape
    if T > spec.max_positions:
        raise UserError(f"{T} tokens exceed the model's {spec.max_positions} positions")
    if attention_mask is None:
        attention_mask = np.ones((B, T), np.int64)
    if token_type_ids is None:
        token_type_ids = np.zeros((B, T), np.int64)

    def w(key: str):
        return backend.asarray(weights[key])

    x = embeddings(backend, spec, w, input_ids, token_type_ids)
    hidden_states = [x]
    mask = backend.mask_bias(backend.asarray(attention_mask), spec.variant.mask)  # (B, 1, 1, T)
    for layer in range(spec.layers):
        x = encoder_layer(backend, spec, w, layer_prefix(layer), x, mask)
        hidden_states.append(x)

    pooled = logits = None
    if spec.has_pooler:
        cls = backend.first_token("pooler.first_token", x)  # (B, C)
        dense = backend.linear("pooler.dense", cls, w("pooler.dense.weight"), w("pooler.dense.bias"))
        pooled = backend.activation("pooler.activation", dense, "tanh")
    if spec.num_labels:
        logits = backend.linear("classifier", pooled, w("classifier.weight"), w("classifier.bias"))
    return ForwardResult(hidden_states, pooled, logits)


def embeddings(bk: Backend, spec: ModelSpec, w, input_ids, token_type_ids):
    B, T = input_ids.shape
    positions = np.broadcast_to(np.arange(T), (B, T))
    p = "embeddings."
    x = bk.embedding(p + "word_embeddings", w(p + "word_embeddings.weight"), bk.asarray(input_ids))
    types = bk.embedding(
        p + "token_type_embeddings", w(p + "token_type_embeddings.weight"), bk.asarray(token_type_ids)
    )
    x = bk.add(p + "add_token_type", x, types)
    pos = bk.embedding(p + "position_embeddings", w(p + "position_embeddings.weight"), bk.asarray(positions))
    x = bk.add(p + "add_position", x, pos)
    return norm(bk, spec, w, p + "LayerNorm", x)


def encoder_layer(bk: Backend, spec: ModelSpec, w, p: str, x, mask):
    attn = self_attention(bk, spec, w, p + "attention.self.", x, mask)  # (B, T, C)
    attn = bk.linear(p + "attention.output.dense", attn, w(p + "attention.output.dense.weight"),
                     w(p + "attention.output.dense.bias"))
    x = norm(bk, spec, w, p + "attention.output.LayerNorm", bk.add(p + "attention.output.residual", x, attn))
    ffn = feed_forward(bk, spec, w, p, x)
    return norm(bk, spec, w, p + "output.LayerNorm", bk.add(p + "output.residual", x, ffn))


def self_attention(bk: Backend, spec: ModelSpec, w, p: str, x, mask):
    def project(which: str):
        y = bk.linear(p + which, x, w(f"{p}{which}.weight"), w(f"{p}{which}.bias"))  # (B, T, C)
        return bk.split_heads(y, spec.heads)  # (B, H, T, D)

    q, k, v = project("query"), project("key"), project("value")
    scores = bk.matmul(p + "scores", q, k, transpose_b=True)  # (B, H, T, T)
    scores = bk.scale(p + "scale", scores, 1.0 / math.sqrt(spec.head_dim))
    scores = bk.mask_scores(p + "mask", scores, mask, spec.variant.mask)
    probs = bk.softmax(p + "softmax", scores)  # (B, H, T, T)
    context = bk.matmul(p + "context", probs, v)  # (B, H, T, D)
    return bk.merge_heads(context)  # (B, T, C)


def feed_forward(bk: Backend, spec: ModelSpec, w, p: str, x):
    h = bk.linear(p + "intermediate.dense", x, w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias"))
    h = bk.activation(p + "intermediate.activation", h, spec.variant.ffn_activation)  # (B, T, F)
    return bk.linear(p + "output.dense", h, w(p + "output.dense.weight"), w(p + "output.dense.bias"))


def norm(bk: Backend, spec: ModelSpec, w, name: str, x):
    return bk.layernorm(name, x, w(name + ".weight"), w(name + ".bias"), spec.eps)

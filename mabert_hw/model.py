"""The BERT forward pass, written once against the Backend protocol.

Each block reads as its equation (HF BertModel semantics, post-LN):
    x_0   = LN(E_word[ids] + E_type[types] + E_pos[0..T))
    a     = softmax(Q K^T / sqrt(D) + mask) V                    per head, Q = x W_q^T + b_q, ...
    x'    = LN(x + a W_o^T + b_o)
    x_l+1 = LN(x' + act(x' W_1^T + b_1) W_2^T + b_2)
    pooled = tanh(x_L[:, 0] W_p^T + b_p);  logits = pooled W_c^T + b_c
Op names are the weight-key prefixes, so an op, its weights and its layer are found by name.

MA-BERT blocks (W6WM9M/MA-BERT):
- softmax="mlp": probs = W_2 relu(W_1 s + b_1) + b_2 on each score row s, Linear(n->h), Linear(h->n).
  A row of T < n scores is read as zero-padded to n and the n - T extra outputs are dropped, which is
  exactly the first T columns of W_1 and the first T rows of W_2, b_2 (so that is what runs). The
  official code has no such rule: it pads every input to n = 128 tokens, whose extra key positions
  then also receive (nonzero) weights on the [PAD] tokens' values; at T = n both agree. T > n: error.
- mask="multiplicative": scores * m with m in {0, 1} (padded keys -> score 0) before the approximator.
- norm="powernorm": the weights are FOLDED (fold.py): no norm op anywhere, 1/sqrt(D) lives in W_q,
  each layer's output is in the basis x = A * u + c, and one `encoder.readout` affine reads the last
  hidden state out (hidden_states[1..L-1] stay in their basis: fold.read_hidden_states maps them).

Pre-LN (norm_position="pre": crammed BERT, UltraFastBERT; crammed_checkpoint.py): the same weights
and ops, only the LayerNorms move, and one more closes the encoder (weights.FINAL_NORM):
    x'    = x + a(LN_1(x)) W_o^T + b_o        LN_1 = attention.output.LayerNorm (crammed norm1)
    x_l+1 = x' + ffn(LN_2(x'))                LN_2 = output.LayerNorm (crammed norm2)
    hidden_states[L] = LN_f(x_L)              hidden_states[1..L-1] are the un-normalised x_l.

PoWER-BERT (retention=(l_1..l_L), mabert_hw/power.py): after layer j's attention block, before its
feed-forward, only CLS and the l_j - 1 tokens that receive the most attention go on, in original
order, with their padding mask. hidden_states[j + 1] then has T_j = min(l_j, T_{j-1}) tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .backends.base import Backend
from .errors import UserError
from .fff import FFF_PREFIX
from .power import Eliminator
from .spec import ModelSpec
from .weights import FINAL_NORM, READOUT, Weights, layer_prefix


# Ops after the final hidden state, named with these prefixes: the pooler and a classification head.
HEAD_OPS = ("pooler.", "classifier")


@dataclass
class ForwardResult:
    hidden_states: list[Any]  # L + 1 entries, each (B, T_l, C): embeddings output, then each layer
    # (T_l = T throughout, except under PoWER-BERT retention, where layer l keeps T_l tokens)
    pooled: Any | None  # (B, C) pooler output, when the model has a pooler
    logits: Any | None  # (B, num_labels), when the model has a classification head
    token_mask: Any | None = None  # (B, T_L) 0/1: which rows of last_hidden_state are real tokens

    @property
    def last_hidden_state(self):
        return self.hidden_states[-1]


def executable_problem(spec: ModelSpec) -> str | None:
    """Why the engines refuse this variant, or None: an MLP softmax under an additive mask, or PowerNorm in
    pre-LN blocks."""
    v = spec.variant
    if v.softmax == "mlp" and v.mask != "multiplicative":
        return "softmax=mlp needs mask=multiplicative (an additive -inf mask cannot enter a linear layer)"
    if v.norm_position == "pre" and v.norm == "powernorm":
        return "norm_position=pre needs norm=layernorm (PowerNorm folding assumes post-LN blocks)"
    return None


def forward(
    spec: ModelSpec,
    weights: Weights,
    input_ids: np.ndarray,
    backend: Backend,
    attention_mask: np.ndarray | None = None,
    token_type_ids: np.ndarray | None = None,
) -> ForwardResult:
    """input_ids, attention_mask, token_type_ids: (B, T) integer arrays (mask 1 = real token)."""
    check_executable(spec)
    input_ids, attention_mask, token_type_ids = checked_inputs(spec, input_ids, attention_mask, token_type_ids)
    with backend.running():
        return run_layers(spec, weights, input_ids, backend, attention_mask, token_type_ids)


def shaped_forward(spec: ModelSpec, weights: Weights, backend: Backend, input_ids, attention_mask,
                   token_type_ids) -> ForwardResult:
    """forward on (B, T) inputs that have a shape and no values (the trace backend's Shaped): the
    checks of the spec and of T, none of the values', so no B x T array is made or scanned."""
    check_executable(spec)
    check_token_count(spec, input_ids.shape[1])
    with backend.running():
        return run_layers(spec, weights, input_ids, backend, attention_mask, token_type_ids)


def check_executable(spec: ModelSpec) -> None:
    problem = executable_problem(spec)
    if problem:
        raise UserError(problem)


def run_layers(spec: ModelSpec, weights: Weights, input_ids, backend: Backend, attention_mask,
               token_type_ids) -> ForwardResult:
    """The forward pass proper, on inputs checked_inputs returned."""

    def w(key: str):
        return backend.asarray(weights[key])

    x = embeddings(backend, spec, w, input_ids, token_type_ids)
    hidden_states = [x]
    mask = backend.mask_bias(backend.asarray(attention_mask), spec.variant.mask)  # (B, 1, 1, T)
    eliminator = None
    if spec.variant.retention is not None:
        eliminator = Eliminator(backend, spec.variant.retention, backend.asarray(attention_mask), spec.variant.mask)
    for layer in range(spec.layers):
        eliminate = None if eliminator is None else partial(eliminator, layer)
        x = encoder_layer(backend, spec, w, layer_prefix(layer), x, mask, eliminate)
        mask = mask if eliminator is None else eliminator.mask  # (B, 1, 1, T_l)
        hidden_states.append(x)
    if spec.variant.norm_position == "pre":
        x = norm(backend, spec, w, FINAL_NORM, x)
        hidden_states[-1] = x
    if spec.variant.norm == "powernorm":  # undo the folded basis where the output is read
        x = backend.affine(READOUT, x, w(READOUT + ".scale"), w(READOUT + ".shift"))
        hidden_states[-1] = x

    pooled = logits = None
    if spec.has_pooler:
        cls = backend.first_token("pooler.first_token", x)  # (B, C)
        dense = backend.linear("pooler.dense", cls, w("pooler.dense.weight"), w("pooler.dense.bias"))
        pooled = backend.activation("pooler.activation", dense, "tanh")
    if spec.num_labels:
        logits = backend.linear("classifier", pooled, w("classifier.weight"), w("classifier.bias"))
    done = backend.finished  # backends that defer work (fast) complete what leaves forward
    token_mask = attention_mask if eliminator is None else eliminator.token_mask  # (B, T_L)
    return ForwardResult([done(h) for h in hidden_states], done(pooled), done(logits), done(token_mask))


def checked_inputs(spec: ModelSpec, input_ids, attention_mask, token_type_ids):
    """(input_ids, attention_mask, token_type_ids) as (B, T) arrays, the defaults filled in; a one-line
    UserError for anything else. A mask or type array of another shape would broadcast silently (a
    (B, 1) mask masks nothing per token, a (1, T) one applies row 0's padding to every row), and ids
    that are not integers would index the embedding tables as booleans or fail deep in NumPy."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise UserError(f"input_ids must be (batch, tokens), got shape {input_ids.shape}")
    B, T = input_ids.shape
    check_token_count(spec, T)
    attention_mask = np.ones((B, T), np.int64) if attention_mask is None else np.asarray(attention_mask)
    token_type_ids = np.zeros((B, T), np.int64) if token_type_ids is None else np.asarray(token_type_ids)
    for name, array in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if array.shape != (B, T):
            raise UserError(f"{name} has shape {array.shape}; input_ids is {(B, T)} and it must be the same")
    for name, array in (("input_ids", input_ids), ("token_type_ids", token_type_ids)):
        if array.dtype.kind not in "iu":
            raise UserError(f"{name} must be integers, got dtype {array.dtype}")
    if attention_mask.dtype.kind not in "biuf" or not np.isin(attention_mask, (0, 1)).all():
        raise UserError("attention_mask must hold 0 (padding) and 1 (real token) only")
    check_ids(input_ids, spec.vocab_size, "token id", "vocab_size")
    check_ids(token_type_ids, spec.type_vocab_size, "token type", "type_vocab_size")
    return input_ids, attention_mask, token_type_ids


def check_token_count(spec: ModelSpec, T: int) -> None:
    if T > spec.max_positions:
        raise UserError(f"{T} tokens exceed the model's {spec.max_positions} positions")
    if spec.variant.softmax == "mlp" and T > spec.variant.softmax_input:
        raise UserError(f"{T} tokens exceed the softmax approximator's input size "
                        f"{spec.variant.softmax_input}: truncate inputs to {spec.variant.softmax_input} tokens")


def check_ids(ids: np.ndarray, table_size: int, what: str, config_key: str) -> None:
    """Ids index an embedding table: past its end NumPy raises IndexError, and a negative id silently
    reads a row from the end, so both are refused here (as HF refuses them)."""
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= table_size:
        bad = low if low < 0 else high
        raise UserError(f"{what} {bad} is outside the model's {config_key} (ids 0..{table_size - 1}): "
                        "do the tokenizer and the checkpoint match?")


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


def encoder_layer(bk: Backend, spec: ModelSpec, w, p: str, x, mask, eliminate=None):
    if spec.variant.norm_position == "pre":
        return pre_ln_encoder_layer(bk, spec, w, p, x, mask, eliminate)
    attn, probs = self_attention(bk, spec, w, p + "attention.self.", x, mask)  # (B, T, C), (B, H, T, T)
    attn = bk.linear(p + "attention.output.dense", attn, w(p + "attention.output.dense.weight"),
                     w(p + "attention.output.dense.bias"))
    x = norm(bk, spec, w, p + "attention.output.LayerNorm", bk.add(p + "attention.output.residual", x, attn))
    if eliminate is not None:  # PoWER-BERT: (B, T, C) -> (B, l_j, C)
        x = eliminate(p, x, probs)
    ffn = feed_forward(bk, spec, w, p, x)
    return norm(bk, spec, w, p + "output.LayerNorm", bk.add(p + "output.residual", x, ffn))


def pre_ln_encoder_layer(bk: Backend, spec: ModelSpec, w, p: str, x, mask, eliminate=None):
    h = norm(bk, spec, w, p + "attention.output.LayerNorm", x)
    attn, probs = self_attention(bk, spec, w, p + "attention.self.", h, mask)  # (B, T, C), (B, H, T, T)
    attn = bk.linear(p + "attention.output.dense", attn, w(p + "attention.output.dense.weight"),
                     w(p + "attention.output.dense.bias"))
    # Each residual sum is read twice (its norm, then the next residual add): `finished` forms it once.
    x = bk.finished(bk.add(p + "attention.output.residual", x, attn))
    if eliminate is not None:  # PoWER-BERT: (B, T, C) -> (B, l_j, C)
        x = eliminate(p, x, probs)
    ffn = feed_forward(bk, spec, w, p, norm(bk, spec, w, p + "output.LayerNorm", x))
    return bk.finished(bk.add(p + "output.residual", x, ffn))


def self_attention(bk: Backend, spec: ModelSpec, w, p: str, x, mask):
    def project(which: str):
        y = bk.linear(p + which, x, w(f"{p}{which}.weight"), w(f"{p}{which}.bias"))  # (B, T, C)
        return bk.split_heads(y, spec.heads)  # (B, H, T, D)

    q, k, v = project("query"), project("key"), project("value")
    scores = bk.matmul(p + "scores", q, k, transpose_b=True)  # (B, H, T, T)
    if spec.variant.norm != "powernorm":  # folded into W_q otherwise
        scores = bk.scale(p + "scale", scores, 1.0 / math.sqrt(spec.head_dim))
    scores = bk.mask_scores(p + "mask", scores, mask, spec.variant.mask)
    if spec.variant.softmax == "mlp":
        probs = softmax_approximator(bk, spec, w, p, scores)  # (B, H, T, T)
    else:
        probs = bk.softmax(p + "softmax", scores)  # (B, H, T, T)
    context = bk.matmul(p + "context", probs, v)  # (B, H, T, D)
    return bk.merge_heads(context), probs  # (B, T, C), (B, H, T, T)


KEY_AXIS_OPS = ("scores", "scale", "mask", "softmax", "softmax.linear_relu_stack.2")  # self_attention's ops whose
# output (B, H, T, T) runs over the keys on its last axis; the others' last axis is a width (D, h, C) that may equal T


def indexes_keys(op_name: str) -> bool:
    """Whether the op named `op_name` is one of self_attention's score / probability outputs."""
    return any(op_name.endswith("attention.self." + op) for op in KEY_AXIS_OPS)


def softmax_approximator(bk: Backend, spec: ModelSpec, w, p: str, scores):
    T = scores.shape[-1]
    stack = ("" if spec.variant.share_softmax else p) + "softmax.linear_relu_stack."  # weights.approximator_prefix
    w1 = bk.truncate(w(stack + "0.weight"), T, axis=1)  # (h, T)
    hidden = bk.linear(p + "softmax.linear_relu_stack.0", scores, w1, w(stack + "0.bias"))  # (B, H, T, h)
    hidden = bk.activation(p + "softmax.linear_relu_stack.1", hidden, "relu")
    w2, b2 = bk.truncate(w(stack + "2.weight"), T, axis=0), bk.truncate(w(stack + "2.bias"), T, axis=0)
    return bk.linear(p + "softmax.linear_relu_stack.2", hidden, w2, b2)  # (B, H, T, T)


def feed_forward(bk: Backend, spec: ModelSpec, w, p: str, x):
    v = spec.variant
    if v.ffn == "fff":  # y = sum over trees of the hard-path walk (mabert_hw/fff.py), no output bias
        f = p + FFF_PREFIX
        return bk.fff(f.rstrip("."), x, w(f + "linear_in.weight"), w(f + "linear_in.bias"),
                      w(f + "linear_out.weight"), v.fff_depth, v.fff_trees)  # (B, T, C)
    h = bk.linear(p + "intermediate.dense", x, w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias"))
    h = bk.activation(p + "intermediate.activation", h, spec.variant.ffn_activation)  # (B, T, F)
    return bk.linear(p + "output.dense", h, w(p + "output.dense.weight"), w(p + "output.dense.bias"))


def norm(bk: Backend, spec: ModelSpec, w, name: str, x):
    if spec.variant.norm == "powernorm":  # folded into the adjacent linear layers (fold.py)
        return x
    return bk.layernorm(name, x, w(name + ".weight"), w(name + ".bias"), spec.eps)

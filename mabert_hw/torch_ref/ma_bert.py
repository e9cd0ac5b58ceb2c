"""MA-BERT in torch (W6WM9M/MA-BERT semantics), the check for the NumPy engines and the student
of the knowledge transfer. Module names mirror the official state-dict keys, so loading an official
checkpoint is `to_bert_keys` (ma_checkpoint.py, which also maps MA-DistilBERT names) + load_state_dict.

One module covers every single-technique ablation through the spec's Variant:
softmax exact | mlp (approximator), ffn_activation gelu | relu, norm layernorm | powernorm,
mask additive (HF, finfo.min) | multiplicative (official MA: scaled scores * 0/1 before the softmax).
T < n for the approximator: the row is zero-padded to n and the extra outputs dropped (model.py).

PowerNorm: eval is the official fixed affine weight * x / sqrt(running_phi + eps) + bias. Training
normalises by the batch statistic mean(x^2) per channel over the real tokens (the official code
uses every token, padding included) with plain autograd (the official backward approximates the
gradient with ema_gz). running_phi follows the official MaskPowerNorm update at accumulation_step = 1
(no gradient accumulation here): in iteration i (the `iters` buffer, counted from 1) of the warm-up,
first a running-mean step, phi <- phi (i - 1) / i + stat / i, which drops the initial 1 at i = 1, then in
every iteration phi <- 0.9 phi + 0.1 stat (alpha_fwd = 0.9). After the
warm-up (WARMUP_UPDATES iterations) the training forward too normalises by running_phi, as the
official one does. ema_gz and accumulated_var are kept for the key set.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..ma_checkpoint import to_bert_keys
from ..model import check_ids
from ..spec import ModelSpec

ALPHA_FWD = 0.9  # MaskPowerNorm default alpha_fwd
WARMUP_UPDATES = 997120  # MA_BertConfig.warmup_updates, which NormSelect passes as warmup_iters
TRAINING_ONLY_BUFFERS = ("ema_gz", "iters", "accumulated_var")
POWERNORM_BUFFERS = ("running_phi", *TRAINING_ONLY_BUFFERS)


class PowerNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.register_buffer("running_phi", torch.ones(1, hidden, 1, 1))
        self.register_buffer("ema_gz", torch.zeros(1, hidden, 1, 1))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.long))
        self.register_buffer("accumulated_var", torch.zeros(1, hidden, 1, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, C)
        if self.training:
            self.iters.add_(1)
            step = int(self.iters.item())
            m = torch.ones_like(x[..., :1]) if mask is None else mask[..., None].to(x.dtype)  # (B, T, 1)
            batch_phi = (x * x * m).sum(dim=(0, 1)) / m.sum()  # (C,)
            # a copy: running_phi is updated in place below, and the official normalises by the value before
            phi = batch_phi if step <= WARMUP_UPDATES else self.running_phi.view(-1).clone()
            with torch.no_grad():
                stat = batch_phi.detach().view(1, -1, 1, 1)
                if step < WARMUP_UPDATES:
                    self.running_phi.mul_((step - 1) / step).add_(stat / step)
                self.running_phi.mul_(ALPHA_FWD).add_((1 - ALPHA_FWD) * stat)
        else:
            phi = self.running_phi.view(-1)
        return self.weight * (x / torch.sqrt(phi + self.eps)) + self.bias


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class SoftmaxApproximator(nn.Module):
    def __init__(self, n: int, h: int):
        super().__init__()
        self.linear_relu_stack = nn.Sequential(nn.Linear(n, h), nn.ReLU(), nn.Linear(h, n))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:  # (..., T) with T <= n
        T = scores.shape[-1]
        first, _, second = self.linear_relu_stack
        hidden = F.relu(F.linear(scores, first.weight[:, :T], first.bias))
        return F.linear(hidden, second.weight[:T], second.bias[:T])


def make_norm(spec: ModelSpec) -> nn.Module:
    if spec.variant.norm == "powernorm":
        return PowerNorm(spec.hidden, spec.eps)
    return LayerNorm(spec.hidden, eps=spec.eps)


class Dense(nn.Module):
    """`dense` + optional `LayerNorm`: the HF names of attention.output / output blocks."""

    def __init__(self, spec: ModelSpec, fan_in: int, with_norm: bool):
        super().__init__()
        self.dense = nn.Linear(fan_in, spec.hidden)
        if with_norm:
            self.LayerNorm = make_norm(spec)


class SelfAttention(nn.Module):
    def __init__(self, spec: ModelSpec, shared: SoftmaxApproximator | None):
        super().__init__()
        C = spec.hidden
        self.spec = spec
        self.query, self.key, self.value = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        if spec.variant.softmax == "mlp":
            v = spec.variant
            self.softmax = shared if shared is not None else SoftmaxApproximator(v.softmax_input, v.softmax_hidden)

    def forward(self, x: torch.Tensor, mask01: torch.Tensor):
        """-> context (B, T, C), probabilities and the scaled unmasked scores (B, H, T, T)."""
        B, T, C = x.shape
        H, D = self.spec.heads, self.spec.head_dim

        def heads(y):  # (B, T, C) -> (B, H, T, D)
            return y.view(B, T, H, D).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        raw = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
        m = mask01[:, None, None, :].to(x.dtype)  # (B, 1, 1, T)
        if self.spec.variant.mask == "multiplicative":
            scores = raw * m
        else:
            scores = raw + (1.0 - m) * torch.finfo(x.dtype).min
        probs = self.softmax(scores) if self.spec.variant.softmax == "mlp" else scores.softmax(dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return context, probs, raw


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, shared):
        super().__init__()
        self.self = SelfAttention(spec, shared)
        self.output = Dense(spec, spec.hidden, with_norm=True)


class Intermediate(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.dense = nn.Linear(spec.hidden, spec.intermediate)


class Layer(nn.Module):
    def __init__(self, spec: ModelSpec, shared):
        super().__init__()
        self.attention = Attention(spec, shared)
        self.intermediate = Intermediate(spec)
        self.output = Dense(spec, spec.intermediate, with_norm=True)
        self.activation = F.relu if spec.variant.ffn_activation == "relu" else F.gelu

    def forward(self, x, mask01):
        context, probs, scores = self.attention.self(x, mask01)
        out = self.attention.output
        x = out.LayerNorm(x + out.dense(context), mask01)
        h = self.activation(self.intermediate.dense(x))
        x = self.output.LayerNorm(x + self.output.dense(h), mask01)
        return x, probs, scores


class Embeddings(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        C = spec.hidden
        self.word_embeddings = nn.Embedding(spec.vocab_size, C)
        self.position_embeddings = nn.Embedding(spec.max_positions, C)
        self.token_type_embeddings = nn.Embedding(spec.type_vocab_size, C)
        self.LayerNorm = make_norm(spec)

    def forward(self, ids, types, mask01):
        positions = torch.arange(ids.shape[1])[None, :]
        x = self.word_embeddings(ids) + self.token_type_embeddings(types) + self.position_embeddings(positions)
        return self.LayerNorm(x, mask01)


class Encoder(nn.Module):
    def __init__(self, spec: ModelSpec, shared):
        super().__init__()
        self.layer = nn.ModuleList(Layer(spec, shared) for _ in range(spec.layers))


class Pooler(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.dense = nn.Linear(spec.hidden, spec.hidden)


class MABertModel(nn.Module):
    """BertModel-level MA-BERT (keys without the `bert.` prefix) + optional classifier head."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        v = spec.variant
        shared = None
        if v.share_softmax and v.softmax == "mlp":
            shared = SoftmaxApproximator(v.softmax_input, v.softmax_hidden)
        if shared is not None:
            self.softmax = shared  # referenced by every layer too, as in the official code
        self.embeddings = Embeddings(spec)
        self.encoder = Encoder(spec, shared)
        if spec.has_pooler:
            self.pooler = Pooler(spec)
        if spec.num_labels:
            self.classifier = nn.Linear(spec.hidden, spec.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, keep_scores: bool = False) -> dict:
        """hidden_states (L + 1), attentions (L, each (B, H, T, T)), pooled, logits; with keep_scores
        also `scores`: each layer's scaled scores before the mask (B, H, T, T)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        v = self.spec.variant
        if v.softmax == "mlp" and input_ids.shape[1] > v.softmax_input:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed the approximator input {v.softmax_input}")
        # a tokenizer larger than the embedding table: one line naming the id (torch's IndexError names nothing)
        check_ids(input_ids.cpu().numpy(), self.spec.vocab_size, "token id", "vocab_size")
        check_ids(token_type_ids.cpu().numpy(), self.spec.type_vocab_size, "token type", "type_vocab_size")
        x = self.embeddings(input_ids, token_type_ids, attention_mask)
        hidden_states, attentions, all_scores = [x], [], []
        for layer in self.encoder.layer:
            x, probs, scores = layer(x, attention_mask)
            hidden_states.append(x)
            attentions.append(probs)
            if keep_scores:
                all_scores.append(scores)
        pooled = torch.tanh(self.pooler.dense(x[:, 0])) if self.spec.has_pooler else None
        logits = self.classifier(pooled) if self.spec.num_labels else None
        out = {"hidden_states": hidden_states, "attentions": attentions, "pooled": pooled, "logits": logits}
        return {**out, "scores": all_scores} if keep_scores else out


def load_official(spec: ModelSpec, state: dict) -> MABertModel:
    """MA-BERT module from an official state dict (BERT or DistilBERT names, tensors or arrays)."""
    arrays = {k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v) for k, v in state.items()}
    model = MABertModel(spec)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_bert_keys(arrays).items()}
    if spec.variant.share_softmax:  # older saves may carry the shared module only once
        for key in [k for k in tensors if k.startswith("softmax.")]:
            for layer in range(spec.layers):
                tensors.setdefault(f"encoder.layer.{layer}.attention.self.{key}", tensors[key])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith(TRAINING_ONLY_BUFFERS)]  # defaults are fine at inference
    if missing or unexpected:
        raise ValueError(f"MA-BERT keys differ: missing {missing}, unexpected {unexpected}")
    return model.eval()

"""NumPy reference backend: the readable truth, float32 by default, float64 on request.

Every operation is written as its textbook formula in the backend's dtype; nothing is fused.
GELU is the exact erf form HF uses for hidden_act="gelu": 0.5 * x * (1 + erf(x / sqrt(2))).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fff import fff_reference
from ..numerics import gelu
from .base import Backend, additive_mask_bias


@dataclass
class ReferenceBackend(Backend):
    dtype: type = np.float32
    name = "reference"

    def asarray(self, array):
        array = np.asarray(array)
        return array if array.dtype.kind in "iub" else array.astype(self.dtype, copy=False)

    def _embedding(self, table, ids):
        return table[ids]

    def _add(self, a, b):
        return a + b

    def _linear(self, x, weight, bias):
        y = x @ weight.T
        return y if bias is None else y + bias

    def _matmul(self, a, b, transpose_b):
        return a @ (np.swapaxes(b, -1, -2) if transpose_b else b)

    def _scale(self, x, factor):
        return x * self.dtype(factor)

    def _mask_scores(self, scores, mask, mode):
        return scores + mask if mode == "additive" else scores * mask

    def _softmax(self, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def _layernorm(self, x, gain, bias, eps):
        # the mean accumulated in float64: a float32 mean of a constant row can miss it by an ulp, which a
        # tiny eps (1e-12) then blows up to O(0.1) where torch returns exactly the bias
        mean = x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(x.dtype)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch
        return (x - mean) / np.sqrt(var + self.dtype(eps)) * gain + bias

    def _activation(self, x, kind):
        if kind == "gelu":
            return gelu(x)
        if kind == "relu":
            return np.maximum(x, self.dtype(0.0))
        if kind == "tanh":
            return np.tanh(x)
        raise ValueError(f"unknown activation {kind!r}")

    def _affine(self, x, scale, shift):
        return x * scale + shift

    def _fff(self, x, w_in, b_in, w_out, depth, trees):
        return fff_reference(x, w_in, b_in, w_out, depth, trees)

    def _first_token(self, x):
        return x[:, 0]

    def _significance(self, probs, token_mask):
        real = token_mask.astype(self.dtype)  # (B, T)
        received = np.einsum("bhqk,bq->bk", probs, real)  # summed over heads and real queries
        self_attention = np.einsum("bhkk->bk", probs) * real  # the diagonal q == k, real q only
        significance = (received - self_attention) / self.dtype(probs.shape[1])  # (B, T)
        return np.where(token_mask > 0, significance, -np.inf).astype(self.dtype)

    def _top_tokens(self, significance, keep):
        order = np.argsort(-significance[:, 1:], axis=1, kind="stable")[:, :keep - 1] + 1  # (B, keep-1)
        cls = np.zeros((significance.shape[0], 1), np.int64)
        return np.sort(np.concatenate([cls, order], axis=1), axis=1)  # (B, keep)

    def _select_tokens(self, x, index):
        return np.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)

    def truncate(self, x, length, axis):
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, length)
        return x[tuple(index)]

    def split_heads(self, x, heads):
        B, T, C = x.shape
        return x.reshape(B, T, heads, C // heads).transpose(0, 2, 1, 3)

    def merge_heads(self, x):
        B, H, T, D = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)

    def mask_bias(self, attention_mask, mode):
        if mode == "additive":
            return additive_mask_bias(attention_mask, self.dtype)
        return attention_mask.astype(self.dtype)[:, None, None, :]

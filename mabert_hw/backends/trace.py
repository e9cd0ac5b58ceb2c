"""Trace backend: runs model.py on shapes alone and records the Op list; no arithmetic.

Each `_op` computes the output shape the NumPy operation would produce (broadcasting included),
so profiling BERT-large at T=512 costs microseconds per op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fff import n_nodes
from .base import Backend, Shape


@dataclass(frozen=True)
class Shaped:
    """A tensor known only by shape and dtype (what the trace backend passes around)."""

    shape: Shape
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class TraceBackend(Backend):
    record: bool = True
    name = "trace"

    def asarray(self, array):
        return array if isinstance(array, Shaped) else Shaped(tuple(np.shape(array)))

    def _embedding(self, table, ids):
        return Shaped(ids.shape + table.shape[1:])

    def _add(self, a, b):
        return Shaped(np.broadcast_shapes(a.shape, b.shape))

    def _linear(self, x, weight, bias):
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input {x.shape} does not fit weight {weight.shape}")
        return Shaped(x.shape[:-1] + (weight.shape[0],))

    def _matmul(self, a, b, transpose_b):
        k, n = (b.shape[-1], b.shape[-2]) if transpose_b else (b.shape[-2], b.shape[-1])
        if a.shape[-1] != k:
            raise ValueError(f"matmul: {a.shape} x {b.shape} (transpose_b={transpose_b})")
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        return Shaped(batch + (a.shape[-2], n))

    def _scale(self, x, factor):
        return x

    def _mask_scores(self, scores, mask, mode):
        return Shaped(np.broadcast_shapes(scores.shape, mask.shape))

    def _softmax(self, x):
        return x

    def _layernorm(self, x, gain, bias, eps):
        return x

    def _activation(self, x, kind):
        return x

    def _affine(self, x, scale, shift):
        return Shaped(np.broadcast_shapes(x.shape, scale.shape, shift.shape))

    def _fff(self, x, w_in, b_in, w_out, depth, trees):
        nodes = trees * n_nodes(depth)
        if x.shape[-1] != w_in.shape[1] or w_out.shape[1] != nodes or w_in.shape[0] != nodes or b_in.shape != (nodes,):
            raise ValueError(f"fff: input {x.shape} does not fit weights {w_in.shape}, {b_in.shape}, {w_out.shape}")
        return Shaped(x.shape[:-1] + (w_out.shape[0],))

    def _first_token(self, x):
        return Shaped(x.shape[:1] + x.shape[2:])

    def _significance(self, probs, token_mask):
        B, H, T, _ = probs.shape
        if token_mask.shape != (B, T):
            raise ValueError(f"significance: mask {token_mask.shape} does not fit probs {probs.shape}")
        return Shaped((B, T))

    def _top_tokens(self, significance, keep):
        B, T = significance.shape
        if not 1 <= keep <= T:
            raise ValueError(f"top_tokens: cannot keep {keep} of {T} tokens")
        return Shaped((B, keep), "int64")

    def _select_tokens(self, x, index):
        if index.shape[0] != x.shape[0]:
            raise ValueError(f"select_tokens: index {index.shape} does not fit {x.shape}")
        return Shaped(index.shape + x.shape[2:], x.dtype)

    def truncate(self, x, length, axis):
        shape = list(x.shape)
        shape[axis] = min(shape[axis], length)
        return Shaped(tuple(shape))

    def split_heads(self, x, heads):
        B, T, C = x.shape
        return Shaped((B, heads, T, C // heads))

    def merge_heads(self, x):
        B, H, T, D = x.shape
        return Shaped((B, T, H * D))

    def mask_bias(self, attention_mask, mode):
        B, T = attention_mask.shape
        return Shaped((B, 1, 1, T))

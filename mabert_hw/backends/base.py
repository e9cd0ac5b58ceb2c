"""The Backend protocol model.py is written against, and the Op record every backend can emit.

Each public method is one operation of the math. The base class implements the bookkeeping once:
it calls the subclass's `_kind` implementation and, when recording, appends an Op built from the
shapes of the tensors that were really passed and returned. The trace backend's arrays are
`Shaped` placeholders, so the same forward yields the op list without arithmetic; the reference
backend's recorded ops come from real NumPy arrays, and a test asserts both lists are equal.

Layout changes (split/merge heads, the transpose of K) are views folded into the GEMM addressing
and are not ops.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..weights import ENCODER_LAYER_KEY

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Op:
    """One executed operation: activations in, parameters read, activation out.

    name: the weight-key prefix it belongs to, e.g. "encoder.layer.3.attention.self.query".
    kind: the counting rule in cost.counts (linear, matmul, softmax, layernorm, gelu, ...).
    inputs / weights: shapes of activation operands / parameter operands; output: result shape.
    attrs: extra facts the counting rule needs (e.g. transpose_b), as sorted (key, value) pairs.
    """

    name: str
    kind: str
    inputs: tuple[Shape, ...]
    weights: tuple[Shape, ...]
    output: Shape
    attrs: tuple[tuple[str, Any], ...] = ()

    @property
    def layer(self) -> int | None:
        match = ENCODER_LAYER_KEY.match(self.name + ".")  # op names are weight-key prefixes
        return int(match.group(1)) if match else None

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)


def _shape(array) -> Shape:
    return tuple(int(n) for n in array.shape)


@dataclass
class Backend:
    """Base class: the operations model.py may call. Subclasses implement `_<method>`."""

    record: bool = False
    ops: list[Op] = field(default_factory=list)
    name = "base"

    def _log(self, kind: str, name: str, inputs, weights, output, **attrs) -> None:
        if self.record:
            self.ops.append(
                Op(
                    name=name,
                    kind=kind,
                    inputs=tuple(_shape(a) for a in inputs),
                    weights=tuple(_shape(w) for w in weights if w is not None),
                    output=_shape(output),
                    attrs=tuple(sorted(attrs.items())),
                )
            )

    def running(self):
        """Context model.forward runs in: settings this backend needs while it computes (the fast
        backend's thread counts), undone after, so backends in one process leave each other's alone."""
        return contextlib.nullcontext()

    # --- arrays in and out -------------------------------------------------------------------
    def asarray(self, array) -> Any:
        """Bring a weight or input into this backend's representation."""
        raise NotImplementedError

    def finished(self, value):
        """A value that leaves forward (hidden state, pooled, logits), or one forward reads twice (the
        pre-LN residual stream), or None, in final form: a backend that defers work computes it once here."""
        return value

    # --- operations of the math ----------------------------------------------------------------
    def embedding(self, name: str, table, ids):  # (V, C)[(B, T)] -> (B, T, C)
        out = self._embedding(table, ids)
        self._log("embedding", name, [ids], [table], out)
        return out

    def add(self, name: str, a, b):  # elementwise, b broadcasts to a
        out = self._add(a, b)
        self._log("add", name, [a, b], [], out)
        return out

    def linear(self, name: str, x, weight, bias=None):  # (..., K) x (N, K)^T + (N,) -> (..., N)
        out = self._linear(x, weight, bias)
        self._log("linear", name, [x], [weight, bias], out)
        return out

    def matmul(self, name: str, a, b, transpose_b: bool = False):  # batched activation x activation
        out = self._matmul(a, b, transpose_b)
        self._log("matmul", name, [a, b], [], out, transpose_b=transpose_b)
        return out

    def scale(self, name: str, x, factor: float):
        out = self._scale(x, factor)
        self._log("scale", name, [x], [], out)
        return out

    def mask_scores(self, name: str, scores, mask, mode: str):
        """(B, H, Tq, Tk) scores with a (B, 1, 1, Tk) mask: additive bias or 0/1 product."""
        out = self._mask_scores(scores, mask, mode)
        self._log("mask", name, [scores, mask], [], out, mode=mode)
        return out

    def softmax(self, name: str, x):  # over the last axis
        out = self._softmax(x)
        self._log("softmax", name, [x], [], out)
        return out

    def layernorm(self, name: str, x, gain, bias, eps: float):  # over the last axis
        out = self._layernorm(x, gain, bias, eps)
        self._log("layernorm", name, [x], [gain, bias], out)
        return out

    def activation(self, name: str, x, kind: str):  # gelu (erf form) | relu | tanh
        out = self._activation(x, kind)
        self._log(kind, name, [x], [], out)
        return out

    def affine(self, name: str, x, scale, shift):  # per channel: x * scale + shift, (C,) params
        out = self._affine(x, scale, shift)
        self._log("affine", name, [x], [scale, shift], out)
        return out

    def fff(self, name: str, x, w_in, b_in, w_out, depth: int, trees: int):
        """UltraFastBERT fast feed-forward, hard path (mabert_hw/fff.py): (..., C) -> (..., C_out).

        w_in (K*N, C), b_in (K*N,), w_out (C_out, K*N): linear_in / linear_out in torch layout.
        """
        out = self._fff(x, w_in, b_in, w_out, depth, trees)
        self._log("fff", name, [x], [w_in, b_in, w_out], out, depth=depth, trees=trees)
        return out

    def first_token(self, name: str, x):  # (B, T, C) -> (B, C): the CLS row for the pooler
        out = self._first_token(x)
        self._log("slice", name, [x], [], out)
        return out

    # --- PoWER-BERT word-vector elimination (mabert_hw/power.py) -----------------------------------
    def significance(self, name: str, probs, token_mask):
        """(B, H, T, T) attention probs, (B, T) 0/1 mask -> (B, T) attention each token receives:
        s[k] = (1/H) sum_h sum_{real q != k} A[h, q, k]; padded tokens get -inf (never kept first)."""
        out = self._significance(probs, token_mask)
        self._log("significance", name, [probs, token_mask], [], out)
        return out

    def top_tokens(self, name: str, significance, keep: int):
        """(B, T) significance -> (B, keep) int64 indices: CLS (0) and the `keep - 1` most significant
        others (ties: lower index first), in original order."""
        out = self._top_tokens(significance, keep)
        self._log("top_tokens", name, [significance], [], out, keep=keep)
        return out

    def select_tokens(self, name: str, x, index):  # (B, T, ...)[(B, K)] -> (B, K, ...): a gather
        out = self._select_tokens(x, index)
        self._log("gather", name, [x, index], [], out)
        return out

    # --- layout (views, not ops) ---------------------------------------------------------------
    def split_heads(self, x, heads: int):  # (B, T, C) -> (B, H, T, D)
        raise NotImplementedError

    def merge_heads(self, x):  # (B, H, T, D) -> (B, T, C)
        raise NotImplementedError

    def truncate(self, x, length: int, axis: int):
        """The first `length` entries of x along `axis` (a view, e.g. the approximator weights that
        meet the T real score columns of a row zero-padded to n)."""
        raise NotImplementedError

    def mask_bias(self, attention_mask, mode: str):
        """(B, T) 0/1 mask -> (B, 1, 1, T): additive finfo.min bias (as HF) or 0/1 factors."""
        raise NotImplementedError


def additive_mask_bias(attention_mask: np.ndarray, dtype) -> np.ndarray:
    """HF's extended mask: (1 - m) * finfo(dtype).min, broadcast over heads and queries."""
    m = attention_mask.astype(dtype)[:, None, None, :]
    return (1.0 - m) * np.finfo(dtype).min

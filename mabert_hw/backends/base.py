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

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Shape = tuple[int, ...]
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


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
        match = _LAYER.search(self.name + ".")
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

    # --- arrays in and out -------------------------------------------------------------------
    def asarray(self, array) -> Any:
        """Bring a weight or input into this backend's representation."""
        raise NotImplementedError

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

    def first_token(self, name: str, x):  # (B, T, C) -> (B, C): the CLS row for the pooler
        out = self._first_token(x)
        self._log("slice", name, [x], [], out)
        return out

    # --- layout (views, not ops) ---------------------------------------------------------------
    def split_heads(self, x, heads: int):  # (B, T, C) -> (B, H, T, D)
        raise NotImplementedError

    def merge_heads(self, x):  # (B, H, T, D) -> (B, T, C)
        raise NotImplementedError

    def mask_bias(self, attention_mask, mode: str):
        """(B, T) 0/1 mask -> (B, 1, 1, T): additive finfo.min bias (as HF) or 0/1 factors."""
        raise NotImplementedError


def additive_mask_bias(attention_mask: np.ndarray, dtype) -> np.ndarray:
    """HF's extended mask: (1 - m) * finfo(dtype).min, broadcast over heads and queries."""
    m = attention_mask.astype(dtype)[:, None, None, :]
    return (1.0 - m) * np.finfo(dtype).min

"""Fast backend: the reference backend's float32 math with Numba kernels and BLAS GEMMs.

GEMMs are single BLAS calls on (B*T, K) x (K, N) (the reference makes one per batch row).
Fusion across protocol calls is deferred, so model.py and the recorded ops stay exactly those of
the reference (counts are of the math, not of the kernels):
- `linear` returns a `Biased` product whose bias is added by the consumer: fused with the
  activation (bias + GELU), with the residual add and LayerNorm (bias + add + LN), or alone;
- `add` returns a `Sum`, which LayerNorm reads in the same pass as it normalises;
- `matmul(q, k, transpose_b=True)` returns `Scores`; `scale`, `mask_scores` and `softmax` only
  annotate it, and `matmul(scores, v)` runs kernels.attention: one fused task per (batch, head).
A deferred value that reaches anything else (an op another variant adds, a layout method, an op
out of the expected order) is first computed whole by `ready`, with the reference's formulas,
so every variant the reference executes also runs here, unfused where no kernel exists yet.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import wraps

import numpy as np

from ..kernels.threads import set_threads, single_threaded_blas
from ..kernels.attention import attention
from ..kernels.rows import ACTIVATIONS, activation, add_bias_, add_layernorm, bias_activation_, layernorm, softmax_rows
from .reference import ReferenceBackend


class Deferred:
    """A value whose computation waits for its consumer; `ready()` computes it once, unfused."""

    _value: np.ndarray | None = None
    spent: bool = False  # a fused consumer overwrote the operands in place

    def ready(self) -> np.ndarray:
        if self.spent:
            raise RuntimeError(f"{type(self).__name__} was consumed in place by a fused kernel")
        if self._value is None:
            self._value = self.compute()
        return self._value

    def compute(self) -> np.ndarray:
        raise NotImplementedError


@dataclass(eq=False)
class Biased(Deferred):
    """product + bias, with the bias not yet added. product: (..., N) float32, C-contiguous."""

    product: np.ndarray
    bias: np.ndarray

    @property
    def shape(self):
        return self.product.shape

    def compute(self) -> np.ndarray:
        add_bias_(_rows(self.product), self.bias)
        return self.product


@dataclass(eq=False)
class Sum(Deferred):
    """a + b, not yet added (same shapes; b may be deferred)."""

    a: np.ndarray
    b: np.ndarray | Deferred

    @property
    def shape(self):
        return self.a.shape

    def compute(self) -> np.ndarray:
        return self.a + ready(self.b)


@dataclass(eq=False)
class Scores(Deferred):
    """softmax?((q k^T) * scale + mask) over keys, not yet computed. q (B, H, T, D), k (B, H, Tk, D)."""

    q: np.ndarray
    k: np.ndarray
    scale: np.float32 | None = None
    mask: np.ndarray | None = None  # (B, 1, 1, Tk) additive
    softmaxed: bool = False

    @property
    def shape(self):
        return self.q.shape[:-1] + self.k.shape[-2:-1]

    def compute(self) -> np.ndarray:
        scores = self.q @ np.swapaxes(self.k, -1, -2)  # (B, H, T, Tk)
        if self.scale is not None:
            scores = scores * self.scale
        if self.mask is not None:
            scores = scores + self.mask
        if self.softmaxed:
            softmax_rows(_rows(scores), _rows(scores))
        return scores


def ready(value):
    """The array a possibly deferred value stands for."""
    return value.ready() if isinstance(value, Deferred) else value


def _rows(x: np.ndarray) -> np.ndarray:
    """(..., C) contiguous -> (N, C) view."""
    return x.reshape(-1, x.shape[-1])


def _computing_deferred(method):
    @wraps(method)
    def wrapper(*args, **kwargs):
        return method(*(ready(a) for a in args), **{k: ready(v) for k, v in kwargs.items()})

    return wrapper


@dataclass
class FastBackend(ReferenceBackend):
    threads: int | None = None  # None: one per core
    name = "fast"

    def __post_init__(self):
        if self.dtype is not np.float32:
            raise ValueError("the fast backend computes in float32 only")
        set_threads(self.threads)
        # Methods inherited from the reference (ops of other variants, layout methods) get whole
        # arrays: their `_op` implementations, and public methods that have no `_op` (layout).
        own = set(vars(FastBackend))
        for name in dir(self):
            if name in own or name.startswith("__") or name in ("_log", "asarray"):
                continue
            is_implementation = name.startswith("_")
            is_layout = not is_implementation and not hasattr(self, "_" + name)
            method = getattr(self, name)
            if inspect.ismethod(method) and (is_implementation or is_layout):
                setattr(self, name, _computing_deferred(method))

    def finished(self, value):
        return ready(value)

    # --- GEMMs -----------------------------------------------------------------------------------
    def _linear(self, x, weight, bias):
        x = np.ascontiguousarray(ready(x))
        product = np.dot(_rows(x), weight.T).reshape(x.shape[:-1] + weight.shape[:1])  # (..., N)
        return product if bias is None else Biased(product, bias)

    def _matmul(self, a, b, transpose_b):
        b = ready(b)
        if transpose_b and not isinstance(a, Deferred) and a.ndim == 4:
            return Scores(a, b)
        if isinstance(a, Scores) and a.softmaxed and b.ndim == 4 and a.mask is not None:
            return self._attention(a, b)
        return super()._matmul(ready(a), b, transpose_b)

    def _attention(self, scores: Scores, v):
        B, H, T, D = scores.q.shape
        mask = np.ascontiguousarray(np.broadcast_to(scores.mask, (B, 1, 1, scores.k.shape[2]))[:, 0, 0, :])
        scale = np.float32(1.0 if scores.scale is None else scores.scale)
        context = np.empty((B, T, H, D), np.float32)
        with single_threaded_blas():
            attention(scores.q, scores.k, v, mask, scale, context)
        return context.transpose(0, 2, 1, 3)  # (B, H, T, D) view; merge_heads makes it (B, T, C) freely

    # --- the score chain -------------------------------------------------------------------------
    def _scale(self, x, factor):
        if isinstance(x, Scores) and x.scale is None and x.mask is None and not x.softmaxed:
            return Scores(x.q, x.k, self.dtype(factor))
        return super()._scale(ready(x), factor)

    def _mask_scores(self, scores, mask, mode):
        if isinstance(scores, Scores) and mode == "additive" and scores.mask is None and not scores.softmaxed:
            return Scores(scores.q, scores.k, scores.scale, mask)
        return super()._mask_scores(ready(scores), mask, mode)

    def _softmax(self, x):
        if isinstance(x, Scores) and x.mask is not None and not x.softmaxed:
            return Scores(x.q, x.k, x.scale, x.mask, softmaxed=True)
        x = np.ascontiguousarray(ready(x))
        out = np.empty_like(x)
        softmax_rows(_rows(x), _rows(out))
        return out

    # --- elementwise -----------------------------------------------------------------------------
    def _add(self, a, b):
        if a.shape == b.shape:
            return Sum(ready(a), b)
        return super()._add(ready(a), ready(b))

    def _activation(self, x, kind):
        code = ACTIVATIONS.get(kind)
        if code is None:
            return super()._activation(ready(x), kind)
        if isinstance(x, Biased) and x._value is None:
            bias_activation_(_rows(x.product), x.bias, code)
            x.spent = True
            return x.product
        x = np.ascontiguousarray(ready(x))
        out = np.empty_like(x)
        activation(_rows(x), code, _rows(out))
        return out

    def _layernorm(self, x, gain, bias, eps):
        eps = self.dtype(eps)
        if isinstance(x, Sum):
            a = np.ascontiguousarray(x.a)
            fuse_bias = isinstance(x.b, Biased) and x.b._value is None
            y, y_bias = (x.b.product, x.b.bias) if fuse_bias else (ready(x.b), np.zeros_like(bias))
            out = np.empty_like(a)
            add_layernorm(_rows(a), _rows(np.ascontiguousarray(y)), y_bias, gain, bias, eps, _rows(out))
            return out
        x = np.ascontiguousarray(ready(x))
        out = np.empty_like(x)
        layernorm(_rows(x), gain, bias, eps, _rows(out))
        return out

"""Fast backend: the reference backend's float32 math with Numba kernels and BLAS GEMMs.

GEMMs are BLAS calls on (B*T, K) x (K, N), one per chunk of rows and core (kernels/linear.py).
Fusion across protocol calls is deferred, so model.py and the recorded ops stay exactly those of
the reference (counts are of the math, not of the kernels):
- `linear` returns a `Linear` whose GEMM runs in its consumer's kernel: with the activation
  (GEMM + bias + GELU), with the residual add and LayerNorm (GEMM + bias + add + LN), or alone;
- `split_heads` of a `Linear` returns `Heads`; when the query, key and value are the heads of three
  linears of one input, the attention runs them as one GEMM with the three weights concatenated
  (cached per weight triple) and adds their biases inside the attention kernel;
- `add` returns a `Sum`, which LayerNorm reads in the same pass as it normalises; a Sum of a
  pending Linear that anything else reads runs as GEMM + bias + residual add (MA-BERT's folded blocks);
- `matmul(q, k, transpose_b=True)` returns `Scores`; `scale`, `mask_scores` and `softmax` only
  annotate it, and `matmul(scores, v)` runs kernels.attention: one fused task per (batch, head).
- MA-BERT: `linear`, the ReLU and `linear` of the softmax approximator over multiplicatively masked
  `Scores` return an `Approximated`, and `matmul(approximated, v)` runs kernels.ma_attention, which
  reassociates the linear chain so the (T, T) scores are never formed.
- UltraFastBERT's `fff` runs kernels.fff's tree walk (tokens in parallel).
- PoWER-BERT's `significance` of probabilities that an attention kernel consumed reads the per-head
  attention received that the kernel wrote beside the context, instead of recomputing the probabilities.
A deferred value that reaches anything else (an op another variant adds, a layout method, an op
out of the expected order) is first computed whole by `ready`, with the reference's formulas,
so every variant the reference executes also runs here, unfused where no kernel exists yet.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import wraps

import numpy as np

from ..identity_memo import IdentityMemo
from ..kernels.attention import attention, ma_attention
from ..kernels.fff import fff_forward
from ..kernels.linear import linear_add_layernorm, linear_bias, linear_bias_act, linear_bias_add
from ..kernels.rows import ACTIVATIONS, activation, add_layernorm, layernorm, softmax_rows
from ..kernels.threads import kernel_blas, rows_per_task, threads_held
from .reference import ReferenceBackend


class Deferred:
    """A value whose computation waits for its consumer; `ready()` computes it once, unfused."""

    _value: np.ndarray | None = None

    def ready(self) -> np.ndarray:
        if self._value is None:
            self._value = self.compute()
        return self._value

    @property
    def pending(self) -> bool:
        return self._value is None

    def compute(self) -> np.ndarray:
        raise NotImplementedError


@dataclass(eq=False)
class Linear(Deferred):
    """x W^T + bias, not yet multiplied. x: (..., K) float32 C-contiguous; weight (N, K)."""

    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None

    @property
    def shape(self):
        return self.x.shape[:-1] + self.weight.shape[:1]

    def bias_or_zeros(self) -> np.ndarray:
        return np.zeros(self.weight.shape[0], np.float32) if self.bias is None else self.bias

    def rows(self) -> np.ndarray:
        return _rows(self.x)

    def compute(self) -> np.ndarray:
        x = self.rows()
        out = np.empty((x.shape[0], self.weight.shape[0]), np.float32)  # (M, N)
        with kernel_blas():
            linear_bias(x, self.weight, self.bias_or_zeros(), rows_per_task(x.shape[0]), out)
        return out.reshape(self.shape)


@dataclass(eq=False)
class Heads(Deferred):
    """split_heads of a pending Linear: (B, T, C) -> (B, H, T, D)."""

    linear: Linear
    heads: int

    @property
    def shape(self):
        B, T, C = self.linear.shape
        return (B, self.heads, T, C // self.heads)

    def compute(self) -> np.ndarray:
        B, T, C = self.linear.shape
        return self.linear.ready().reshape(B, T, self.heads, C // self.heads).transpose(0, 2, 1, 3)


@dataclass(eq=False)
class Sum(Deferred):
    """a + b, not yet added (same shapes; b may be deferred)."""

    a: np.ndarray
    b: np.ndarray | Deferred

    @property
    def shape(self):
        return self.a.shape

    def compute(self) -> np.ndarray:
        if not (isinstance(self.b, Linear) and self.b.pending and self.a.flags.c_contiguous):
            return self.a + ready(self.b)
        y = self.b
        x = y.rows()
        out = np.empty((x.shape[0], y.weight.shape[0]), np.float32)  # (M, N)
        with kernel_blas():
            linear_bias_add(x, y.weight, y.bias_or_zeros(), _rows(self.a), rows_per_task(x.shape[0]), out)
        return out.reshape(self.shape)


@dataclass(eq=False)
class Scores(Deferred):
    """softmax?((q k^T) * scale + mask) over keys, not yet computed. q (B, H, T, D), k (B, H, Tk, D)."""

    q: np.ndarray | Heads
    k: np.ndarray | Heads
    scale: np.float32 | None = None
    mask: np.ndarray | None = None  # (B, 1, 1, Tk), added or multiplied as mask_mode says
    softmaxed: bool = False
    mask_mode: str = "additive"

    @property
    def shape(self):
        return self.q.shape[:-1] + self.k.shape[-2:-1]

    def compute(self) -> np.ndarray:
        scores = ready(self.q) @ np.swapaxes(ready(self.k), -1, -2)  # (B, H, T, Tk)
        if self.scale is not None:
            scores = scores * self.scale
        if self.mask is not None:
            scores = scores + self.mask if self.mask_mode == "additive" else scores * self.mask
        if self.softmaxed:
            softmax_rows(_rows(scores), _rows(scores))
        return scores


@dataclass(eq=False)
class Approximated(Deferred):
    """The MA softmax approximator over masked `Scores`, built up as its three calls arrive:
    relu?(scores W1^T + b1), then (.. ) W2^T + b2 once `second` is given. Weights (h, T) and (T, h)."""

    scores: Scores
    first: tuple[np.ndarray, np.ndarray]  # W1 (h, T), b1 (h,)
    relu: bool = False
    second: tuple[np.ndarray, np.ndarray] | None = None  # W2 (T, h), b2 (T,)

    @property
    def shape(self):
        weight = self.first[0] if self.second is None else self.second[0]
        return self.scores.shape[:-1] + weight.shape[:1]

    @property
    def complete(self) -> bool:
        return self.relu and self.second is not None

    def compute(self) -> np.ndarray:
        y = Linear(np.ascontiguousarray(self.scores.ready()), *self.first).ready()
        if self.relu:
            y = np.maximum(y, np.float32(0.0))
        return y if self.second is None else Linear(np.ascontiguousarray(y), *self.second).ready()


def ready(value):
    """The array a possibly deferred value stands for."""
    return value.ready() if isinstance(value, Deferred) else value


def _rows(x: np.ndarray) -> np.ndarray:
    """(..., C) contiguous -> (N, C) view."""
    return x.reshape(-1, x.shape[-1])


def _head_rows(x) -> np.ndarray:
    """(B, H, T, D) heads -> (B*T, H*D) token rows."""
    x = ready(x)
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B * T, H * D)


_fused_qkv: IdentityMemo[tuple[np.ndarray, np.ndarray]] = IdentityMemo()


def fused_qkv_weights(linears: tuple[Linear, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(3C, K) concatenated weights and (3C,) biases of the query, key and value linears (all with a
    bias), remembered while the same arrays live (identity_memo.py)."""
    arrays = tuple(a for linear in linears for a in (linear.weight, linear.bias))
    return _fused_qkv.get(arrays, lambda: (np.concatenate([linear.weight for linear in linears]),  # (3C, K)
                                           np.concatenate([linear.bias for linear in linears])))  # (3C,)


def _fusable_qkv(q, k, v) -> tuple[Linear, Linear, Linear] | None:
    """The three pending linears behind q, k, v when they share one input and all have biases."""
    if not all(isinstance(h, Heads) and h.linear.pending and h.linear.bias is not None for h in (q, k, v)):
        return None
    linears = (q.linear, k.linear, v.linear)
    same_input = linears[0].x is linears[1].x is linears[2].x
    same_width = len({linear.weight.shape for linear in linears}) == 1 and q.heads == k.heads == v.heads
    return linears if same_input and same_width else None


def _computing_deferred(method):
    @wraps(method)
    def wrapper(*args, **kwargs):
        return method(*(ready(a) for a in args), **{k: ready(v) for k, v in kwargs.items()})

    return wrapper


@dataclass
class FastBackend(ReferenceBackend):
    threads: int | None = None  # None: one per core; held during this backend's forwards only
    name = "fast"

    def __post_init__(self):
        if self.dtype is not np.float32:
            raise ValueError("the fast backend computes in float32 only")
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

    def running(self):
        return threads_held(self.threads)

    def finished(self, value):
        return ready(value)

    # --- GEMMs -----------------------------------------------------------------------------------
    def _linear(self, x, weight, bias):
        weight = np.ascontiguousarray(weight)  # a view where the approximator is truncated to T < n
        bias = bias if bias is None else np.ascontiguousarray(bias)
        if bias is not None and isinstance(x, Scores) and x.mask_mode == "multiplicative" and x.pending:
            return Approximated(x, (weight, bias))
        if bias is not None and isinstance(x, Approximated) and x.pending and x.relu and x.second is None:
            return Approximated(x.scores, x.first, True, (weight, bias))
        return Linear(np.ascontiguousarray(ready(x)), weight, bias)

    def split_heads(self, x, heads):
        if isinstance(x, Linear) and x.pending and len(x.shape) == 3:
            return Heads(x, heads)
        return super().split_heads(ready(x), heads)

    def _matmul(self, a, b, transpose_b):
        if transpose_b and _is_heads(a) and _is_heads(b):
            return Scores(a, b)
        if isinstance(a, Scores) and a.softmaxed and a.mask is not None and _is_heads(b) \
                and a.q.shape == a.k.shape == b.shape:  # self-attention: one T for queries and keys
            return self._attention(a, b)
        if isinstance(a, Approximated) and a.complete and _is_heads(b) \
                and a.scores.q.shape == a.scores.k.shape == b.shape:
            return self._attention(a.scores, b, approximator=a)
        return super()._matmul(ready(a), ready(b), transpose_b)

    def _attention(self, scores: Scores, v, approximator: Approximated | None = None):
        B, H, T, D = scores.q.shape
        fusable = _fusable_qkv(scores.q, scores.k, v)
        if fusable is not None:
            weight, bias = fused_qkv_weights(fusable)
            x = fusable[0].rows()
            qkv = np.empty((x.shape[0], weight.shape[0]), np.float32)  # (B*T, 3C)
            with kernel_blas():
                linear_bias(x, weight, np.zeros_like(bias), rows_per_task(x.shape[0]), qkv)
        else:  # heads of anything else: computed whole, biases included
            qkv = np.concatenate([_head_rows(h) for h in (scores.q, scores.k, v)], axis=1)  # (B*T, 3C)
            bias = np.zeros(qkv.shape[1], np.float32)
        mask = np.ascontiguousarray(np.broadcast_to(scores.mask, (B, 1, 1, T))[:, 0, 0, :])  # (B, T)
        scale = np.float32(1.0 if scores.scale is None else scores.scale)
        context = np.empty((B * T, H * D), np.float32)
        received = np.empty((B, H, T), np.float32)  # for PoWER-BERT's significance, should it be asked
        with kernel_blas():
            if approximator is None:
                attention(qkv, bias, mask, scale, H, context, received)
            else:
                ma_attention(qkv, bias, mask, scale, *approximator.first, *approximator.second, H, context, received)
        (scores if approximator is None else approximator).received = received
        return context.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D) view: merge_heads is free

    # --- the score chain -------------------------------------------------------------------------
    def _scale(self, x, factor):
        if isinstance(x, Scores) and x.scale is None and x.mask is None and not x.softmaxed:
            return Scores(x.q, x.k, self.dtype(factor))
        return super()._scale(ready(x), factor)

    def _mask_scores(self, scores, mask, mode):
        if isinstance(scores, Scores) and scores.mask is None and not scores.softmaxed:
            return Scores(scores.q, scores.k, scores.scale, mask, mask_mode=mode)
        return super()._mask_scores(ready(scores), mask, mode)

    def _softmax(self, x):
        if isinstance(x, Scores) and x.mask is not None and x.mask_mode == "additive" and not x.softmaxed:
            return Scores(x.q, x.k, x.scale, x.mask, softmaxed=True)
        x = np.ascontiguousarray(ready(x))
        out = np.empty_like(x)
        softmax_rows(_rows(x), _rows(out))
        return out

    # --- UltraFastBERT ----------------------------------------------------------------------------
    def _fff(self, x, w_in, b_in, w_out, depth, trees):
        return fff_forward(ready(x), w_in, b_in, w_out, depth, trees)  # (B, T, C): the tree walk

    # --- PoWER-BERT ------------------------------------------------------------------------------
    def _significance(self, probs, token_mask):
        received = getattr(probs, "received", None)  # left by the attention kernel that consumed probs
        if received is None:
            return super()._significance(ready(probs), token_mask)
        significance = received.sum(axis=1, dtype=np.float64) / received.shape[1]  # (B, T): head mean
        return np.where(token_mask > 0, significance, -np.inf).astype(np.float32)

    # --- elementwise -----------------------------------------------------------------------------
    def _add(self, a, b):
        if a.shape == b.shape:
            return Sum(ready(a), b)
        return super()._add(ready(a), ready(b))

    def _activation(self, x, kind):
        if kind == "relu" and isinstance(x, Approximated) and x.pending and not x.relu and x.second is None:
            return Approximated(x.scores, x.first, relu=True)
        code = ACTIVATIONS.get(kind)
        if code is None:
            return super()._activation(ready(x), kind)
        if isinstance(x, Linear) and x.pending:
            rows = x.rows()
            out = np.empty((rows.shape[0], x.weight.shape[0]), np.float32)  # (M, N)
            with kernel_blas():
                linear_bias_act(rows, x.weight, x.bias_or_zeros(), code, rows_per_task(rows.shape[0]), out)
            return out.reshape(x.shape)
        x = np.ascontiguousarray(ready(x))
        out = np.empty_like(x)
        activation(_rows(x), code, _rows(out))
        return out

    def _layernorm(self, x, gain, bias, eps):
        eps = self.dtype(eps)
        if isinstance(x, Sum) and isinstance(x.b, Linear) and x.b.pending:
            a, y = _rows(np.ascontiguousarray(x.a)), x.b
            out = np.empty_like(a)  # (M, C)
            with kernel_blas():
                linear_add_layernorm(y.rows(), y.weight, y.bias_or_zeros(), a, gain, bias, eps,
                                     rows_per_task(a.shape[0]), out)
            return out.reshape(x.shape)
        if isinstance(x, Sum):
            a, y = np.ascontiguousarray(x.a), np.ascontiguousarray(ready(x.b))
            out = np.empty_like(a)
            add_layernorm(_rows(a), _rows(y), gain, bias, eps, _rows(out))
            return out
        x = np.ascontiguousarray(ready(x))
        out = np.empty_like(x)
        layernorm(_rows(x), gain, bias, eps, _rows(out))
        return out


def _is_heads(x) -> bool:
    return isinstance(x, Heads) or (isinstance(x, np.ndarray) and x.ndim == 4)

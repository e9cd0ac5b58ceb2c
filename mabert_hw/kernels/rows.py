"""Row-wise kernels over (N, C) float32 arrays, parallel over rows (prange).

Fusions (each saves full passes over the activation):
- bias_activation_:   y = act(y + b) in place, right after the GEMM that produced y (the dense FF
  baseline of bench/ffn.py; the fast backend fuses this into kernels/linear.py's GEMM tasks);
- add_layernorm:      out = LN(a + y), a residual add whose branch y arrives whole (the GEMM-output
  case is kernels/linear.py's linear_add_layernorm);
- layernorm, softmax_rows, activation: the same formulas unfused.
GELU is the erf form 0.5 * x * (1 + erf(x / sqrt(2))) of the reference backend; erf and exp are
the vectorisable float32 approximations of approx.py. The row reductions (_row_max, _row_sum,
_row_squared_deviations) are compiled with reassociation so that LLVM vectorises them; the sums
accumulate in float64, so their order changes nothing visible in float32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .approx import erf32, exp32_parts

GELU, RELU, TANH = 0, 1, 2
ACTIVATIONS = {"gelu": GELU, "relu": RELU, "tanh": TANH}
SQRT2 = np.float32(math.sqrt(2.0))  # GELU divides by sqrt(2) in float32, as the reference does
HALF, ONE, ZERO = np.float32(0.5), np.float32(1.0), np.float32(0.0)


@njit(inline="always", cache=True)
def _activate(x, kind):
    if kind == GELU:
        return HALF * x * (ONE + erf32(x / SQRT2))
    if kind == RELU:
        return max(x, ZERO)
    return np.tanh(x)


@njit(parallel=True, cache=True)
def bias_activation_(y, bias, kind):
    """y (N, F) <- act(y + bias (F,)), in place."""
    for i in prange(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] = _activate(y[i, j] + bias[j], kind)


@njit(parallel=True, cache=True)
def activation(x, kind, out):
    """out (N, F) <- act(x (N, F))."""
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = _activate(x[i, j], kind)


@njit(cache=True, fastmath={"reassoc", "nsz", "nnan"})
def _row_max(row):
    """max of a row of non-NaN values; reassociation lets LLVM vectorise the reduction (max is exact
    in any order)."""
    m = row[0]
    for j in range(1, row.shape[0]):
        m = max(m, row[j])
    return m


@njit(cache=True, fastmath={"reassoc", "nsz"})
def _row_sum(row):
    """float64 sum of a float32 row in any order (vectorised): exact to ~1e-16 relative for rows of a
    few thousand terms, far below the float32 rounding of the result."""
    total = 0.0
    for j in range(row.shape[0]):
        total += row[j]
    return total


@njit(cache=True, fastmath={"reassoc", "nsz"})
def _row_squared_deviations(row, mean):
    """float64 sum of the float32 (row[j] - mean)^2, in any order (vectorised), as _row_sum."""
    total = 0.0
    for j in range(row.shape[0]):
        d = row[j] - mean
        total += d * d
    return total


@njit(inline="always", cache=True)
def _normalize_row(s, gain, beta, eps, out_row):
    """out_row <- (s - mean) / sqrt(var + eps) * gain + beta; biased variance, as torch."""
    C = s.shape[0]
    mean = np.float32(_row_sum(s) / C)
    std = np.sqrt(np.float32(_row_squared_deviations(s, mean) / C) + eps)
    for j in range(C):
        out_row[j] = (s[j] - mean) / std * gain[j] + beta[j]


@njit(parallel=True, cache=True)
def layernorm(x, gain, beta, eps, out):
    """out (N, C) <- LN(x (N, C)) over C."""
    for i in prange(x.shape[0]):
        _normalize_row(x[i], gain, beta, eps, out[i])


@njit(parallel=True, cache=True)
def add_layernorm(a, y, gain, beta, eps, out):
    """out (N, C) <- LN(a + y): residual a plus a branch y."""
    C = a.shape[1]
    for i in prange(a.shape[0]):
        s = np.empty(C, np.float32)
        for j in range(C):
            s[j] = a[i, j] + y[i, j]
        _normalize_row(s, gain, beta, eps, out[i])


@njit(inline="always", cache=True)
def softmax_row_(row, exponent_bits):
    """row <- exp(row - max) / sum(exp(row - max)), in place. exponent_bits: int32 scratch, len(row).
    A masked entry (the additive mask's finfo.min) gets exactly 0 (approx.exp32_parts), never a
    subnormal that would slow every later product with it on Intel cores."""
    m = _row_max(row)
    for j in range(row.shape[0]):
        row[j], n = exp32_parts(row[j] - m)
        exponent_bits[j] = (n + np.int32(127)) << np.int32(23)  # the float32 2^n
    powers_of_two = exponent_bits.view(np.float32)
    for j in range(row.shape[0]):
        row[j] = row[j] * powers_of_two[j]
    denominator = np.float32(_row_sum(row))
    for j in range(row.shape[0]):
        row[j] = row[j] / denominator


@njit(parallel=True, cache=True)
def softmax_rows(x, out):
    """out (N, K) <- softmax of each row of x (N, K)."""
    for i in prange(x.shape[0]):
        out[i] = x[i]
        softmax_row_(out[i], np.empty(x.shape[1], np.int32))

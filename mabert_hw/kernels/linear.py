"""GEMMs with fused epilogues: one parallel region per linear layer, over chunks of rows (tokens).

Each prange task multiplies its chunk of x's rows by the weight through BLAS (np.dot, which calls
the single-threaded BLAS of threads.py) and then applies the epilogue to those rows while they are
still in cache:
- linear_bias:          out = x W^T + b
- linear_bias_act:      out = act(x W^T + b)
- linear_add_layernorm: out = LN(a + (x W^T + b)), the post-LN residual block;
- linear_bias_add:      out = a + (x W^T + b), the residual block without a norm (MA-BERT, folded).
Splitting the tokens between cores runs one single-threaded GEMM per core, each at the full
per-core rate, and removes the separate passes (and synchronisations) of the unfused epilogues.
x (M, K) C-contiguous rows; weight (N, K) in the checkpoint's layout (np.dot reads its transpose
without a copy); rows_per_task: the chunk height (see threads.rows_per_task).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .rows import _activate, _normalize_row


@njit(parallel=True, cache=True)
def linear_bias(x, weight, bias, rows_per_task, out):
    """out (M, N) <- x (M, K) weight (N, K)^T + bias (N,)."""
    M, N = out.shape
    for task in prange((M + rows_per_task - 1) // rows_per_task):
        lo = task * rows_per_task
        hi = min(M, lo + rows_per_task)
        np.dot(x[lo:hi], weight.T, out[lo:hi])
        for i in range(lo, hi):
            for j in range(N):
                out[i, j] = out[i, j] + bias[j]


@njit(parallel=True, cache=True)
def linear_bias_act(x, weight, bias, kind, rows_per_task, out):
    """out (M, N) <- act(x weight^T + bias), act a rows.ACTIVATIONS code."""
    M, N = out.shape
    for task in prange((M + rows_per_task - 1) // rows_per_task):
        lo = task * rows_per_task
        hi = min(M, lo + rows_per_task)
        np.dot(x[lo:hi], weight.T, out[lo:hi])
        for i in range(lo, hi):
            for j in range(N):
                out[i, j] = _activate(out[i, j] + bias[j], kind)


@njit(parallel=True, cache=True)
def linear_add_layernorm(x, weight, bias, residual, gain, beta, eps, rows_per_task, out):
    """out (M, N) <- LN(residual + (x weight^T + bias)) over N; residual (M, N)."""
    M, N = out.shape
    for task in prange((M + rows_per_task - 1) // rows_per_task):
        lo = task * rows_per_task
        hi = min(M, lo + rows_per_task)
        np.dot(x[lo:hi], weight.T, out[lo:hi])
        s = np.empty(N, np.float32)
        for i in range(lo, hi):
            for j in range(N):
                s[j] = residual[i, j] + (out[i, j] + bias[j])
            _normalize_row(s, gain, beta, eps, out[i])


@njit(parallel=True, cache=True)
def linear_bias_add(x, weight, bias, residual, rows_per_task, out):
    """out (M, N) <- residual (M, N) + (x weight^T + bias), in the reference's order of additions."""
    M, N = out.shape
    for task in prange((M + rows_per_task - 1) // rows_per_task):
        lo = task * rows_per_task
        hi = min(M, lo + rows_per_task)
        np.dot(x[lo:hi], weight.T, out[lo:hi])
        for i in range(lo, hi):
            for j in range(N):
                out[i, j] = residual[i, j] + (out[i, j] + bias[j])

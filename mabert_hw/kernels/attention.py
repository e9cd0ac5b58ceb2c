"""Fused self-attention: softmax(Q K^T * scale + mask) V, one (batch, head) pair per prange task.

The (T, Tk) score block of one head lives only inside its task (T = Tk = 128: 64 KiB, in L2), so the
(B, H, T, T) scores and probabilities are never written to memory. The two products go through BLAS
(np.dot on contiguous float32 copies of the head's rows); the scale, the additive mask and the
softmax run over the block's rows in between, in the reference backend's operation order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .rows import softmax_row_


@njit(parallel=True, cache=True)
def attention(q, k, v, mask, scale, out):
    """q (B, H, T, D), k and v (B, H, Tk, D): any strides; mask (B, Tk) additive; scale float32.

    out (B, T, H, D): the context with heads already merged back into rows of C = H * D.
    """
    B, H, T, D = q.shape
    Tk = k.shape[2]
    for task in prange(B * H):
        b, h = task // H, task % H
        qh = np.ascontiguousarray(q[b, h])  # (T, D)
        kh = np.ascontiguousarray(k[b, h])  # (Tk, D)
        vh = np.ascontiguousarray(v[b, h])  # (Tk, D)
        scores = np.dot(qh, kh.T)  # (T, Tk)
        exponent_bits = np.empty(Tk, np.int32)
        for i in range(T):
            row = scores[i]
            for j in range(Tk):
                row[j] = row[j] * scale + mask[b, j]
            softmax_row_(row, exponent_bits)
        out[b, :, h, :] = np.dot(scores, vh)  # (T, D)

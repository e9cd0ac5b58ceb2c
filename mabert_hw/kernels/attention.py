"""Fused self-attention: softmax((Q + b_q)(K + b_k)^T * scale + mask)(V + b_v), one (batch, head)
pair per prange task.

Q, K, V arrive as one C-contiguous (B*T, 3C) array of token rows [q | k | v], C = H * D: the fused
QKV GEMM's output, whose biases are still due. Each task copies its head's (T, D) blocks into
contiguous scratch, adding the bias on the way (the reference's x W^T + b, rounded once each), so
the bias adds cost no pass of their own. (Copying from column views of the three blocks instead,
arrays of unknown strides to Numba, took 2.8 ms per MiniLM layer at B=8, T=128 on one core, as long
as the layer's attention GEMMs.) The (T, Tk) score block
of one head lives only inside its task (T = Tk = 128: 64 KiB, in L2), so the (B, H, T, T) scores and
probabilities are never written to memory. The two products go through BLAS (np.dot); the scale,
the additive mask and the softmax run over the block's rows in between, in the reference backend's
operation order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .rows import softmax_row_


@njit(inline="always", cache=True)
def _head_block(qkv, bias, first_row, count, column, width):
    """(count, width) contiguous copy of qkv[first_row:, column:] + bias[column:]."""
    block = np.empty((count, width), np.float32)
    for i in range(count):
        row = qkv[first_row + i]
        for d in range(width):
            block[i, d] = row[column + d] + bias[column + d]
    return block


@njit(parallel=True, cache=True)
def attention(qkv, bias, mask, scale, heads, out):
    """qkv (B*T, 3C) C-contiguous rows [q | k | v] without their bias (3C,); mask (B, T) additive;
    scale float32. out (B*T, C) <- the context with heads merged back into rows."""
    B, T = mask.shape
    C = qkv.shape[1] // 3
    D = C // heads
    for task in prange(B * heads):
        b, h = task // heads, task % heads
        qh = _head_block(qkv, bias, b * T, T, h * D, D)  # (T, D)
        kh = _head_block(qkv, bias, b * T, T, C + h * D, D)  # (T, D)
        vh = _head_block(qkv, bias, b * T, T, 2 * C + h * D, D)  # (T, D)
        scores = np.dot(qh, kh.T)  # (T, T)
        exponent_bits = np.empty(T, np.int32)
        for i in range(T):
            row = scores[i]
            for j in range(T):
                row[j] = row[j] * scale + mask[b, j]
            softmax_row_(row, exponent_bits)
        out[b * T:(b + 1) * T, h * D:(h + 1) * D] = np.dot(scores, vh)  # (T, D)

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
operation order; a masked key's probability is exactly 0 (rows.softmax_row_).

Both kernels also write `received` (B, H, T): the attention each token receives in each head from
the other real queries, sum_{real q != k} A[q, k] (float64 sums), which is what PoWER-BERT's
significance (power.py) averages over heads. A kernel that kept no score block would otherwise make
the eliminating layer recompute Q K^T and the softmax (or the approximator) just to rank tokens.
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


@njit(inline="always", cache=True)
def _received_(probs, is_real, received):
    """received (Tk,) <- sum over the rows q of probs (T, Tk) with is_real[q], without the diagonal."""
    total = np.zeros(probs.shape[1], np.float64)
    for i in range(probs.shape[0]):
        if is_real[i]:
            for k in range(probs.shape[1]):
                total[k] += probs[i, k]
            total[i] -= probs[i, i]
    for k in range(probs.shape[1]):
        received[k] = total[k]


@njit(parallel=True, cache=True)
def attention(qkv, bias, mask, scale, heads, out, received):
    """qkv (B*T, 3C) C-contiguous rows [q | k | v] without their bias (3C,); mask (B, T) additive
    (0 on real tokens); scale float32. out (B*T, C) <- the context with heads merged back into rows;
    received (B, H, T) <- the attention each token receives from the other real queries."""
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
        _received_(scores, mask[b] == 0, received[b, h])
        out[b * T:(b + 1) * T, h * D:(h + 1) * D] = np.dot(scores, vh)  # (T, D)


@njit(inline="always", cache=True)
def _rows_block(qkv, bias, first_row, count, column, width, row_factor):
    """(count, width) contiguous copy of (qkv[first_row:, column:] + bias[column:]) * row_factor[:, None]."""
    block = np.empty((count, width), np.float32)
    for i in range(count):
        row = qkv[first_row + i]
        factor = row_factor[i]
        for d in range(width):
            block[i, d] = (row[column + d] + bias[column + d]) * factor
    return block


@njit(parallel=True, cache=True)
def ma_attention(qkv, bias, key_mask, scale, w1, b1, w2, b2, heads, out, received):
    """MA-BERT attention, reassociated, in two parallel passes.

    The reference computes, per head, s = (Q K^T) * scale * m (m the (T,) 0/1 key mask, applied to
    every score row), P = relu(s W1^T + b1) W2^T + b2 (the softmax approximator, Linear(T->h),
    Linear(h->T)) and context = P V. Everything before the ReLU and after it is linear, so
        s W1^T = Q (K_m^T W1^T)          K_m = K * scale * m[:, None]       (T, D)
        P V    = R (V^T W2)^T + V^T b2    R = relu(Q (K_m^T W1^T) + b1)       (T, h)
    is the same math through four (D x T x h)-sized products instead of two (T x T x D) and two
    (T x T x h) ones: at T = h = 128, D = 32 that is 4 * 32 * 128 * 128 MACs per head instead of
    (2 * 32 + 2 * 128) * 128 * 128, 2.5x fewer, and the (T, T) scores and approximator outputs are
    never formed. The approximator is shared by the heads, so pass 1 computes K_m^T W1^T and V^T W2 of
    all heads of a sequence as two (C x T x h) GEMMs (one task per sequence); pass 2 runs the two
    per-head products (one task per (sequence, head)). Rounding differs from the reference's order
    (sums over D and h instead of T).
    qkv (B*T, 3C) rows [q | k | v] without their bias (3C,); key_mask (B, T) 0/1; scale float32 (1
    where the scale is folded into W_q); w1 (h, T), b1 (h,), w2 (T, h), b2 (T,).
    out (B*T, C) <- the context with heads merged back into rows. received (B, H, T) <- per token
    k, sum_{real q != k} P[q, k], without forming P either: with r_sum = sum_{real q} R[q],
    sum_{real q} P[q, k] = r_sum . W2[k] + n_real b2[k], less P[k, k] = R[k] . W2[k] + b2[k]."""
    B, T = key_mask.shape
    C = qkv.shape[1] // 3
    D = C // heads
    hidden = w1.shape[0]
    key_weights = np.empty((B, C, hidden), np.float32)  # K_m^T W1^T of every head, stacked over heads
    value_weights = np.empty((B, C, hidden), np.float32)  # V^T W2
    value_offsets = np.empty((B, C), np.float32)  # V^T b2
    ones = np.ones(T, np.float32)
    for b in prange(B):
        km = _rows_block(qkv, bias, b * T, T, C, C, key_mask[b] * scale)  # (T, C)
        v = _rows_block(qkv, bias, b * T, T, 2 * C, C, ones)  # (T, C)
        np.dot(km.T, w1.T, key_weights[b])
        np.dot(v.T, w2, value_weights[b])
        np.dot(v.T, b2, value_offsets[b])
    for task in prange(B * heads):
        b, h = task // heads, task % heads
        qh = _head_block(qkv, bias, b * T, T, h * D, D)  # (T, D)
        r = np.dot(qh, key_weights[b, h * D:(h + 1) * D])  # (T, h) = Q (K_m^T W1^T)
        for i in range(T):
            for j in range(hidden):
                r[i, j] = max(r[i, j] + b1[j], np.float32(0.0))
        _approximator_received_(r, key_mask[b], w2, b2, received[b, h])
        context = np.dot(r, value_weights[b, h * D:(h + 1) * D].T)  # (T, D)
        for i in range(T):
            for d in range(D):
                out[b * T + i, h * D + d] = context[i, d] + value_offsets[b, h * D + d]


@njit(inline="always", cache=True)
def _approximator_received_(r, is_real, w2, b2, received):
    """received (T,) <- sum_{real q != k} (r W2^T + b2)[q, k] from r (T, h) (see ma_attention)."""
    T, hidden = r.shape
    r_sum = np.zeros(hidden, np.float64)
    real = 0
    for i in range(T):
        if is_real[i] != 0:
            real += 1
            for j in range(hidden):
                r_sum[j] += r[i, j]
    for k in range(T):
        column, diagonal = real * np.float64(b2[k]), np.float64(b2[k])
        for j in range(hidden):
            column += r_sum[j] * w2[k, j]
            diagonal += np.float64(r[k, j]) * w2[k, j]
        received[k] = column - diagonal if is_real[k] != 0 else column

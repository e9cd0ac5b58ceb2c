"""Exact integer GEMM, fast, and the accumulator-width model.

Exactness of floating-point BLAS on integers (why `int_matmul` may use it):
  Let a' = a - a_zp and b' = b - b_zp be integer matrices, p = max|a'| * max|b'|, and let a block of
  kc terms along K be summed in a format with a t-bit significand (t = 24 for float32, 53 for
  float64). Every integer n with |n| <= 2^t is exactly representable. Each product |a'_ik b'_kj| <= p,
  and every partial sum of any subset of the kc terms has magnitude <= kc * p. So if kc * p <= 2^t,
  every intermediate value BLAS can form (any summation order, blocking, vectorisation or fused
  multiply-add) is an integer of magnitude <= 2^t, each operation's exact result is representable and
  IEEE round-to-nearest returns it unchanged: the block sum is exact. Blocks are then converted to
  float64 and added exactly while K * p <= 2^53 (else int64 matmul is used). float32 is tried first:
  for uint8 x int8 (p <= 255 * 128) blocks of 2^24 // 32640 = 514 columns pass.

Accumulator width: a real engine accumulates in `acc_bits` bits. Wrapping (two's complement) is
modular, so wrapping the exact sum equals wrapping after every addition, in any order. Saturation is
modelled at write-back (an accumulator wide enough for the sum that saturates when stored); an
engine that saturates after every addition can differ, and only when an overflow is counted here.

u8 x s8 on AVX2 without VNNI (onnxruntime MLAS and fbgemm, measured bit for bit on this CPU): the
kernel multiplies raw codes with vpmaddubsw, which adds adjacent products (k = 2i, 2i + 1) and
SATURATES the pair to int16 before widening; zero points are corrected afterwards with exact row and
column sums. `int_matmul_u8s8_avx2` models that; full-range uint8 activations trigger it, 7-bit
("reduce_range") activations cannot (2 * 127 * 128 < 2^15).
"""

from __future__ import annotations

import numpy as np

from .formats import IntFormat

FLOAT32_EXACT = 2 ** 24  # float32 has a 24-bit significand
FLOAT64_EXACT = 2 ** 53  # float64 has a 53-bit significand
MIN_FLOAT32_BLOCK = 64  # shorter blocks cost more in conversions than float64 costs in bandwidth


def _widest_block(p: int, limit: int) -> int:
    return limit // p if p else 1 << 62


def exact_matmul(a: np.ndarray, b: np.ndarray, p: int | None = None) -> np.ndarray:
    """a @ b (batched like @) for float arrays holding integers, exactly, by the bound above.

    p: max|a| * max|b| (computed when None). Returns float32 when one float32 pass is exact (every
    sum <= 2^24), else float64 holding the exact sums (float32 blocks summed in float64, or one
    float64 pass). Callers keep integer operands as float arrays so no int64 pass is needed.
    """
    if p is None:
        p = int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0))
    K = a.shape[-1]
    block = min(K, _widest_block(p, FLOAT32_EXACT))
    if block == K:
        return np.asarray(a, np.float32) @ np.asarray(b, np.float32)
    if K * p > FLOAT64_EXACT:
        return np.asarray(a, np.int64) @ np.asarray(b, np.int64)
    if block < MIN_FLOAT32_BLOCK:
        return np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    af, bf = np.asarray(a, np.float32), np.asarray(b, np.float32)
    acc = (af[..., :block] @ bf[..., :block, :]).astype(np.float64)
    for k0 in range(block, K, block):
        acc += af[..., k0:k0 + block] @ bf[..., k0:k0 + block, :]  # partial sums <= K * p <= 2^53: exact
    return acc


def int_matmul(a: np.ndarray, b: np.ndarray, a_zp=0, b_zp=0) -> np.ndarray:
    """sum_k (a[..., m, k] - a_zp) * (b[..., k, n] - b_zp[n]) exactly, as int64 (batched like @)."""
    a = np.asarray(a, np.int64) - np.asarray(a_zp, np.int64)
    b = np.asarray(b, np.int64) - np.asarray(b_zp, np.int64)
    p = int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0))
    return exact_matmul(a, b, p).astype(np.int64)


def limit_accumulator(acc: np.ndarray, bits: int, overflow: str = "saturate") -> tuple[np.ndarray, int]:
    """Model a `bits`-wide accumulator on the exact sums (int64, or floats holding integers, as
    exact_matmul returns): (stored values in acc's dtype, number that overflowed)."""
    if bits >= 64:
        return acc, 0
    accumulator = IntFormat(bits)
    lo, hi = accumulator.qmin, accumulator.qmax
    if acc.size == 0 or (acc.min() >= lo and acc.max() <= hi):
        return acc, 0
    outside = int(np.count_nonzero((acc < lo) | (acc > hi)))
    if overflow == "saturate":
        return np.clip(acc, lo, hi), outside
    if overflow == "wrap":
        wrapped = ((np.asarray(acc, np.int64) - lo) & ((1 << bits) - 1)) + lo
        return wrapped.astype(acc.dtype, copy=False), outside
    raise ValueError(f"unknown overflow mode {overflow!r} (saturate | wrap)")


INT16 = IntFormat(16)  # vpmaddubsw's saturated pair sums


def int_matmul_u8s8_avx2(a: np.ndarray, b: np.ndarray, a_zp=0, b_zp=0, rows: int = 16) -> np.ndarray:
    """As int_matmul for a (M, K) uint8 codes x b (K, N) int8 codes, with vpmaddubsw pair saturation."""
    a = np.asarray(a, np.int32)
    b = np.asarray(b, np.int32)
    M, K = a.shape
    if K % 2:
        a, b = np.pad(a, ((0, 0), (0, 1))), np.pad(b, ((0, 1), (0, 0)))
    even, odd = b[0::2].T, b[1::2].T  # (N, K/2)
    raw = np.empty((M, b.shape[1]), np.int64)
    for r0 in range(0, M, rows):
        block = a[r0:r0 + rows, None, :]  # (rows, 1, K)
        pairs = block[..., 0::2] * even + block[..., 1::2] * odd  # (rows, N, K/2)
        raw[r0:r0 + rows] = np.clip(pairs, INT16.qmin, INT16.qmax).sum(axis=-1, dtype=np.int64)
    a64, b64 = a[:, :K].astype(np.int64), b[:K].astype(np.int64)
    a_zp, b_zp = np.int64(a_zp), np.asarray(b_zp, np.int64)
    return raw - a_zp * b64.sum(axis=0) - b_zp * a64.sum(axis=1, keepdims=True) + K * a_zp * b_zp

"""Integer-only row kernels of the fixed backend (nonlinear = "integer"), parallel over rows (prange).

Each kernel reads float32 activations (N, C), quantizes them, runs one integer op of quant/intops.py
and writes the dequantized float32 result, in one pass over the tensor (the NumPy reference makes
five to fifteen: quantize, clip, int64 cast, centre, the op's own steps, requantize, clip, dequantize):
- rescale_rows:    codes times a real factor (the attention scores' 1/sqrt(D)), dyadic;
- add_rows:        the residual add, both operands rescaled to the output scale, dyadic;
- softmax_rows:    I-BERT i-softmax (i-exp, 16-bit exp codes, floor(2^32 / sum));
- gelu_rows:       I-BERT i-GELU then a dyadic requantization (gelu_peak: the max |code| it needs);
- layernorm_rows:  integer mean and variance, Newton integer sqrt, per-channel dyadic output.
The integer arithmetic is the reference's, element for element, in int64: Numba's int64 + - * wrap
as NumPy's, its // floors as Python's and NumPy's (not C's truncation), >> is arithmetic (floor), and
integer sums may be taken in any order (they are exact, or wrap, modulo 2^64 either way). Shift
counts: the requantizations' come from the data's scales and take NumPy's meaning outside 0..63
(_shift_right, _shift_left); the others stay in 0..62 (quant/fused.py checks the constants). Floating point appears only where the reference has it (quantize,
dequantize), at its precision and in its order, compiled without fastmath (no reassociation, no FMA
contraction): IEEE operations give the same bits on every machine.

Codecs: the float32 <-> code mapping of one tensor, a tuple (arrays per channel (C,); a per-tensor
format repeats its one value):
  scale32, scale64, zero_point, qmin, qmax, divide32, rounding, per_channel
quantize (formats.quantize_codes):  v = f32(x) / scale32 (divide32: onnxruntime's QuantizeLinear) or
  f64(x) / scale64; q = clip(round(v) + zero_point, qmin, qmax) in float64, round per `rounding`.
  (The reference's float32 variant adds the zero point and clips in float32: the same codes, since
  the sum is exact below 2^24 and float rounding is monotonic, so it cannot cross qmin or qmax.)
  torch's single-rounding fma (requant fbgemm / qnnpack) is not here: its branch in the kernels' loops
  kept LLVM from vectorising them (the fused add and GELU ran 4x slower), so the kernels decline those
  modes (FixedElementwise._kernel_mode, backends/fixed_elementwise.py) and the NumPy reference runs.
dequantize (FixedBackend._values):  (f32(q) - f32(zero_point)) * scale32 in float32 per tensor,
  f32(scale64 * f64(q - zero_point)) per channel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..quant.intops import LN_FRACTION_BITS, NO_TOP, SOFTMAX_NUMERATOR_BITS, VARIANCE_LIMIT, WIDE

HALF_EVEN, HALF_AWAY, FLOOR = 0, 1, 2
ROUNDINGS = {"half_even": HALF_EVEN, "half_away": HALF_AWAY, "floor": FLOOR}
WIDE_MIN, WIDE_MAX = WIDE.qmin, WIDE.qmax  # the residual adder's and LayerNorm unit's registers
SOFTMAX_NUMERATOR = 1 << SOFTMAX_NUMERATOR_BITS


@njit(inline="always", cache=True)
def _round_half_away(v):
    """formats.round_half_away of one value: C round(); the fraction v - trunc(v) is exact."""
    whole = np.trunc(v)
    if abs(v - whole) >= 0.5:
        return whole + np.sign(v)
    return whole


@njit(inline="always", cache=True)
def _quantize(x, j, codec):
    scale32, scale64, zero_point, qmin, qmax, divide32, rounding, _ = codec
    if divide32:
        v = np.float64(np.float32(x) / scale32[j])
    else:
        v = np.float64(x) / scale64[j]
    if rounding == HALF_EVEN:
        r = np.rint(v)
    elif rounding == HALF_AWAY:
        r = _round_half_away(v)
    else:
        r = np.floor(v)
    r += np.float64(zero_point[j])
    return np.int64(min(max(r, np.float64(qmin)), np.float64(qmax)))


@njit(inline="always", cache=True)
def _dequantize(q, j, codec):
    scale32, scale64, zero_point, _, _, _, _, per_channel = codec
    if per_channel:
        return np.float32(scale64[j] * np.float64(q - zero_point[j]))
    return (np.float32(q) - np.float32(zero_point[j])) * scale32[j]


@njit(inline="always", cache=True)
def _clip(v, lo, hi):
    return min(max(v, lo), hi)


@njit(inline="always", cache=True)
def _shift_right(v, n):
    """NumPy's int64 v >> n for any n: counts outside 0..63 give the sign (0 or -1), where C leaves
    the result undefined."""
    if 0 <= n < 64:
        return v >> n
    return np.int64(-1) if v < 0 else np.int64(0)


@njit(inline="always", cache=True)
def _shift_left(v, n):
    """NumPy's int64 v << n for any n: counts outside 0..63 give 0."""
    if 0 <= n < 64:
        return v << n
    return np.int64(0)


@njit(inline="always", cache=True)
def _dyadic(acc, m, e):
    """requant.shift_round_half_even(acc * m, e): round_half_even(acc * m / 2^e) for |acc * m| < 2^62
    and 1 <= e <= 62, and NumPy's bits for any other e (a gain of ~1e-32 gives e ~ 145)."""
    v = acc * m
    return _shift_right(v + (_shift_right(v, e) & 1) + (_shift_left(np.int64(1), e - 1) - 1), e)


@njit(inline="always", cache=True)
def _requantize(acc, j, m, e, codec):
    """requant.requantize(acc, "dyadic", ...) of one code: clip(dyadic + zero point) to the codec's range."""
    return _clip(_dyadic(acc, m[j], e[j]) + codec[2][j], codec[3], codec[4])


@njit(inline="always", cache=True)
def _isqrt(n):
    """intops.isqrt of one int64: Newton from above, x0 = 2^(ceil(bits / 2) + 1) by frexp; 0 for n <= 0."""
    if n <= 0:
        return np.int64(0)
    exponent = math.frexp(np.float64(n))[1]
    x = np.int64(1) << ((np.int64(exponent) + 1) // 2 + 1)
    while True:
        y = (x + n // x) // 2
        if y >= x:
            return x
        x = y


@njit(parallel=True, cache=True)
def rescale_rows(x, codec_in, m, e, codec_out, out):
    """out (N, C) <- intops.int_rescale of x's codes: dyadic (m, e) per channel (C,)."""
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            acc = _quantize(x[i, j], j, codec_in) - codec_in[2][j]
            out[i, j] = _dequantize(_requantize(acc, j, m, e, codec_out), j, codec_out)


@njit(parallel=True, cache=True)
def add_rows(a, b, codec_a, codec_b, ma, ea, mb, eb, codec_out, out):
    """out (N, C) <- intops.int_add: each operand's centred codes to the output scale (dyadic, clipped to
    32 bits), summed, plus the output zero point, clipped."""
    zero_point, qmin, qmax = codec_out[2], codec_out[3], codec_out[4]
    for i in prange(a.shape[0]):
        for j in range(a.shape[1]):
            ra = _clip(_dyadic(_quantize(a[i, j], j, codec_a) - codec_a[2][j], ma[j], ea[j]), WIDE_MIN, WIDE_MAX)
            rb = _clip(_dyadic(_quantize(b[i, j], j, codec_b) - codec_b[2][j], mb[j], eb[j]), WIDE_MIN, WIDE_MAX)
            out[i, j] = _dequantize(_clip(ra + rb + zero_point[j], qmin, qmax), j, codec_out)


@njit(parallel=True, cache=True)
def softmax_rows(x, masked, codec, exp_constants, out_bits, out):
    """out (N, K) <- intops.int_softmax over each row of x's centred codes, as float32 code * 2^-out_bits.
    Entries with x <= masked (float32) are masked keys: no part of the max or the sum, output 0.
    exp_constants: (extra, ln2, b, c, cut, lowest = -EXP_RANGE * ln2) of intops.exp_constants."""
    extra, ln2, b, c, cut, lowest = exp_constants
    shift = SOFTMAX_NUMERATOR_BITS - out_bits
    half, top_code = np.int64(1) << (shift - 1), (np.int64(1) << out_bits) - 1
    unit = np.float32(2.0 ** -out_bits)
    K = x.shape[1]
    for i in prange(x.shape[0]):
        e = np.empty(K, np.int64)
        top = NO_TOP
        for j in range(K):
            if x[i, j] > masked:
                e[j] = _quantize(x[i, j], j, codec) - codec[2][j]
                top = max(top, e[j])
        total = np.int64(0)
        for j in range(K):
            if x[i, j] > masked:
                v = max((e[j] - top) << extra, lowest)
                z = (-v) // ln2
                r = v + z * ln2
                e[j] = (r * (r + b) + c) >> (z + cut)
                total += e[j]
            else:
                e[j] = 0
        factor = SOFTMAX_NUMERATOR // max(total, 1)
        for j in range(K):
            out[i, j] = np.float32(_clip((e[j] * factor + half) >> shift, 0, top_code)) * unit


@njit(inline="always", cache=True)
def _gelu_code(q, b, c):
    """intops.int_gelu of one centred code: -q (sign(q) ((min(|q|, -b) + b)^2 + c) + c)."""
    d = min(abs(q), -b) + b
    sign = np.int64(q > 0) - np.int64(q < 0)
    return -q * (sign * (d * d + c) + c)


@njit(parallel=True, cache=True)
def gelu_peak(x, codec, b, c):
    """max |i-GELU code| over x (N, F): the peak the output requantization's dyadic_fit needs."""
    peaks = np.zeros(x.shape[0], np.int64)
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            peaks[i] = max(peaks[i], abs(_gelu_code(_quantize(x[i, j], j, codec) - codec[2][j], b, c)))
    return peaks.max()


@njit(parallel=True, cache=True)
def gelu_rows(x, codec_in, b, c, m, e, codec_out, out):
    """out (N, F) <- the i-GELU codes of x, requantized (dyadic m, e per channel) and dequantized."""
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            code = _gelu_code(_quantize(x[i, j], j, codec_in) - codec_in[2][j], b, c)
            out[i, j] = _dequantize(_requantize(code, j, m, e, codec_out), j, codec_out)


@njit(parallel=True, cache=True)
def layernorm_rows(x, codec_in, common_m, common_e, to_common, eps_codes, bias_codes, m, e, codec_out, out,
                   overflowed):
    """out (N, C) <- intops.int_layernorm over each row of x's codes; overflowed[i] <- row i's variance
    sum reached VARIANCE_LIMIT. to_common: per-channel codes first go to one scale (dyadic common_m,
    common_e, clipped to 32 bits). Output: dyadic (m, e) of normalised + bias_codes, per channel."""
    C = x.shape[1]
    for i in prange(x.shape[0]):
        y = np.empty(C, np.int64)
        total = np.int64(0)
        for j in range(C):
            y[j] = _quantize(x[i, j], j, codec_in) - codec_in[2][j]
            if to_common:
                y[j] = _clip(_dyadic(y[j], common_m[j], common_e[j]), WIDE_MIN, WIDE_MAX)
            total += y[j]
        mean = (total + C // 2) // C
        var = np.int64(0)
        for j in range(C):
            y[j] -= mean
            var += y[j] * y[j]
        overflowed[i] = var >= VARIANCE_LIMIT
        std = max(_isqrt(var + eps_codes), 1)
        for j in range(C):
            normalised = (y[j] << LN_FRACTION_BITS) // std
            out[i, j] = _dequantize(_requantize(normalised + bias_codes[j], j, m, e, codec_out), j, codec_out)

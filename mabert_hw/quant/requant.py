"""Requantization: exact int accumulator (+ bias) -> output codes, as real engines do it, bit for bit.

acc[..., n] is the exact sum over k of (x_q - x_zp)(w_q - w_zp[n]); x_s, w_s[n], y_s, y_zp are the
input, weight and output quantization parameters (equation (1) of formats.py); the real multiplier
is M[n] = x_s * w_s[n] / y_s. f32(.) below is a float32 rounding, rint rounds half to even.

  ort            onnxruntime QLinearMatMul: m = f32(f32(x_s * w_s) / y_s),
                 y = clip(rint(f32(f32(acc) * m)) + y_zp). A bias is added to acc as
                 rint(b / f32(x_s * w_s)) (onnxruntime's static quantizer stores int32 biases so).
  fbgemm         torch.ops.quantized.linear, fbgemm engine: s = f32(f32(x_s) * f32(w_s)),
                 m = f32(s / f32(y_s)), y = clip(rint(f32(f32(f32(acc) + f32(b / s)) * m)) + y_zp).
  qnnpack        the qnnpack engine quantizes the bias first: bq = rint(f32(b / s)),
                 y = clip(rint(f32(f32(acc + bq) * m)) + y_zp).
  tflite         TFLite / gemmlowp double rounding: (q31, shift) = QuantizeMultiplier(M) (frexp,
                 mantissa rounded half away from zero to 31 bits), bias round-half-away(b / (x_s w_s)),
                 y = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << left, q31), right).
  tflite_single  TFLITE_SINGLE_ROUNDING: y = (acc * q31 + 2^(30 - shift)) >> (31 - shift).
  dyadic         I-BERT: M = m / 2^e with m = round-half-up(frexp mantissa * 2^31), e = 31 - exponent,
                 bias rint(b / (x_s w_s)), y = round_half_even((acc + bias) * m / 2^e), all int64
                 (m loses low bits when |acc| would push acc * m past 2^62).
"""

from __future__ import annotations

import numpy as np

from .formats import IntFormat, round_half_away
from .intgemm import FLOAT64_EXACT

REQUANT_MODES = ("ort", "fbgemm", "qnnpack", "tflite", "tflite_single", "dyadic")
INT32_REQUANT_MODES = ("tflite", "tflite_single")  # gemmlowp's int32 x Q31 products, exact in int64 only for
# |acc| < 2^32: wider accumulators wrap silently. The float engines (ort, fbgemm, qnnpack) take acc_bits > 32:
# f32(acc) is defined for any width (onnxruntime itself has int32 accumulators: a wider one is a design point)
F32 = np.float32
DYADIC_PRODUCT_BITS = 62  # dyadic products acc * m stay below 2^62 (shift_round_half_even's bound)


def quantize_multiplier(M) -> tuple[np.ndarray, np.ndarray]:
    """TFLite QuantizeMultiplier: M = q31 * 2^(shift - 31), q31 in [2^30, 2^31), half away from zero."""
    mantissa, shift = np.frexp(np.asarray(M, np.float64))
    q = (np.floor(mantissa * 2.0 ** 31 + 0.5)).astype(np.int64)  # mantissa >= 0: half away == half up
    carry = q == (1 << 31)
    q = np.where(carry, q // 2, q)
    shift = np.where(carry, shift + 1, shift).astype(np.int64)
    return q, shift


def _trunc_div_pow2(v: np.ndarray, bits: int) -> np.ndarray:
    """C integer division by 2^bits (rounds toward zero)."""
    return np.sign(v) * (np.abs(v) >> bits)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64."""
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    out = _trunc_div_pow2(ab + nudge, 31)
    overflow = (a == b) & (a == -(1 << 31))
    return np.where(overflow, (1 << 31) - 1, out)


def rounding_divide_by_pot(x: np.ndarray, exponent) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded half away from zero."""
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, q31, shift, single_rounding: bool = False) -> np.ndarray:
    x = np.asarray(x, np.int64)
    if single_rounding:
        total = 31 - shift
        return (x * q31 + (np.int64(1) << (total - 1))) >> total
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x << left, q31), right)


def dyadic_multiplier(M) -> tuple[np.ndarray, np.ndarray]:
    """I-BERT batch_frexp: M ~ m / 2^e, m = round-half-up(mantissa * 2^31), e = 31 - exponent. Half-up as
    Decimal's ROUND_HALF_UP: a tie goes away from zero, for negative multipliers (gains) too. mantissa * 2^31
    and |v| + 0.5 are exact in float64 (|v| < 2^31 leaves 22 fraction bits)."""
    mantissa, exponent = np.frexp(np.asarray(M, np.float64))
    v = mantissa * 2.0 ** 31
    m = np.copysign(np.floor(np.abs(v) + 0.5), v).astype(np.int64)
    return m, (31 - exponent).astype(np.int64)


def dyadic_terms(x_scale, w_scale, y_scale, bias=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The dyadic mode's real multiplier M = x_s * w_s / y_s and bias codes rint(b / (x_s * w_s)) (None
    without a bias), w_scale flattened as requantize_codes does. A channel with w_s = 0 gets M = 0 and
    bias code 0: its output is the bias alone, which the caller supplies (requantize does)."""
    w_scale = np.asarray(w_scale, np.float64).reshape(-1)
    bias_codes = None
    if bias is not None:
        unit = x_scale * w_scale
        bias_codes = np.rint(np.asarray(bias, np.float64) / np.where(unit == 0, 1.0, unit))
        bias_codes = np.where(unit == 0, 0.0, bias_codes).astype(np.int64)
    return x_scale * w_scale / y_scale, bias_codes


def dyadic_drop(peak: int) -> int:
    """Low bits the dyadic mantissa m (< 2^31) loses so that |acc * m| < 2^DYADIC_PRODUCT_BITS for
    |acc| <= peak (0 while peak < 2^31)."""
    return max(int(peak).bit_length() + 31 - DYADIC_PRODUCT_BITS, 0)


def dyadic_fit(M, peak: int) -> tuple[np.ndarray, np.ndarray]:
    """dyadic_multiplier(M) for accumulators up to |peak|, with dyadic_drop(peak) low bits of m rounded off,
    half away from zero as dyadic_multiplier rounds (so -M gives -m)."""
    m, e = dyadic_multiplier(M)
    drop = dyadic_drop(peak)
    if drop:
        drop = np.minimum(drop, e - 1)
        m, e = np.sign(m) * ((np.abs(m) + (np.int64(1) << (drop - 1))) >> drop), e - drop
    return m, e


def shift_round_half_even(v: np.ndarray, e) -> np.ndarray:
    """round_half_even(v / 2^e) for int64 v (|v| < 2^62) and e >= 1, exactly.

    With v = f 2^e + r (0 <= r < 2^e) and h = 2^(e-1): (v + h - 1 + (f & 1)) >> e = f + [r >= h + 1 - (f & 1)],
    i.e. up when r > h, and at the tie r = h only when f is odd (to even); r + h < 2^(e+1) carries at most 1.
    """
    e = np.asarray(e, np.int64)
    odd = (v >> e) & 1
    odd += (np.int64(1) << (e - 1)) - 1
    odd += v
    return odd >> e


def requantize(acc: np.ndarray, mode: str, x_scale, w_scale, y_scale, y_zp, fmt: IntFormat,
               bias: np.ndarray | None = None) -> np.ndarray:
    """Exact accumulator (..., N) -> output codes (..., N) in fmt, as int64, per the engine `mode`."""
    return np.asarray(requantize_codes(acc, mode, x_scale, w_scale, y_scale, y_zp, fmt, bias), np.int64)


def requantize_codes(acc: np.ndarray, mode: str, x_scale, w_scale, y_scale, y_zp, fmt: IntFormat,
                     bias: np.ndarray | None = None) -> np.ndarray:
    """As `requantize`; acc may be int64 or a float array of exact integers (intgemm.exact_matmul).

    The float-engine modes return float32 codes when fmt has <= 24 bits: f32(acc) is the same
    rounding from an exact float64 as from int64, and rint, + y_zp and the clip are exact in
    float32 for the codes that survive the clip. The integer modes return int64.
    """
    w_scale = np.asarray(w_scale, np.float64).reshape(-1)
    if mode in ("ort", "fbgemm", "qnnpack"):
        y = _float_engine(np.asarray(acc), mode, x_scale, w_scale, y_scale, bias)
        if fmt.bits <= 24:
            y += F32(y_zp)
            return np.clip(y, fmt.qmin, fmt.qmax, out=y)
        y = y.astype(np.int64)
    else:
        y = _integer_engine(np.asarray(acc, np.int64), mode, x_scale, w_scale, y_scale, bias)
    return np.clip(y + np.asarray(y_zp, np.int64), fmt.qmin, fmt.qmax)


def _exact_sum(acc: np.ndarray, bias_codes: np.ndarray) -> np.ndarray:
    """acc + bias codes, exactly: in float64 while every value stays below 2^53, else in int64."""
    if acc.dtype.kind == "f":
        top = max(float(-acc.min(initial=0)), float(acc.max(initial=0))) + float(np.abs(bias_codes).max(initial=0))
        if top <= FLOAT64_EXACT:
            return acc.astype(np.float64) + bias_codes
    return acc.astype(np.int64) + bias_codes.astype(np.int64)


def _float_engine(acc, mode, x_scale, w_scale, y_scale, bias) -> np.ndarray:
    s = F32(x_scale) * w_scale.astype(F32)  # (N,) float32
    m = s / F32(y_scale)
    if mode == "fbgemm":
        value = acc.astype(F32)
        if bias is not None:
            value = value + (np.asarray(bias, F32) / s)
    else:
        if bias is not None:
            acc = _exact_sum(acc, np.rint(np.asarray(bias, F32) / s).astype(np.float64))
        value = acc.astype(F32)
    return np.rint(value * m)


def _integer_engine(acc, mode, x_scale, w_scale, y_scale, bias) -> np.ndarray:
    if mode in ("tflite", "tflite_single"):
        if bias is not None:
            acc = acc + round_half_away(np.asarray(bias, np.float64) / (x_scale * w_scale)).astype(np.int64)
        q31, shift = quantize_multiplier(x_scale * w_scale / y_scale)
        return multiply_by_quantized_multiplier(acc, q31, shift, single_rounding=mode == "tflite_single")
    if mode == "dyadic":
        multiplier, bias_codes = dyadic_terms(x_scale, w_scale, y_scale, bias)
        if bias is not None:
            acc = acc + bias_codes
        m, e = dyadic_fit(multiplier, int(np.abs(acc).max(initial=0)))
        y = shift_round_half_even(acc * m, e)
        dead = w_scale == 0  # channels whose weight (a LayerNorm gain, a PowerNorm scale) is 0: y = b
        if bias is not None and np.any(dead):  # in output codes, a constant fixed offline
            constant = np.rint(np.asarray(bias, np.float64) / np.asarray(y_scale, np.float64)).astype(np.int64)
            y = np.where(dead, constant, y)
        return y
    raise ValueError(f"unknown requant mode {mode!r}; modes: {', '.join(REQUANT_MODES)}")

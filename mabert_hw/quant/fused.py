"""Fused integer-only ops of the fixed backend: quantize -> intops op -> dequantize in one Numba pass
(kernels/introws.py), with exactly the codes of the NumPy reference chain (formats.quantize_codes,
intops.int_*, requant "dyadic", FixedBackend._values), which stays the readable truth and the tests'
oracle. Each function returns the float32 result, or None where a kernel's conditions do not hold
and the caller must run the reference:

- float32 data and a deterministic rounding (half_even, half_away, floor; "stochastic" draws from
  the backend's generator, in the reference's order);
- the dyadic requantizations: the reference rounds low bits off m when the tensor's max |acc| would
  push acc * m past 2^62 (requant.dyadic_fit); here the bound on |acc| that the formats give must
  show that no bit is dropped (codes of up to 31 bits), except for i-GELU, whose codes can need it at
  16 bits: gelu_peak measures the tensor's exact max first, as the reference does;
- LayerNorm: the variance sum cannot reach 2^63 (codes below ~2^27 at C = 384), so that
  |normalised| <= 2^16 (|y_j| <= sqrt(sum y^2) = std) bounds the output accumulator;
- softmax, GELU: the per-scale constants are int64 (input scales of about 1e-9 to 9e4) and the exp
  shifts z + cut stay within SHIFT_LIMIT.
"""

from __future__ import annotations

import numpy as np

from ..kernels import introws
from ..kernels.threads import launch_threads
from .calibrate import MASKED
from .formats import QParams, centred_peak, operand_scale
from .intops import EXP_RANGE, LN_FRACTION_BITS, common_scale, exp_constants, gelu_constants, layernorm_constants
from .requant import dyadic_drop, dyadic_fit, dyadic_terms

ROUNDINGS = tuple(introws.ROUNDINGS)  # the rounding modes the kernels implement
SHIFT_LIMIT = 63  # int64 shifts by 0..63 bits mean the same in NumPy and Numba (C leaves larger ones undefined)
# |c| of the i-exp and i-GELU polynomials stays below this, so that no int64 term wraps: i-GELU's
# sign * (d^2 + c) + c reaches 2c; i-exp's r (r + b) + c stays within (0, c], with room to spare
POLY_CONSTANT_LIMIT = 2 ** 62


def fusable(dtype, rounding: str) -> bool:
    """Whether the kernels apply to a backend computing in `dtype` with activation rounding `rounding`."""
    return dtype is np.float32 and rounding in ROUNDINGS


def _codec(qp: QParams, C: int, divide32: bool, rounding: str) -> tuple:
    """introws' codec of a format, its per-tensor values repeated over the C channels."""
    scale64 = np.broadcast_to(np.asarray(qp.scale, np.float64), (C,)).copy()
    zero_point = np.broadcast_to(np.asarray(qp.zero_point, np.int64), (C,)).copy()
    return (scale64.astype(np.float32), scale64, zero_point, np.int64(qp.fmt.qmin), np.int64(qp.fmt.qmax),
            divide32, np.int64(introws.ROUNDINGS[rounding]), bool(np.ndim(qp.scale)))


def _dyadic(multiplier, peak: int, C: int, measured: bool = False):
    """(m, e) per channel (C,) for accumulators |acc| <= peak, or None when bits would be dropped and
    peak is only a bound (`measured` False: the reference's drop depends on the true max)."""
    if dyadic_drop(peak) and not measured:
        return None
    return tuple(np.broadcast_to(v, (C,)).astype(np.int64) for v in dyadic_fit(multiplier, peak))


def _rows(x):
    """(N, C) C-contiguous float32 view of x (..., C) and an output of x's shape."""
    launch_threads()
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1]), np.empty(x.shape, np.float32)


def rescale(x, qp: QParams, factor: float, out: QParams, divide32: bool, rounding: str):
    """intops.int_rescale(quantize(x), ...), dequantized."""
    C = x.shape[-1]
    multiplier, _ = dyadic_terms(operand_scale(qp), factor, operand_scale(out))
    dyadic = _dyadic(multiplier, centred_peak(qp), C)
    if dyadic is None:
        return None
    rows, y = _rows(x)
    introws.rescale_rows(rows, _codec(qp, C, divide32, rounding), *dyadic, _codec(out, C, divide32, rounding),
                         y.reshape(rows.shape))
    return y


def add(a, b, qa: QParams, qb: QParams, out: QParams, divide32: bool, rounding: str):
    """intops.int_add(quantize(a), quantize(b), ...), dequantized; b broadcasts to a."""
    C = a.shape[-1]
    dyadic_a = _dyadic(dyadic_terms(operand_scale(qa), 1.0, operand_scale(out))[0], centred_peak(qa), C)
    dyadic_b = _dyadic(dyadic_terms(operand_scale(qb), 1.0, operand_scale(out))[0], centred_peak(qb), C)
    if dyadic_a is None or dyadic_b is None:
        return None
    rows, y = _rows(a)
    b_rows = np.ascontiguousarray(np.broadcast_to(b, a.shape)).reshape(rows.shape)
    introws.add_rows(rows, b_rows, _codec(qa, C, divide32, rounding), _codec(qb, C, divide32, rounding),
                     *dyadic_a, *dyadic_b, _codec(out, C, divide32, rounding), y.reshape(rows.shape))
    return y


def softmax(x, qp: QParams, out_bits: int, divide32: bool, rounding: str):
    """intops.int_softmax over the last axis of quantize(x) (entries <= MASKED are masked keys), as
    float32 codes * 2^-out_bits."""
    extra, ln2, b, c, cut, _ = exp_constants(float(qp.scale))
    if not (ln2 >= 1 and c < POLY_CONSTANT_LIMIT and EXP_RANGE + cut <= SHIFT_LIMIT):
        return None
    rows, y = _rows(x)
    introws.softmax_rows(rows, np.float32(MASKED), _codec(qp, x.shape[-1], divide32, rounding),
                         (np.int64(extra), np.int64(ln2), np.int64(b), np.int64(c), np.int64(cut),
                          np.int64(-EXP_RANGE * ln2)), out_bits, y.reshape(rows.shape))
    return y


def gelu(x, qp: QParams, out: QParams, divide32: bool, rounding: str):
    """intops.int_gelu(quantize(x)) requantized to `out` (dyadic), dequantized."""
    C = x.shape[-1]
    b, c, code_scale = gelu_constants(float(qp.scale))
    if not -POLY_CONSTANT_LIMIT < c < 0:
        return None
    rows, y = _rows(x)
    codec = _codec(qp, C, divide32, rounding)
    multiplier, _ = dyadic_terms(code_scale, 1.0, float(out.scale))
    peak = centred_peak(qp) * (b * b + 2 * abs(c))  # |code| <= |q| (b^2 + 2 |c|)
    measured = bool(dyadic_drop(peak))
    if measured:
        peak = int(introws.gelu_peak(rows, codec, np.int64(b), np.int64(c)))
    dyadic = _dyadic(multiplier, peak, C, measured)
    if dyadic is None:
        return None
    introws.gelu_rows(rows, codec, np.int64(b), np.int64(c), *dyadic, _codec(out, C, divide32, rounding),
                      y.reshape(rows.shape))
    return y


def layernorm(x, qp: QParams, gain, bias, eps: float, out: QParams, divide32: bool, rounding: str):
    """intops.int_layernorm(quantize(x), ...) dequantized, and its count of overflowing variance rows."""
    C = x.shape[-1]
    peak = centred_peak(qp)
    common_m = common_e = np.zeros(C, np.int64)
    scale = operand_scale(qp)
    if np.ndim(scale):  # per channel: to the common scale first (intops.to_common_scale)
        scale = common_scale(scale)
        to_common = _dyadic(dyadic_terms(qp.scale, 1.0, scale)[0], peak, C)
        if to_common is None:
            return None
        common_m, common_e = to_common
        peak = min(int(np.max((peak * common_m) >> common_e)) + 1, introws.WIDE_MAX + 1)
    eps_codes, unit, gain = layernorm_constants(C, eps, scale, gain)
    if C * (2 * peak) ** 2 + eps_codes >= 2 ** 63:  # the variance sum must not wrap
        return None
    if np.any((gain == 0) & (np.asarray(bias) != 0)):  # channels that are their non-zero bias: the reference's
        return None
    multiplier, bias_codes = dyadic_terms(unit, gain, operand_scale(out), np.asarray(bias, np.float64))
    dyadic = _dyadic(multiplier, int((1 << LN_FRACTION_BITS) + np.abs(bias_codes.astype(np.float64)).max()), C)
    if dyadic is None:
        return None
    rows, y = _rows(x)
    overflowed = np.empty(rows.shape[0], bool)
    introws.layernorm_rows(rows, _codec(qp, C, divide32, rounding), common_m, common_e, bool(np.ndim(qp.scale)),
                           np.int64(eps_codes), np.broadcast_to(bias_codes, (C,)).astype(np.int64), *dyadic,
                           _codec(out, C, divide32, rounding), y.reshape(rows.shape), overflowed)
    return y, int(np.count_nonzero(overflowed))

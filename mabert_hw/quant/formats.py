"""Number formats: integers of 2..64 bits (tensors of up to 23, config.py; accumulators up to int64),
fixed point Qm.n, scales, rounding, saturation.

Conventions (stated once, used everywhere in mabert_hw.quant):
  (1) real = scale * (q - zero_point)                       (gemmlowp doc/quantization.md, eq. 3)
  (2) q = clip(round(x / scale) + zero_point, qmin, qmax)   with the rounding mode always explicit
  (3) Qm.n is a signed integer of 1 + m + n bits with scale 2^-n (m integer bits excluding sign).
Scale granularity: "tensor" (one scale), "channel" (one per output row, axis 0 of a (N, K) weight),
"group" (one per run of `group_size` consecutive entries along the last axis of each row).
Activations (..., C) are "tensor" or "channel": one scale (and zero point) per entry of the last
axis, the hidden unit, shaped (C,) so they broadcast along it (`channel_range`).
Symmetric formats have zero_point 0 and the range [-max|x|, max|x|]; asymmetric ones map [min, max]
(widened to include 0, so 0.0 is exactly representable) onto [qmin, qmax].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROUNDING_MODES = ("half_even", "half_away", "floor", "stochastic")
FLOAT64_STEP_BITS = 53  # float64 significand: one step in the binade of frexp exponent e is 2^(e - 53)
GRANULARITIES = ("tensor", "channel", "group")
ACT_GRANULARITIES = ("tensor", "channel")


@dataclass(frozen=True)
class IntFormat:
    bits: int
    signed: bool = True

    def __post_init__(self):
        if not 2 <= self.bits <= 64:
            raise ValueError(f"integer formats have 2..64 bits, got {self.bits}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


def fixed_point(m: int, n: int) -> tuple[IntFormat, float]:
    """Qm.n: (signed format of 1 + m + n bits, scale 2^-n), convention (3)."""
    return IntFormat(1 + m + n, signed=True), 2.0 ** -n


@dataclass(frozen=True)
class QParams:
    """scale and zero_point broadcast against the tensor they quantize (per-channel: shape (N, 1))."""

    scale: np.ndarray  # float64
    zero_point: np.ndarray  # int64
    fmt: IntFormat
    group_size: int = 0  # > 0: scales are per group of this many entries along the last axis


def round_values(x: np.ndarray, mode: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Round float64 values to integers (returned as float64) with an explicit mode."""
    if mode == "half_even":
        return np.rint(x)
    if mode == "half_away":
        return round_half_away(x)
    if mode == "floor":
        return np.floor(x)
    if mode == "stochastic":
        if rng is None:
            raise ValueError("stochastic rounding needs a seeded numpy Generator")
        return np.floor(x + rng.random(np.shape(x)))
    raise ValueError(f"unknown rounding {mode!r}; modes: {', '.join(ROUNDING_MODES)}")


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C round(): to the nearest integer, ties away from zero. The fraction x - trunc(x) is exact in
    float64, so the tie test is too; floor(|x| + 0.5) is not, as |x| + 0.5 rounds: 0.49999999999999994
    (the float below 0.5) + 0.5 is 1.0 in float64, which would give 1."""
    fraction, whole = np.modf(np.asarray(x, np.float64))  # modf(+-inf) = (+-0, +-inf)
    return whole + np.sign(fraction) * (np.abs(fraction) >= 0.5)


def fma32(x: np.ndarray, a, b) -> np.ndarray:
    """f32(x * a + b) rounded once, as a float32 fused multiply-add (x, a float32 values; b float64 values
    exact in float32, e.g. zero points). The product of two float32 values is exact in float64 (24 + 24
    bits); its sum with b is rounded in float64, its error recovered exactly by TwoSum (Knuth), and the
    sum rounded to odd (an inexact sum with an even last bit moves one float64 step towards the error):
    a float64 value with an odd last bit is no float32 value and no midpoint of two (those need 29
    trailing zero bits), so rounding it to float32 gives the float32 rounding of the exact value, where
    plain float64 then float32 rounding can round twice across a midpoint."""
    p = np.asarray(x, np.float32).astype(np.float64) * np.asarray(a, np.float32).astype(np.float64)
    b = np.asarray(b, np.float64)
    total = p + b
    b_part = total - p
    error = (p - (total - b_part)) + (b - b_part)
    mantissa, exponent = np.frexp(total)
    with np.errstate(invalid="ignore"):  # inf / nan data: total is inf / nan, and so is the result
        even = ((mantissa * 2.0 ** FLOAT64_STEP_BITS).astype(np.int64) & 1) == 0
    step = np.copysign(np.ldexp(1.0, exponent - FLOAT64_STEP_BITS), error)  # one float64 step at total's binade
    return np.where((error != 0) & even, total + step, total).astype(np.float32)


def choose_qparams(lo, hi, fmt: IntFormat, symmetric: bool, pow2: bool = False,
                   group_size: int = 0) -> QParams:
    """Scale and zero point mapping the range [lo, hi] (arrays for per-channel/group) onto fmt.

    Symmetric: scale = max(|lo|, |hi|) / qmax, zero_point 0 (an unsigned format then covers [0, hi]).
    Asymmetric: scale = (hi - lo) / (qmax - qmin), zero_point = qmin - round_half_even(lo / scale).
    pow2 rounds the scale up to the next power of two (a shift in hardware). A zero range gets scale 1.
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if symmetric:
        scale = np.maximum(-lo, hi) / fmt.qmax if fmt.signed else hi / fmt.qmax
    else:
        scale = (hi - lo) / (fmt.qmax - fmt.qmin)
    scale = np.where(scale > 0, scale, 1.0)
    if pow2:
        scale = 2.0 ** np.ceil(np.log2(scale))
    if symmetric:
        zero_point = np.zeros(np.shape(scale), np.int64)
    else:
        zero_point = np.clip(fmt.qmin - np.rint(lo / scale), fmt.qmin, fmt.qmax).astype(np.int64)
    return QParams(scale, zero_point, fmt, group_size)


def _grouped(x: np.ndarray, group_size: int) -> np.ndarray:
    if x.shape[-1] % group_size:
        raise ValueError(f"last axis {x.shape[-1]} is not a multiple of group size {group_size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def quantize_codes(x: np.ndarray, qp: QParams, rounding: str = "half_even",
                   rng: np.random.Generator | None = None, float32: bool = False, fma: bool = False) -> np.ndarray:
    """Equation (2) with the codes held in a float array of exact integers; `quantize` is this as int64.

    float32=True computes x / scale in float32 as an engine does:
      onnxruntime QuantizeLinear:            round(f32(x / f32(scale))) + zero_point
      fma=True, torch.quantize_per_tensor:   round(fma(x, f32(1 / f32(scale)), zero_point))
    torch (fbgemm::Quantize, on every quantized engine: fbgemm, qnnpack, x86, onednn) multiplies by the
    float32 reciprocal and adds the zero point before rounding, in one fused multiply-add (fma32), so its
    ties break on the code. Measured against torch 2.13 on ~1.2M values, half of them within a float32
    step of a tie, and a double-rounding case: this formula 0 codes differ, onnxruntime's ~14 %; on 2M
    random values 0, and 11-16 (tests/test_quant_rounding.py).
    With half-even rounding the codes then stay float32: rint of a float32 is a float32, and adding
    the zero point and clipping are exact there while |code| < 2^24 (formats of <= 24 bits). Other
    paths round in float64.
    """
    shape = np.shape(x)
    stay_float32 = float32 and rounding == "half_even" and qp.fmt.bits <= 24
    dtype = np.float32 if stay_float32 else np.float64
    x = np.asarray(x, np.float32 if float32 else np.float64)
    if qp.group_size:
        x = _grouped(x, qp.group_size)
    if float32 and fma:
        zero_point = qp.zero_point.astype(np.float64)
        q = round_values(fma32(x, np.float32(1) / qp.scale.astype(np.float32), zero_point).astype(dtype), rounding,
                         rng)
    else:
        q = round_values((x / qp.scale.astype(x.dtype)).astype(dtype, copy=False), rounding, rng)
        q += qp.zero_point.astype(dtype)
    return np.clip(q, qp.fmt.qmin, qp.fmt.qmax, out=q).reshape(shape)


def quantize(x: np.ndarray, qp: QParams, rounding: str = "half_even",
             rng: np.random.Generator | None = None, float32: bool = False, fma: bool = False) -> np.ndarray:
    """Equation (2): float -> int64 codes, saturated to the format's range (see quantize_codes)."""
    return quantize_codes(x, qp, rounding, rng, float32, fma).astype(np.int64)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """Equation (1), in float64."""
    shape = q.shape
    if qp.group_size:
        q = _grouped(q, qp.group_size)
    return (qp.scale * (q - qp.zero_point)).reshape(shape)


def centred_peak(qp: QParams) -> int:
    """max |q - zero_point| over the format's codes q and every zero point (one per channel or group):
    the bound on centred codes that exact integer arithmetic is proved with (intgemm.exact_matmul, the
    fused kernels' dyadic fits)."""
    zero_point = np.asarray(qp.zero_point)
    return max(qp.fmt.qmax - int(zero_point.min()), int(zero_point.max()) - qp.fmt.qmin)


def operand_scale(qp: QParams):
    """The scale as the integer ops (intops, requant) take it: a float per tensor, the array per channel."""
    return qp.scale if np.ndim(qp.scale) else float(qp.scale)


def operand_params(qp: QParams) -> tuple:
    """(scale, zero_point) as the integer ops take them: a float and an int, or the per-channel arrays."""
    return operand_scale(qp), qp.zero_point if np.ndim(qp.zero_point) else int(qp.zero_point)


def tensor_range(x: np.ndarray, granularity: str, group_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of a weight at a granularity, shaped to broadcast like QParams.scale."""
    x = np.asarray(x, np.float64)
    if granularity == "tensor":
        return np.array(x.min()), np.array(x.max())
    if granularity == "channel":
        axes = tuple(range(1, x.ndim))
        return x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    if granularity == "group":
        g = _grouped(x, group_size)
        return g.min(axis=-1, keepdims=True), g.max(axis=-1, keepdims=True)
    raise ValueError(f"unknown granularity {granularity!r}; granularities: {', '.join(GRANULARITIES)}")


def weight_qparams(w: np.ndarray, fmt: IntFormat, granularity: str, symmetric: bool = True,
                   pow2: bool = False, group_size: int = 0) -> QParams:
    lo, hi = tensor_range(w, granularity, group_size)
    return choose_qparams(lo, hi, fmt, symmetric, pow2, group_size if granularity == "group" else 0)


def channel_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of activations (..., C) per channel (over every axis but the last), shape (C,),
    widened to include 0 (as choose_qparams does anyway)."""
    rows = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    return rows.min(axis=0, initial=0.0), rows.max(axis=0, initial=0.0)

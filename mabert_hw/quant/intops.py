"""Integer-only non-linear ops (I-BERT, Kim et al. 2021), exact in int64 NumPy.

Inputs are integer codes q with a float scale s (real = s * q after the zero point is removed).
Per-scale constants (b_int, c_int, dyadic multipliers) are derived once with IEEE float64 division,
multiplication and sqrt, which are correctly rounded, so the same bits come out on every machine;
everything per element is int64 arithmetic (I-BERT's PyTorch code runs these in float32, which is
not exact above 2^24).

  i-exp      x = -ln2 * z + r, r in (-ln2, 0]: exp(r) ~ 0.35815147 r^2 + 0.96963238 r + 1, then >> z
  i-softmax  exp codes of 16 bits, factor = floor(2^32 / sum), out = round((e * factor) / 2^(32 - out_bits))
  i-GELU     erf(u) ~ sign(u) [a (min(|u|, -b) + b)^2 + 1], a = -0.2888, b = -1.769, u = x / sqrt(2)
  i-LN       mean (rounded half up; I-BERT's torch.round rounds ties to even) and variance in integers (the
             sum of squares exact past int64 too), std = integer Newton sqrt, y * 2^16 // std, then a per-channel
             dyadic requantization folds gamma, beta and sqrt(C). Per-channel input codes are first
             brought to one scale (to_common_scale).
Residual add, LayerNorm and rescale take scales and zero points as scalars or per-channel arrays (C,)
broadcasting along the last axis (formats.py); the others take one scale.
"""

from __future__ import annotations

import math

import numpy as np

from .formats import IntFormat
from .requant import requantize

LN2 = math.log(2.0)
EXP_COEF = (0.35815147, 0.96963238, 1.0)  # I-BERT's second-order fit of exp on [-ln2, 0]
EXP_RANGE = 30  # exp(x) for x < -30 ln2 is below 2^-30: clamped there
EXP_BITS = 16  # exp codes are cut to 16 bits before the row sum (I-BERT QuantAct(16))
LN2_FRACTION_BITS = 16  # at most this many extra fractional bits for the exact ln2 split...
EXP_FINEST = math.sqrt(EXP_COEF[2] / EXP_COEF[0]) / 2.0 ** 20  # ...and units no finer: c_int <= 2^40
SOFTMAX_NUMERATOR_BITS = 32  # factor = floor(2^32 / sum)
NO_TOP = np.iinfo(np.int64).min // 4  # a softmax row's max before any valid entry: -2^61, below every
# code, and q - NO_TOP (taken for a row with none) cannot wrap in int64 for |q| < 2^61
GELU_A, GELU_B = -0.2888, -1.769  # I-BERT's erf fit
LN_FRACTION_BITS = 16  # normalised values carry 16 fractional bits before the output requantization
COMMON_SCALE_BITS = 16  # per-channel codes grow by at most this many bits on the way to one scale
WIDE = IntFormat(32)  # the registers of the residual adder and the LayerNorm unit
VARIANCE_LIMIT = 1 << 31  # a LayerNorm variance sum from here on overflows a 32-bit accumulator


def isqrt(n_in: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) for int64 n >= 0 by Newton's iteration x <- (x + n // x) // 2 from above."""
    n = np.maximum(np.asarray(n_in, np.int64), 1)
    _, exponent = np.frexp(n.astype(np.float64))
    x = np.left_shift(np.int64(1), (exponent.astype(np.int64) + 1) // 2 + 1)  # x0 > sqrt(n)
    while True:
        y = (x + n // x) // 2
        done = y >= x
        if done.all():
            return np.where(np.asarray(n_in) > 0, x, 0)
        x = np.where(done, x, y)


def _bit_length(v: int) -> int:
    return int(v).bit_length()


def exp_constants(scale: float) -> tuple[int, int, int, int, int, float]:
    """int_exp's per-scale constants for inputs of scale `scale`: (extra fractional bits, ln2, b and c in
    units of r, the right shift `cut` that leaves EXP_BITS bits, the scale of the exp codes)."""
    extra = max(0, min(LN2_FRACTION_BITS, math.frexp(scale / EXP_FINEST)[1] - 1))  # exact log2 floor
    fine = scale / 2.0 ** extra  # units of r
    ln2_int = round(LN2 / fine)
    b_int = math.floor(EXP_COEF[1] / EXP_COEF[0] / fine)
    c_int = math.floor(EXP_COEF[2] / EXP_COEF[0] / fine ** 2)
    cut = max(_bit_length(c_int) - EXP_BITS, 0)
    return extra, ln2_int, b_int, c_int, cut, EXP_COEF[0] * fine ** 2 * 2.0 ** cut


def int_exp(x: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """exp(scale * x) for int64 x <= 0: (codes of at most EXP_BITS + 1 bits, their scale).

    x * scale = -ln2 * z + r is split exactly in fixed point with LN2_FRACTION_BITS extra bits
    (I-BERT rounds -ln2 to a multiple of the input scale, which is 4% off at 8-bit scales), then
    exp(r) is the polynomial and 2^-z a right shift folded with the cut to EXP_BITS bits.
    """
    extra, ln2_int, b_int, c_int, cut, code_scale = exp_constants(scale)
    x = np.maximum(np.asarray(x, np.int64) << extra, -EXP_RANGE * ln2_int)
    z = (-x) // ln2_int  # >= 0
    r = x + z * ln2_int  # in (-ln2, 0]
    poly = r * (r + b_int) + c_int
    return poly >> (z + cut), code_scale


def int_softmax(q: np.ndarray, scale: float, out_bits: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis of codes q (scale `scale`); unsigned codes with scale 2^-out_bits."""
    q = np.asarray(q, np.int64)
    if valid is None:
        valid = np.ones(q.shape, bool)
    top = np.where(valid, q, NO_TOP).max(axis=-1, keepdims=True)
    e, _ = int_exp(np.where(valid, q - top, 0), scale)
    e = np.where(valid, e, 0)
    total = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    factor = (np.int64(1) << SOFTMAX_NUMERATOR_BITS) // total
    shift = SOFTMAX_NUMERATOR_BITS - out_bits
    out = (e * factor + (np.int64(1) << (shift - 1))) >> shift
    return np.clip(out, 0, (1 << out_bits) - 1)


def gelu_constants(scale: float) -> tuple[int, int, float]:
    """int_gelu's per-scale constants: (b, c in units of a * s_erf^2, the scale of the GELU codes)."""
    s_erf = scale / math.sqrt(2.0)
    b_int = math.floor(GELU_B / s_erf)  # negative
    c_int = math.floor(1.0 / (GELU_A * s_erf ** 2))  # negative: 1 in units of a * s_erf^2
    return b_int, c_int, -scale * GELU_A * s_erf ** 2 / 2.0


def int_gelu(q: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """GELU(scale * q) = x/2 (1 + erf(x / sqrt 2)) for int64 codes q: (codes, their scale)."""
    q = np.asarray(q, np.int64)
    b_int, c_int, code_scale = gelu_constants(scale)
    clipped = np.minimum(np.abs(q), -b_int)
    erf_int = np.sign(q) * ((clipped + b_int) ** 2 + c_int)  # erf ~ a s_erf^2 * erf_int
    return -q * (erf_int + c_int), code_scale


def common_scale(scale) -> float:
    """The one scale per-channel codes are brought to (to_common_scale)."""
    return max(float(np.min(scale)), float(np.max(scale)) / 2.0 ** COMMON_SCALE_BITS)


def to_common_scale(q: np.ndarray, zero_point, scale) -> tuple[np.ndarray, float]:
    """Per-channel codes (scale[c], zero_point[c]) -> (int64 codes of one scale, that scale).

    The common scale is the finest channel's, so each channel is multiplied by scale[c] / common >= 1
    (a dyadic multiplier, rounded half to even; an exact shift when the scales are powers of two) and
    no channel loses resolution; the codes grow by log2(max scale / min scale) bits (~7 on MiniLM's
    residual sums). A near-constant channel (a tiny scale) must not widen every code: the common scale
    is no finer than max scale / 2^COMMON_SCALE_BITS, and channels finer than that are rounded to it.
    """
    common = common_scale(scale)
    return requantize(np.asarray(q, np.int64) - zero_point, "dyadic", scale, 1.0, common, 0, WIDE), common


def layernorm_constants(C: int, eps: float, scale: float, gain: np.ndarray) -> tuple[int, float, np.ndarray]:
    """int_layernorm's per-scale constants: (eps in units of the squared input codes, the unit of the
    normalised codes, the gain as float64; a zero gain's channel is its bias, see requant's dyadic mode)."""
    return round(C * eps / scale ** 2), math.sqrt(C) / 2.0 ** LN_FRACTION_BITS, np.asarray(gain, np.float64)


def _layernorm_std(y: np.ndarray, eps_codes: int) -> tuple[np.ndarray, int]:
    """max(isqrt(sum y^2 + eps_codes), 1) per row (keepdims), and the rows whose sum reaches VARIANCE_LIMIT.
    int64 sums where C * max|y|^2 < 2^62. A row past that (codes near 2^31, as to_common_scale makes of
    16-bit per-channel residuals: |y| < 2^32) would wrap: its y = a 2^16 + b (0 <= b < 2^16, |a| <= 2^16)
    gives y^2 = a^2 2^32 + a b 2^17 + b^2, three int64 sums (each term < 2^33, exact for C < 2^30) joined
    in Python integers. Such a row's sum is >= max|y|^2 >= 2^62 / C > VARIANCE_LIMIT for C < 2^31: counted."""
    flat = y.reshape(-1, y.shape[-1])  # (rows, C)
    peak = np.abs(flat).max(axis=-1, initial=0).astype(np.float64)  # (rows,)
    wide = peak * peak * flat.shape[-1] >= 2.0 ** 62  # float64's rounding of the bound is far inside 2^62 -> 2^63
    squares = (np.where(wide[:, None], 0, flat) ** 2).sum(axis=-1)  # (rows,)
    overflow = int(np.count_nonzero(squares >= VARIANCE_LIMIT)) + int(np.count_nonzero(wide))
    std = np.maximum(isqrt(squares + eps_codes), 1)
    if wide.any():
        high, low = flat[wide] >> 16, flat[wide] & 0xFFFF  # (n, C): y = high 2^16 + low
        parts = [(high * high).sum(-1), (high * low).sum(-1), (low * low).sum(-1)]
        exact = [(int(a) << 32) + (int(ab) << 17) + int(b) + int(eps_codes) for a, ab, b in zip(*parts)]
        std[wide] = [max(math.isqrt(v), 1) for v in exact]
    return std.reshape(y.shape[:-1] + (1,)), overflow


def int_layernorm(q: np.ndarray, zero_point, scale, gain: np.ndarray, bias: np.ndarray,
                  eps: float, out_scale, out_zp, fmt: IntFormat) -> tuple[np.ndarray, int]:
    """LayerNorm over the last axis of codes q -> output codes; also the rows whose variance sum
    overflows a 32-bit accumulator (a known int8 trouble spot)."""
    if np.ndim(scale):  # per-channel input: to one scale in the LayerNorm unit's wide registers
        q, scale = to_common_scale(q, zero_point, scale)
        zero_point = 0
    x = np.asarray(q, np.int64) - zero_point
    C = x.shape[-1]
    eps_codes, unit, gain = layernorm_constants(C, eps, scale, gain)
    mean = (x.sum(axis=-1, keepdims=True) + C // 2) // C  # ties up (I-BERT's torch.round: to even)
    y = x - mean
    std, overflow = _layernorm_std(y, eps_codes)
    normalised = (y << LN_FRACTION_BITS) // std  # (y / std) * 2^16; the real value is that * sqrt(C)
    out = requantize(normalised, "dyadic", unit, gain, out_scale, out_zp, fmt, bias=np.asarray(bias, np.float64))
    return out, overflow


def int_rescale(q: np.ndarray, zero_point, scale, factor: float, out_scale, out_zp, fmt: IntFormat) -> np.ndarray:
    """Codes (scale, zero_point) times a real factor -> codes (out_scale, out_zp), dyadic."""
    return requantize(np.asarray(q, np.int64) - zero_point, "dyadic", scale, factor, out_scale, out_zp, fmt)


def int_add(qa, za, sa, qb, zb, sb, out_scale, out_zp, fmt: IntFormat) -> np.ndarray:
    """Residual add in integers: both operands rescaled to the output scale (dyadic, one multiplier per
    channel when the scales are per channel), then summed."""
    a = int_rescale(qa, za, sa, 1.0, out_scale, 0, WIDE)
    b = int_rescale(qb, zb, sb, 1.0, out_scale, 0, WIDE)
    return np.clip(a + b + out_zp, fmt.qmin, fmt.qmax)

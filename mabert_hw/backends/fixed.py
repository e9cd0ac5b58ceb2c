"""Fixed-point / integer simulation backend: the reference forward with every op quantized per a
QuantConfig, the GEMMs and requantizations bit-exact with real engines (mabert_hw.quant).

Data between ops are float32 arrays holding dequantized codes, f32(scale) * f32(q - zero_point), which
the next op re-quantizes exactly when it uses the same format (|q| < 2^22 survives the float32 round
trip). Inside an op codes stay in float arrays of exact integers (float32 on the onnxruntime / torch
paths): quantize_codes, exact_matmul on centred codes against weights quantized once per op and
cached, requantize_codes; int64 only where the integer engines (tflite, dyadic, integer-only
non-linearities) need it. Each op quantizes its activation operands with the ranges calibrated for "<op>:in0|in1" and
writes its result in the format calibrated for "<op>:out" (an op boundary is a requantization to the
consumer's format, the identity when the formats agree). An operand never calibrated is quantized with
its own current range (dynamic quantization); an output never calibrated is an error, as its format
must be known before the integer result is produced. With act_granularity "channel" (config.py) those formats
have one scale and zero point per channel (hidden unit): the residual stream's adds and LayerNorms, and
a linear's output, whose per-column requantization multiplier takes the per-channel output scale.

  linear / matmul   int GEMM (exact, or AVX2 u8s8 pair saturation), accumulator width with overflow
                    counting, requantization per `requant` mode; per-group weights combine the exact
                    per-group accumulators in float64 (no engine has one requant for them).
  embedding         table rows quantized per row (weight_bits), gathered, and written in the op's output
                    format (act_bits, or residual_bits: config.py) as every op's result is.
  nonlinear=float   softmax, GELU, LayerNorm, tanh, add, scale in float on dequantized values, result
                    quantized ("fake quant" at the op boundary).
  nonlinear=integer I-BERT i-softmax, i-GELU, i-LayerNorm (quant/intops.py), integer add and scale
                    with dyadic rescaling; ReLU is max(q, zero_point) in both modes. The pooler's tanh
                    stays float (not on the sentence-embedding path). These five ops run as fused
                    Numba kernels (quant/fused.py: quantize, op, dequantize in one pass, the same
                    codes); the NumPy code beside each (fixed_elementwise.py) is the reference, and runs where a kernel
                    declines (stochastic rounding, float64 data, bounds it cannot prove).
MA-BERT runs all in integers with nonlinear=integer: approximator linears and ReLU, the 0/1 mask (a
select on codes) and the folded PowerNorm affine (one per-channel dyadic requantization). Weights are
quantized as stored, once: the approximator linears take the first T columns of W_1 and rows of W_2
(model.py), and their scales and groups are those of the whole stored matrix, not of the T-token cut
(`truncate`), as a weight memory holds them whatever the sentence length.
Ops this backend does not quantize run as the reference and their kinds are listed in `float_ops`: the
PoWER selection (significance, top_tokens: sums and comparisons of the dequantized probabilities; the
gathers that follow move codes unchanged) and the FFF walk; `overflows` counts accumulator / variance
overflows per op.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import UserError
from ..quant.calibrate import MASKED, Calibration
from ..quant.config import GEMM_KINDS, OpSettings, QuantConfig
from ..quant.formats import (
    IntFormat,
    QParams,
    centred_peak,
    channel_range,
    choose_qparams,
    dequantize,
    operand_params,
    quantize,
    quantize_codes,
    weight_qparams,
)
from ..quant.intgemm import exact_matmul, int_matmul, int_matmul_u8s8_avx2, limit_accumulator
from ..quant.requant import requantize_codes
from .fixed_elementwise import FixedElementwise, engine_arithmetic
from .reference import ReferenceBackend


@dataclass
class FixedBackend(FixedElementwise, ReferenceBackend):
    config: QuantConfig = field(default_factory=QuantConfig)
    calibration: Calibration = field(default_factory=Calibration)
    overflows: dict = field(default_factory=dict)
    float_ops: set = field(default_factory=set)
    name = "fixed"

    def __post_init__(self):
        self._op = ("", "")
        self._qparams: dict = {}
        self._weights: dict = {}
        self._stored: dict = {}  # id(view) -> (weakref to the view, stored array, length, axis): truncate
        self._rng = np.random.default_rng(self.config.defaults.seed)

    # --- op names reach the implementations through _op ----------------------------------------
    def _enter(self, name, kind):
        self._op = (name, kind)
        return self.config.settings(name, kind)

    def embedding(self, name, table, ids):
        self._enter(name, "embedding")
        return super().embedding(name, table, ids)

    def add(self, name, a, b):
        self._enter(name, "add")
        return super().add(name, a, b)

    def linear(self, name, x, weight, bias=None):
        self._enter(name, "linear")
        return super().linear(name, x, weight, bias)

    def matmul(self, name, a, b, transpose_b=False):
        self._enter(name, "matmul")
        return super().matmul(name, a, b, transpose_b)

    def scale(self, name, x, factor):
        self._enter(name, "scale")
        return super().scale(name, x, factor)

    def softmax(self, name, x):
        self._enter(name, "softmax")
        return super().softmax(name, x)

    def layernorm(self, name, x, gain, bias, eps):
        self._enter(name, "layernorm")
        return super().layernorm(name, x, gain, bias, eps)

    def activation(self, name, x, kind):
        self._enter(name, kind)
        return super().activation(name, x, kind)

    def affine(self, name, x, scale, shift):
        self._enter(name, "affine")
        return super().affine(name, x, scale, shift)

    def truncate(self, x, length, axis):
        """The reference's view, remembered with the array it cuts, so that _weight quantizes the stored
        whole (the entry goes when the view does)."""
        view = super().truncate(x, length, axis)
        key = id(view)
        self._stored[key] = (weakref.ref(view, lambda _: self._stored.pop(key, None)), x, length, axis)
        return view

    def _significance(self, probs, token_mask):
        self.float_ops.add("significance")
        return super()._significance(probs, token_mask)

    def _top_tokens(self, significance, keep):
        self.float_ops.add("top_tokens")
        return super()._top_tokens(significance, keep)

    def _settings(self) -> OpSettings:
        return self.config.settings(*self._op)

    def _count(self, what: int) -> None:
        if what:
            self.overflows[self._op[0]] = self.overflows.get(self._op[0], 0) + what

    # --- formats -----------------------------------------------------------------------------------
    def _act_qparams(self, slot: str, s: OpSettings, x=None, nonneg: bool = False) -> QParams:
        bits = s.out_bits if slot == "out" and s.out_bits else s.act_bits
        # a GEMM's inputs keep one scale (config.py); per channel = per entry of the last axis
        per_channel = s.act_granularity == "channel" and (slot == "out" or self._op[1] not in GEMM_KINDS)
        key = (self._op[0], slot, bits, s.act_symmetric, s.calibrator, s.percentile, s.pow2, per_channel)
        if key in self._qparams:
            return self._qparams[key]
        tensor = f"{self._op[0]}:{slot}"
        estimate = self.calibration.channel_range if per_channel else self.calibration.range
        span = estimate(tensor, s.calibrator, self.calibration.tuning_format(tensor, bits, nonneg), s.act_symmetric,
                        s.percentile)
        dynamic = span is None
        if dynamic and x is None:  # an op's output format must be known before its result exists
            raise ValueError(f"{self._op[0]}:{slot} has no calibrated range: calibrate the model first "
                             "(quant.calibrate) and pass the Calibration to the FixedBackend")
        if dynamic and per_channel:
            span = channel_range(x)
        elif dynamic:
            data = np.asarray(x)[np.asarray(x) > MASKED]
            span = (float(data.min(initial=0.0)), float(data.max(initial=0.0)))
        lo, hi = (0.0, span[1]) if nonneg else span
        fmt = IntFormat(bits, signed=s.act_symmetric and bool(np.any(np.asarray(lo) < 0)))
        qp = choose_qparams(lo, hi, fmt, s.act_symmetric, s.pow2)
        if not dynamic:
            self._qparams[key] = qp
        return qp

    def _quantize_act(self, x, slot: str, s: OpSettings, nonneg: bool = False):
        """(codes as a float array of exact integers, their QParams), quantized as the requant engine does."""
        qp = self._act_qparams(slot, s, x, nonneg)
        float32, fma = engine_arithmetic(s)
        return quantize_codes(x, qp, s.rounding, self._rng, float32, fma), qp

    def _quantize_int(self, x, slot: str, s: OpSettings):
        """(int64 codes, QParams): the operands of the integer-only ops."""
        q, qp = self._quantize_act(x, slot, s)
        return q.astype(np.int64), qp

    def _weight(self, w, s: OpSettings, kind: str = "codes"):
        """Quantized weights, cached per op and format (quantized once, not on every call):
        kind "codes": (int64 codes, QParams); "gemm": (centred codes (K, N) as float32 for
        exact_matmul, max |centred code|); "values": the dequantized float32 array."""
        key = (self._op[0], kind, w.shape, s.weight_bits, s.weight_granularity, s.group_size,
               s.weight_symmetric, s.pow2, s.rounding)
        if key not in self._weights:
            if kind == "codes":
                self._weights[key] = self._weight_codes(w, s)
            else:
                q, qp = self._weight(w, s)
                if kind == "values":
                    self._weights[key] = dequantize(q, qp).astype(self.dtype)
                else:
                    centred = q - qp.zero_point  # (N, K)
                    self._weights[key] = (np.ascontiguousarray(centred.T, np.float32), int(np.abs(centred).max()))
        return self._weights[key]

    def _weight_codes(self, w, s: OpSettings):
        """(int64 codes, QParams) of a weight; of a truncated one (truncate), the stored array's quantized
        whole, cut the same way: the approximator's W_1 (h, n) cut to its first T columns keeps the scales
        and groups of its stored rows, so they do not depend on T (a group_size must divide n, not T)."""
        stored = self._stored.get(id(w))
        if stored is not None and stored[0]() is w:
            _, whole, length, axis = stored
            q, qp = self._weight(whole, s)
            cut = [slice(None)] * q.ndim
            cut[axis] = slice(0, length)
            if axis == 0 and np.ndim(qp.scale):  # rows dropped: per-row (channel, group) parameters with them
                qp = replace(qp, scale=qp.scale[:length], zero_point=qp.zero_point[:length])
            return q[tuple(cut)], qp
        if s.weight_granularity == "group" and w.shape[-1] % s.group_size:
            raise UserError(f"{self._op[0]}: group_size {s.group_size} does not divide its {w.shape[-1]} inputs")
        qp = weight_qparams(w, IntFormat(s.weight_bits), s.weight_granularity, s.weight_symmetric, s.pow2,
                            s.group_size)
        return quantize(w, qp, s.rounding, self._rng), qp

    def _values(self, q, qp: QParams):
        """Codes -> the float32 data passed between ops, f32(scale) * (f32(q) - f32(zero_point)). The next
        op re-quantizes them exactly: x / scale is within 2^-23 relative of q - zero_point, so rint returns
        it while the codes fit float32's significand (formats of <= RESIDUAL_MAX_BITS = 23 bits)."""
        if qp.group_size or np.ndim(qp.scale):
            return dequantize(q, qp).astype(self.dtype)
        zero_point, scale = self.dtype(qp.zero_point), self.dtype(qp.scale)
        return (np.asarray(q, self.dtype) - zero_point) * scale

    def _output(self, y, s: OpSettings, nonneg: bool = False):
        """Write a float result in the op's output format (quantize, then dequantize)."""
        q, qp = self._quantize_act(y, "out", s, nonneg)
        return self._values(q, qp)

    # --- GEMMs ---------------------------------------------------------------------------------------
    def _accumulate(self, acc, s: OpSettings):
        acc, overflowed = limit_accumulator(acc, s.acc_bits, s.overflow)
        self._count(overflowed)
        return acc

    def _linear(self, x, weight, bias):
        s = self._settings()
        if not s.quantize:
            return super()._linear(x, weight, bias)
        xq, xqp = self._quantize_act(x, "in0", s)
        wq, wqp = self._weight(weight, s)
        lead, K = xq.shape[:-1], xq.shape[-1]
        xq = xq.reshape(-1, K)  # (M, K)
        if s.weight_granularity == "group":
            return self._group_linear(xq.astype(np.int64), xqp, wq, wqp, bias, s).reshape(*lead, -1)
        if s.accumulate == "avx2_u8s8" and not xqp.fmt.signed and xqp.fmt.bits == 8 and wqp.fmt.bits == 8:
            acc = int_matmul_u8s8_avx2(xq, wq.T, int(xqp.zero_point), wqp.zero_point.reshape(-1))
        else:
            w_centred, w_bound = self._weight(weight, s, "gemm")  # (K, N)
            xc = xq - xq.dtype.type(xqp.zero_point)  # (M, K) centred codes, exact
            acc = exact_matmul(xc, w_centred, centred_peak(xqp) * w_bound)  # (M, N)
        acc = self._accumulate(acc, s)
        yqp = self._act_qparams("out", s)
        yq = requantize_codes(acc, s.requant, float(xqp.scale), wqp.scale.reshape(-1), *operand_params(yqp), yqp.fmt,
                              bias)
        return self._values(yq, yqp).reshape(*lead, -1)

    def _group_linear(self, xq, xqp, wq, wqp, bias, s):
        g = s.group_size
        y = np.zeros((xq.shape[0], wq.shape[0]))
        for j in range(-(-wq.shape[1] // g)):  # the last group is short where W_1 is cut to T columns
            columns = slice(j * g, (j + 1) * g)
            acc = self._accumulate(int_matmul(xq[:, columns], wq[:, columns].T, xqp.zero_point,
                                              wqp.zero_point[:, j, 0]), s)
            y += acc * wqp.scale[:, j, 0]
        y = y * float(xqp.scale) + (0.0 if bias is None else bias)
        return self._output(y, s)

    def _matmul(self, a, b, transpose_b):
        s = self._settings()
        if not s.quantize:
            return super()._matmul(a, b, transpose_b)
        aq, aqp = self._quantize_act(a, "in0", s)
        bq, bqp = self._quantize_act(b, "in1", s)
        if transpose_b:
            bq = np.swapaxes(bq, -1, -2)
        ac, bc = aq - aq.dtype.type(aqp.zero_point), bq - bq.dtype.type(bqp.zero_point)  # centred, exact
        acc = self._accumulate(exact_matmul(ac, bc, centred_peak(aqp) * centred_peak(bqp)), s)
        yqp = self._act_qparams("out", s)
        yq = requantize_codes(acc, s.requant, float(aqp.scale), float(bqp.scale), float(yqp.scale),
                              int(yqp.zero_point), yqp.fmt)
        return self._values(yq, yqp)

    def _embedding(self, table, ids):
        s = self._settings()
        if not s.quantize:
            return super()._embedding(table, ids)
        table = self._weight(table, replace(s, weight_granularity="channel"), "values")  # one scale per row
        return self._output(table[ids], s)  # (B, T, C) in the residual stream's format

    def _fff(self, x, w_in, b_in, w_out, depth, trees):
        self.float_ops.add("fff")
        return super()._fff(x, w_in, b_in, w_out, depth, trees)

"""The fixed backend's element-wise and non-linear ops (add, scale, softmax, LayerNorm, activations, the
folded PowerNorm affine), a mixin of FixedBackend (fixed.py, whose docstring states the semantics): each
runs in float on dequantized values with its result quantized (nonlinear = "float"), or in integers
(nonlinear = "integer": I-BERT's kernels in quant/intops.py, through the fused Numba kernels of
quant/fused.py where they apply). It uses FixedBackend's quantization helpers (_settings, _act_qparams,
_quantize_act, _quantize_int, _values, _output, _count) and calls the reference op through super()."""

from __future__ import annotations

import numpy as np

from ..quant import fused
from ..quant.calibrate import MASKED
from ..quant.config import OpSettings
from ..quant.formats import QParams, operand_params
from ..quant.intops import int_add, int_gelu, int_layernorm, int_rescale, int_softmax
from ..quant.requant import requantize

FLOAT_ENGINE_MODES = ("ort", "fbgemm", "qnnpack")  # engines that quantize activations in float32
TORCH_MODES = ("fbgemm", "qnnpack")  # ... of which torch's, with its fused multiply-add (formats.quantize_codes)


class FixedElementwise:
    """The element-wise and non-linear ops of FixedBackend (its only user: it supplies the helpers)."""

    def _integer(self, s: OpSettings) -> bool:
        return s.quantize and s.nonlinear == "integer"

    def _kernel_mode(self, s: OpSettings) -> tuple | None:
        """(float32, rounding) for the fused integer kernels (quant/fused.py), or None where they do not
        apply: other dtypes and roundings, and torch's fma quantize (kernels/introws.py says why); they
        may still decline a call (None), and the NumPy reference below them runs."""
        float32, fma = engine_arithmetic(s)
        if fma or not fused.fusable(self.dtype, s.rounding):
            return None
        return float32, s.rounding

    def _add(self, a, b):
        s = self._settings()
        if not s.quantize:
            return super()._add(a, b)
        if not self._integer(s):
            return self._output(a + b, s)
        mode = self._kernel_mode(s)
        if mode:
            b_full = np.broadcast_to(b, a.shape)
            out = fused.add(a, b_full, self._act_qparams("in0", s, a), self._act_qparams("in1", s, b_full),
                            self._act_qparams("out", s), *mode)
            if out is not None:
                return out
        (qa, pa), (qb, pb) = self._quantize_int(a, "in0", s), self._quantize_int(np.broadcast_to(b, a.shape), "in1", s)
        po = self._act_qparams("out", s)
        out = int_add(qa, *_zp_scale(pa), qb, *_zp_scale(pb), *operand_params(po), po.fmt)
        return self._values(out, po)

    def _scale(self, x, factor):
        s = self._settings()
        if not self._integer(s):
            return self._output(x * self.dtype(factor), s) if s.quantize else super()._scale(x, factor)
        mode = self._kernel_mode(s)
        if mode:
            out = fused.rescale(x, self._act_qparams("in0", s, x), factor, self._act_qparams("out", s), *mode)
            if out is not None:
                return out
        q, qp = self._quantize_int(x, "in0", s)
        po = self._act_qparams("out", s)
        out = int_rescale(q, int(qp.zero_point), float(qp.scale), factor, float(po.scale), int(po.zero_point), po.fmt)
        return self._values(out, po)

    def _softmax(self, x):
        s = self._settings()
        if not self._integer(s):
            return self._output(super()._softmax(x), s, nonneg=True) if s.quantize else super()._softmax(x)
        out_bits = s.out_bits or s.act_bits
        mode = self._kernel_mode(s)
        if mode:
            out = fused.softmax(x, self._act_qparams("in0", s, x), out_bits, *mode)  # masked keys: the same range
            if out is not None:
                return out
        valid = x > MASKED
        q, qp = self._quantize_int(np.where(valid, x, 0.0), "in0", s)
        codes = int_softmax(q - qp.zero_point, float(qp.scale), out_bits, valid)
        return (codes * 2.0 ** -out_bits).astype(self.dtype)

    def _layernorm(self, x, gain, bias, eps):
        s = self._settings()
        if not self._integer(s):
            out = super()._layernorm(x, gain, bias, eps)
            return self._output(out, s) if s.quantize else out
        mode = self._kernel_mode(s)
        if mode:
            done = fused.layernorm(x, self._act_qparams("in0", s, x), gain, bias, eps, self._act_qparams("out", s),
                                   *mode)
            if done is not None:
                self._count(done[1])
                return done[0]
        q, qp = self._quantize_int(x, "in0", s)
        po = self._act_qparams("out", s)
        out, overflowed = int_layernorm(q, *_zp_scale(qp), gain, bias, eps, *operand_params(po), po.fmt)
        self._count(overflowed)
        return self._values(out, po)

    def _activation(self, x, kind):
        s = self._settings()
        if not s.quantize:
            return super()._activation(x, kind)
        if kind == "relu":
            q, qp = self._quantize_act(x, "in0", s)
            return self._values(np.maximum(q, q.dtype.type(qp.zero_point)), qp)
        if kind == "gelu" and self._integer(s):
            mode = self._kernel_mode(s)
            if mode:
                out = fused.gelu(x, self._act_qparams("in0", s, x), self._act_qparams("out", s), *mode)
                if out is not None:
                    return out
            q, qp = self._quantize_int(x, "in0", s)
            codes, code_scale = int_gelu(q - qp.zero_point, float(qp.scale))
            po = self._act_qparams("out", s)
            out = requantize(codes, "dyadic", code_scale, 1.0, float(po.scale), int(po.zero_point), po.fmt)
            return self._values(out, po)
        return self._output(super()._activation(x, kind), s)

    def _affine(self, x, scale, shift):
        s = self._settings()
        if not s.quantize:
            return super()._affine(x, scale, shift)
        if not self._integer(s):
            return self._output(super()._affine(x, scale, shift), s)
        q, qp = self._quantize_int(x, "in0", s)  # per channel y = scale * x + shift, one dyadic requant
        po = self._act_qparams("out", s)
        out = requantize(q - qp.zero_point, "dyadic", float(qp.scale), np.asarray(scale, np.float64), float(po.scale),
                         int(po.zero_point), po.fmt, bias=np.asarray(shift, np.float64))
        return self._values(out, po)


def engine_arithmetic(s: OpSettings) -> tuple[bool, bool]:
    """(float32, fma) of formats.quantize_codes for the activations: the requant engine's quantizer."""
    return s.requant in FLOAT_ENGINE_MODES, s.requant in TORCH_MODES


def _zp_scale(qp: QParams) -> tuple:
    """(zero_point, scale): the operand order of int_add and int_layernorm."""
    return operand_params(qp)[::-1]

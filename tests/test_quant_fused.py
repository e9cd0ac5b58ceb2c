"""Fused integer kernels (quant/fused.py, kernels/introws.py) vs the NumPy reference chain, bit for bit.

The reference is what the fixed backend ran before the kernels and still runs where they decline:
formats.quantize -> intops.int_* (requant "dyadic") -> FixedBackend._values. Inputs cover each format's
whole code range and beyond it (saturation), rounding ties, +-0, huge values, masked scores; formats of
2..16 bits (24 for the residual add), per-tensor and per-channel scales, every deterministic rounding
mode and both quantizer divisions. Outputs are compared as float32 bit patterns, which map one to one
to codes; the tolerance is INTEGER_KERNEL_MISMATCHES (0).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mabert_hw.backends import make_backend
from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.inputs import random_batch
from mabert_hw.kernels import introws
from mabert_hw.model import forward
from mabert_hw.quant import config as qconfig
from mabert_hw.quant import fused
from mabert_hw.quant.calibrate import MASKED, calibrate
from mabert_hw.quant.formats import IntFormat, QParams, choose_qparams, quantize
from mabert_hw.quant.intops import (
    gelu_constants,
    int_add,
    int_gelu,
    int_layernorm,
    int_rescale,
    int_softmax,
    isqrt,
)
from mabert_hw.quant.requant import dyadic_drop, requantize, shift_round_half_even
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .tolerances import INTEGER_KERNEL_MISMATCHES

C = 24  # channels of the test tensors
ROWS = 40
MODES = [(divide32, rounding) for divide32 in (True, False) for rounding in fused.ROUNDINGS]
MASK = np.finfo(np.float32).min  # the additive mask bias (base.additive_mask_bias)
# float32-extreme inputs divide (and add to the mask bias) to +-inf on the way to saturated codes
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def _format(rng, bits: int, per_channel: bool = False, spread: float = 1e3) -> QParams:
    """A calibrated-like format: ranges of a few units (per channel: spread over a factor `spread`),
    asymmetric unsigned or (a third of them) symmetric signed, as FixedBackend._act_qparams makes them;
    a third with power-of-two scales, whose dyadic multipliers are powers of two: exact rounding ties."""
    symmetric, pow2 = (bool(v) for v in rng.random(2) < 0.3)
    shape = (C,) if per_channel else ()
    size = rng.uniform(0.5, 8.0, shape) * (np.exp(rng.uniform(0, math.log(spread), shape)) if per_channel else 1.0)
    lo = -size * rng.uniform(0.0, 1.0, shape)
    return choose_qparams(lo, size, IntFormat(bits, signed=symmetric), symmetric, pow2)


def _activations(rng, qp: QParams, rows: int = ROWS) -> np.ndarray:
    """float32 (rows, C) over the codes [qmin - 3, qmax + 3] (beyond saturates), a third of them exact
    rounding ties, plus 0, -0, huge and float32-extreme values."""
    codes = rng.integers(qp.fmt.qmin - 3, qp.fmt.qmax + 4, (rows, C))
    fraction = np.where(rng.random((rows, C)) < 0.3, 0.5 * rng.choice([-1, 1], (rows, C)), rng.uniform(-0.5, 0.5, (rows, C)))
    x = (np.asarray(qp.scale) * (codes - np.asarray(qp.zero_point) + fraction)).astype(np.float32)
    extremes = np.array([0.0, -0.0, 1e30, -1e30, np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32)
    x.flat[rng.choice(x.size, 4 * len(extremes), replace=False)] = np.tile(extremes, 4)
    return x


def _scale_zp(qp: QParams) -> tuple:
    """(scale, zero_point) as the fixed backend passes them to intops: scalars, or per-channel arrays."""
    if np.ndim(qp.scale):
        return qp.scale, qp.zero_point
    return float(qp.scale), int(qp.zero_point)


def _values(q, qp):
    return FixedBackend()._values(q, qp)


def _mismatches(got, want) -> int:
    assert got is not None, "the kernel declined a case it must take"
    return int(np.count_nonzero(got.view(np.uint32) != np.asarray(want, np.float32).view(np.uint32)))


@pytest.mark.parametrize("divide32,rounding", MODES)
def test_rescale_kernel_equals_reference(divide32, rounding):
    rng = np.random.default_rng(10)
    mismatches = 0
    for bits in (2, 4, 8, 12, 16):
        for factor in (1 / math.sqrt(32), 0.125, 3.0):
            qp, out = _format(rng, bits), _format(rng, bits)
            x = _activations(rng, qp)
            q = quantize(x, qp, rounding, float32=divide32)
            want = _values(int_rescale(q, int(qp.zero_point), float(qp.scale), factor, float(out.scale),
                                       int(out.zero_point), out.fmt), out)
            mismatches += _mismatches(fused.rescale(x, qp, factor, out, divide32, rounding), want)
    assert mismatches == INTEGER_KERNEL_MISMATCHES


@pytest.mark.parametrize("divide32,rounding", MODES)
def test_add_kernel_equals_reference(divide32, rounding):
    rng = np.random.default_rng(11)
    mismatches = 0
    for bits in (2, 4, 8, 16, 24):
        for channels in [(False, False, False), (True, True, True), (True, False, True), (False, True, False)]:
            qa, qb, out = (_format(rng, bits, per_channel) for per_channel in channels)
            a, b = _activations(rng, qa), _activations(rng, qb)
            want = _values(int_add(quantize(a, qa, rounding, float32=divide32), *_scale_zp(qa)[::-1],
                                   quantize(b, qb, rounding, float32=divide32), *_scale_zp(qb)[::-1],
                                   *_scale_zp(out), out.fmt), out)
            mismatches += _mismatches(fused.add(a, b, qa, qb, out, divide32, rounding), want)
    assert mismatches == INTEGER_KERNEL_MISMATCHES


@pytest.mark.parametrize("divide32,rounding", MODES)
def test_softmax_kernel_equals_reference(divide32, rounding):
    rng = np.random.default_rng(12)
    mismatches = 0
    for bits in (4, 6, 8, 12, 16):
        for out_bits in (4, 8, 16):
            qp = _format(rng, bits)
            x = _activations(rng, qp)
            masked = rng.random(x.shape) < 0.3
            masked[0], masked[1, 1:] = True, True  # a fully masked row; a row of one key
            x = np.where(masked, MASK + x, x).astype(np.float32)  # as mask_scores adds the bias
            valid = x > MASKED
            q = quantize(np.where(valid, x, 0.0), qp, rounding, float32=divide32)
            want = int_softmax(q - qp.zero_point, float(qp.scale), out_bits, valid) * 2.0 ** -out_bits
            mismatches += _mismatches(fused.softmax(x, qp, out_bits, divide32, rounding), want)
    assert mismatches == INTEGER_KERNEL_MISMATCHES


@pytest.mark.parametrize("divide32,rounding", MODES)
def test_gelu_kernel_equals_reference(divide32, rounding):
    rng = np.random.default_rng(13)
    mismatches = 0
    for bits in (2, 4, 8, 12, 16):
        qp, out = _format(rng, bits), _format(rng, bits)
        x = _activations(rng, qp)
        codes, code_scale = int_gelu(quantize(x, qp, rounding, float32=divide32) - qp.zero_point, float(qp.scale))
        want = _values(requantize(codes, "dyadic", code_scale, 1.0, float(out.scale), int(out.zero_point), out.fmt),
                       out)
        mismatches += _mismatches(fused.gelu(x, qp, out, divide32, rounding), want)
    assert mismatches == INTEGER_KERNEL_MISMATCHES


def test_gelu_sixteen_bit_codes_need_the_measured_peak():
    """At 16 bits the i-GELU codes are wide enough that the reference drops multiplier bits; the kernel
    path that measures the peak first (gelu_peak) is the one the tests above cross."""
    rng = np.random.default_rng(13)
    qp = _format(rng, 16)
    b, c, _ = gelu_constants(float(qp.scale))
    assert dyadic_drop((qp.fmt.qmax - qp.fmt.qmin) * (b * b + 2 * abs(c))) > 0


@pytest.mark.parametrize("divide32,rounding", MODES)
def test_layernorm_kernel_equals_reference(divide32, rounding):
    rng = np.random.default_rng(14)
    mismatches = 0
    for bits in (4, 8, 12, 16):
        for per_channel_in, per_channel_out in [(False, False), (True, False), (True, True), (False, True)]:
            # scale ratios past 2^COMMON_SCALE_BITS; at 16 bits MiniLM's ~2^8 (wider ones decline: the variance
            # sum of codes grown by 16 bits could wrap, test_kernels_decline_what_they_cannot_reproduce)
            qp = _format(rng, bits, per_channel_in, spread=1e6 if bits <= 12 else 300)
            out = _format(rng, 8, per_channel_out)
            x = _activations(rng, qp)
            x[3] = x[3, 0]  # a constant row: variance 0
            gain, bias = rng.normal(1.0, 0.5, C), rng.normal(0.0, 0.5, C)
            gain[:3], bias[:2] = (0.0, 1e-32, -2.0), 0.0  # dead channels (gain 0, tiny: shifts ~145), a negative gain
            for eps in (1e-12, 1e-5):
                want, want_overflows = int_layernorm(quantize(x, qp, rounding, float32=divide32), *_scale_zp(qp)[::-1],
                                                     gain, bias, eps, *_scale_zp(out), out.fmt)
                got = fused.layernorm(x, qp, gain, bias, eps, out, divide32, rounding)
                assert got is not None and got[1] == want_overflows
                mismatches += _mismatches(got[0], _values(want, out))
    assert mismatches == INTEGER_KERNEL_MISMATCHES


def test_layernorm_overflow_rows_counted_alike():
    rng = np.random.default_rng(15)
    qp, out = _format(rng, 16), _format(rng, 8)
    x = _activations(rng, qp)
    want, overflows = int_layernorm(quantize(x, qp), *_scale_zp(qp)[::-1], np.ones(C), np.zeros(C), 1e-12,
                                    *_scale_zp(out), out.fmt)
    got, got_overflows = fused.layernorm(x, qp, np.ones(C), np.zeros(C), 1e-12, out, True, "half_even")
    assert overflows > 0 and got_overflows == overflows
    assert _mismatches(got, _values(want, out)) == INTEGER_KERNEL_MISMATCHES


def test_kernels_decline_what_they_cannot_reproduce():
    rng = np.random.default_rng(16)
    wide = _format(rng, 24, per_channel=True, spread=1e6)  # per-channel 24-bit codes: the variance sum can wrap
    assert fused.layernorm(_activations(rng, wide), wide, np.ones(C), np.zeros(C), 1e-12, _format(rng, 8), True,
                           "half_even") is None
    coarse = choose_qparams(-1e6, 1e6, IntFormat(2), True)  # ln2 below one unit of the exp split
    assert fused.softmax(_activations(rng, coarse), coarse, 8, True, "half_even") is None
    assert not fused.fusable(np.float32, "stochastic") and not fused.fusable(np.float64, "half_even")


def test_dyadic_shift_and_isqrt_follow_numpy_for_every_count_and_sign():
    """The kernels' scalar helpers: the rounding shift for any count (NumPy gives counts outside 0..63 a
    meaning; C does not) and sign, and the Newton square root from 0 to 2^63."""
    rng = np.random.default_rng(17)
    v = np.concatenate([rng.integers(-(1 << 30), 1 << 30, 3000), np.arange(-40, 41), [-(1 << 30), (1 << 30) - 1]])
    m = np.where(rng.random(v.size) < 0.5, 1, rng.integers(-(1 << 31), 1 << 31, v.size))  # |v * m| < 2^61
    e = rng.integers(-3, 150, v.size)
    e[:800] = rng.integers(1, 8, 800)  # small shifts: many exact ties
    want = shift_round_half_even(v * m, e)
    got = np.array([introws._dyadic(np.int64(a), np.int64(b), np.int64(c)) for a, b, c in zip(v, m, e)])
    assert np.array_equal(got, want)
    n = np.concatenate([np.arange(-5, 3000), rng.integers(0, 1 << 62, 3000), [(1 << 63) - 1]])
    assert np.array_equal(np.array([introws._isqrt(np.int64(k)) for k in n]), isqrt(n))


INTEGER_CONFIGS = [
    {"nonlinear": "integer"},
    {"nonlinear": "integer", "residual_granularity": "channel",
     "rule": [{"name": "encoder.layer.*.output.dense", "act_granularity": "channel"}]},
    {"nonlinear": "integer", "act_bits": 16, "requant": "dyadic"},
    {"nonlinear": "integer", "residual_bits": 16, "rounding": "half_away", "pow2": True},
    {"nonlinear": "integer", "act_bits": 4, "rounding": "floor", "requant": "tflite"},
    {"nonlinear": "integer", "rounding": "stochastic"},  # no kernels: both runs are the reference
]


FUSED_OPS = ("rescale", "add", "softmax", "gelu", "layernorm")


def _recording(kernel, name, ran: set):
    def call(*args):
        out = kernel(*args)
        if out is not None:
            ran.add(name)
        return out

    return call


@pytest.mark.parametrize("config", INTEGER_CONFIGS)
@pytest.mark.parametrize("spec", TINY_SPECS, ids=lambda s: s.name)
def test_fixed_backend_with_kernels_equals_its_reference_path(spec, config, monkeypatch):
    weights = random_weights(spec, 7)
    batch = random_batch(spec, 3, 12, seed=7)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    calibration = calibrate(run)
    cfg = qconfig.from_dict(config)
    fast = make_backend("fixed", config=cfg, calibration=calibration)
    ran = set()
    for name in FUSED_OPS:  # record which kernels ran (did not decline)
        monkeypatch.setattr(fused, name, _recording(getattr(fused, name), name, ran))
    got = run(fast).hidden_states
    assert ran == (set() if config.get("rounding") == "stochastic" else set(FUSED_OPS))
    monkeypatch.setattr(fused, "fusable", lambda dtype, rounding: False)
    slow = make_backend("fixed", config=cfg, calibration=calibration)
    want = run(slow).hidden_states
    assert sum(_mismatches(g, w) for g, w in zip(got, want)) == INTEGER_KERNEL_MISMATCHES
    assert fast.overflows == slow.overflows

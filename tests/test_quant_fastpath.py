"""The fixed backend's fast paths equal the engine-verified kernels bit for bit (issue 5).

test_quant_kernels.py checks int_matmul + requantize against onnxruntime and torch; here the
float-array paths the backend runs (exact_matmul on centred float codes, requantize_codes on float
accumulators, quantize_codes, cached weights) are checked against those kernels with 0 mismatches,
and the branch-free half-even shift against exact rational rounding.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import Calibration, TensorStats
from mabert_hw.quant.formats import IntFormat, choose_qparams, quantize, quantize_codes, weight_qparams
from mabert_hw.quant.intgemm import FLOAT32_EXACT, FLOAT64_EXACT, exact_matmul, int_matmul, limit_accumulator
from mabert_hw.quant.requant import requantize, requantize_codes, shift_round_half_even
from .tolerances import INTEGER_KERNEL_MISMATCHES


@pytest.mark.parametrize("bits_a,bits_b,K", [(8, 8, 300), (9, 8, 1536), (16, 8, 700), (16, 16, 40), (31, 31, 8)])
def test_exact_matmul_every_branch_equals_int64(bits_a, bits_b, K):
    """(8, 8, 300): one float32 pass; (9, 8, 1536): float32 blocks; (16, 8, 700): float32 blocks;
    (16, 16, 40): one float64 pass; (31, 31, 8): int64 (K * p > 2^53)."""
    rng = np.random.default_rng(bits_a * 100 + K)
    a = rng.integers(-(1 << (bits_a - 1)), 1 << (bits_a - 1), (2, 16, K))
    b = rng.integers(-(1 << (bits_b - 1)), 1 << (bits_b - 1), (K, 24))
    p = (1 << (bits_a - 1)) * (1 << (bits_b - 1))
    got = exact_matmul(a.astype(np.float64), b.astype(np.float64), p)
    if K * p <= FLOAT32_EXACT:
        assert got.dtype == np.float32
    assert K * p > FLOAT64_EXACT or got.dtype.kind == "f"
    assert np.array_equal(np.asarray(got, np.int64), a @ b)


def test_float_accumulator_requant_equals_int64_requant():
    rng = np.random.default_rng(21)
    fmt = IntFormat(8, False)
    for mode in ("ort", "fbgemm", "qnnpack", "tflite", "tflite_single", "dyadic"):
        for big in (False, True):  # float32 accumulators (< 2^24) and float64 ones beyond 2^24
            acc = rng.integers(-(1 << (30 if big else 23)), 1 << (30 if big else 23), (64, 40))
            x_s, y_s = float(np.float32(rng.uniform(1e-3, 0.1))), float(np.float32(rng.uniform(1e-2, 1.0)))
            w_s = rng.uniform(1e-5, 1e-3, 40)
            bias = rng.normal(0, 0.5, 40)
            acc_f = acc.astype(np.float64 if big else np.float32)
            for b in (None, bias):
                want = requantize(acc, mode, x_s, w_s, y_s, 17, fmt, b)
                got = requantize_codes(acc_f, mode, x_s, w_s, y_s, 17, fmt, b)
                assert int((np.asarray(got, np.int64) != want).sum()) == INTEGER_KERNEL_MISMATCHES, mode


def test_float_codes_and_accumulator_limit_equal_integer_ones():
    rng = np.random.default_rng(22)
    x = rng.normal(0, 3, (50, 70)).astype(np.float32)
    for bits, symmetric in ((8, False), (8, True), (16, False), (4, True)):
        qp = choose_qparams(x.min() * 0.7, x.max() * 0.7, IntFormat(bits, symmetric), symmetric)
        for float32 in (False, True):
            q = quantize_codes(x, qp, float32=float32)
            want = np.clip(np.rint(x.astype(np.float32 if float32 else np.float64) / qp.scale.astype(
                np.float32 if float32 else np.float64)).astype(np.int64) + qp.zero_point, qp.fmt.qmin, qp.fmt.qmax)
            assert np.array_equal(q.astype(np.int64), want)
    acc = rng.integers(-(1 << 20), 1 << 20, (30, 30))
    for overflow in ("saturate", "wrap"):
        want, n_want = limit_accumulator(acc, 18, overflow)
        got, n_got = limit_accumulator(acc.astype(np.float64), 18, overflow)
        assert n_got == n_want > 0 and np.array_equal(got.astype(np.int64), want)


def test_shift_round_half_even_is_exact():
    rng = np.random.default_rng(23)
    v = np.concatenate([rng.integers(-(1 << 61), 1 << 61, 3000), np.arange(-70, 71)])
    e = rng.integers(1, 40, v.size)
    expected = [round(Fraction(int(a), 1 << int(k))) for a, k in zip(v, e)]  # Python round: half to even
    assert shift_round_half_even(v, e).tolist() == expected


@pytest.mark.parametrize("requant,out_bits,weight_bits,act_bits,acc_bits", [
    ("ort", 0, 8, 8, 32), ("fbgemm", 0, 8, 8, 32), ("tflite", 0, 8, 8, 32), ("dyadic", 0, 8, 8, 32),
    ("ort", 16, 8, 8, 32), ("ort", 0, 4, 4, 32), ("tflite", 0, 12, 12, 32), ("fbgemm", 0, 16, 8, 64), ("ort", 0, 12, 16, 64),
    ("dyadic", 0, 16, 16, 64), ("ort", 0, 4, 16, 64), ("dyadic", 0, 16, 4, 64), ("ort", 0, 16, 16, 32)])
def test_backend_linear_equals_kernel_chain(requant, out_bits, weight_bits, act_bits, acc_bits):
    """FixedBackend.linear (cached float weights, exact_matmul, float codes) == quantize ->
    int_matmul -> limit_accumulator -> requantize -> dequantize with the engine-verified kernels, code for
    code, at 4, 8, 12 and 16 bits of weights and of activations; out_bits = 16 changes the result's format
    only (8-bit input codes, 16-bit output codes). W16A16 on a 32-bit accumulator saturates (counted)."""
    rng = np.random.default_rng(24)
    x = rng.normal(0, 1.5, (3, 20, 96)).astype(np.float32)
    w = rng.normal(0, 0.2, (48, 96)).astype(np.float32)
    bias = rng.normal(0, 0.1, 48).astype(np.float32)
    calibration = Calibration({"fc:in0": TensorStats(float(x.min()), float(x.max())),
                               "fc:out": TensorStats(-4.0, 5.0)})
    settings = {"requant": requant, "weight_granularity": "channel", "out_bits": out_bits,
                "weight_bits": weight_bits, "act_bits": act_bits, "acc_bits": acc_bits}
    backend = FixedBackend(config=qconfig.from_dict(settings), calibration=calibration)
    got = backend.linear("fc", x, w, bias)
    overflows = sum(backend.overflows.values())
    got_again = backend.linear("fc", x, w, bias)  # second call: weights come from the cache

    float32 = requant in ("ort", "fbgemm")
    xqp = choose_qparams(x.min(), x.max(), IntFormat(act_bits, False), False)
    yqp = choose_qparams(-4.0, 5.0, IntFormat(out_bits or act_bits, False), False)
    wqp = weight_qparams(w, IntFormat(weight_bits), "channel")
    xq, wq = quantize(x, xqp, float32=float32).reshape(-1, 96), quantize(w, wqp)
    acc, saturated = limit_accumulator(int_matmul(xq, wq.T, xqp.zero_point, wqp.zero_point.reshape(-1)), acc_bits)
    assert overflows == saturated
    if (weight_bits, act_bits, acc_bits) == (16, 16, 32):
        assert saturated > 0  # the case that exercises saturation
    yq = requantize(acc, requant, float(xqp.scale), wqp.scale.reshape(-1), float(yqp.scale),
                    int(yqp.zero_point), yqp.fmt, bias)
    codes = np.rint(got / np.float32(yqp.scale)).astype(np.int64).reshape(-1, 48) + int(yqp.zero_point)
    assert int((codes != yq).sum()) == INTEGER_KERNEL_MISMATCHES
    assert np.array_equal(got, got_again)
    values = (yq - int(yqp.zero_point)).astype(np.float32) * np.float32(yqp.scale)  # the documented data format
    assert np.array_equal(got.reshape(-1, 48), values)

"""Codes where rounding decides: the fbgemm / qnnpack requantization equals torch.quantize_per_tensor's
activation codes (ties within a float32 step, double rounding), half-away-from-zero equals C round() in the
NumPy path and the fused kernels, and an ort requantization of an accumulator wider than 32 bits is exact.

Checked against what does not share the code under test: torch.quantize_per_tensor and Python's decimal
rounding."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest

from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.quant import config as qconfig
from mabert_hw.quant import fused
from mabert_hw.quant.formats import IntFormat, QParams, quantize, round_values


# fbgemm / qnnpack: torch.quantize_per_tensor's activation codes

def _activation_cases(rng, trials: int):
    """(x float32, scale, zero point, signed) cases: random values, and values whose x / scale + zero point
    lies within a float32 step or two of a half-integer (where the formulas part), at lengths that take
    torch's vector and scalar loops."""
    for trial in range(trials):
        size = (1, 7, 9, 33, 4000)[trial % 5]
        signed = bool(trial % 2)
        scale = float(np.float32(rng.uniform(0.005, 0.3)))
        zero_point = int(rng.integers(-128, 128) if signed else rng.integers(0, 256))
        if trial % 4 == 1:
            zero_point = 0  # symmetric
        inverse = np.float64(np.float32(1) / np.float32(scale))
        ties = ((rng.integers(-120, 120, size) + 0.5) / inverse).astype(np.float32)
        ties = np.nextafter(ties, np.where(rng.random(size) < 0.5, np.inf, -np.inf)).astype(np.float32)
        x = rng.normal(0, rng.uniform(0.3, 5), size).astype(np.float32)
        yield np.where(rng.random(size) < 0.5, x, ties), scale, zero_point, signed


TORCH_DEPRECATION = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


# (x, scale, zero point, torch's code): an x where onnxruntime's formula gives 91, and an x whose
# x / scale + zero point is within a float64 step above the midpoint of the float32 values 148.5 and 148.5 +
# 2^-16: rounding the float64 sum to float32 rounds twice (to the midpoint, then to 148.5: code 148), the
# fused multiply-add once (to 148.5 + 2^-16: code 149)
TORCH_EXAMPLES = [(-9.6474027633667, 0.1707504838705063, 148, 92),
                  (0.021694036200642586, 0.043387409299612045, 148, 149)]


@TORCH_DEPRECATION
@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_torch_engine_activation_codes_equal_torch_quantize_per_tensor(engine):
    torch = pytest.importorskip("torch")
    torch.backends.quantized.engine = engine
    backend = FixedBackend(config=qconfig.from_dict({"requant": engine}))
    backend._op = ("probe", "add")  # dynamic ranges: the backend's own qparams for each tensor
    settings = backend._settings()
    total = mismatches = 0
    for x, scale, zero_point, signed in _activation_cases(np.random.default_rng(11), 120):
        fmt = IntFormat(8, signed)
        qp = QParams(np.array(scale), np.array(zero_point), fmt)
        want = torch.quantize_per_tensor(torch.from_numpy(x), scale, zero_point,
                                         torch.qint8 if signed else torch.quint8).int_repr().numpy()
        mismatches += int((quantize(x, qp, float32=True, fma=True) != want).sum())
        total += x.size
        codes, dynamic = backend._quantize_act(x, "in0", settings)  # the backend's path, its own format
        want = torch.quantize_per_tensor(torch.from_numpy(x), float(dynamic.scale), int(dynamic.zero_point),
                                         torch.qint8 if dynamic.fmt.signed else torch.quint8).int_repr().numpy()
        mismatches += int((codes != want).sum())
    assert total > 90_000 and mismatches == 0
    for x, scale, zero_point, code in TORCH_EXAMPLES:
        qp = QParams(np.array(scale), np.array(zero_point), IntFormat(8, False))
        want = torch.quantize_per_tensor(torch.tensor([x] * 9), scale, zero_point, torch.quint8).int_repr().numpy()
        assert want.tolist() == [code] * 9
        assert quantize(np.float32([x]), qp, float32=True, fma=True).tolist() == [code]


# half away from zero as C round()

def _c_round(v: float) -> float:
    """C round() by exact decimal arithmetic: ROUND_HALF_UP is half away from zero."""
    return math.copysign(float(Decimal(v).quantize(Decimal(1), rounding=ROUND_HALF_UP)), v)


def test_half_away_rounding_matches_c_round():
    below_half = np.nextafter(0.5, 0.0)  # 0.49999999999999994: floor(|x| + 0.5) gave 1
    rng = np.random.default_rng(8)
    halves = rng.integers(-1000, 1000, 2000) + 0.5
    x = np.concatenate([[below_half, -below_half, 0.5, -0.5, 1.5, -2.5, 2.0 ** 52 + 1, -(2.0 ** 53), 0.0],
                        halves, np.nextafter(halves, np.inf), np.nextafter(halves, -np.inf),
                        rng.normal(0, 100, 2000), np.nextafter(np.arange(-50, 50) + 0.5, 0.0)])
    assert round_values(x, "half_away").tolist() == [_c_round(v) for v in x]
    unit = QParams(np.array(1.0), np.array(0), IntFormat(8))
    assert quantize(np.array([below_half, -below_half]), unit, "half_away").tolist() == [0, 0]


def test_half_away_rounding_in_the_fused_kernels():
    """x / scale = 0.49999999999999994 exactly in float64 (x float32): code 0, as C round(); the kernel
    used to round it to 1."""
    below_half = np.nextafter(0.5, 0.0)
    x = next(np.float32(k) for k in range(1, 1000) if np.float64(k) / (k / below_half) == below_half)
    qp = QParams(np.array(float(x) / below_half), np.array(0), IntFormat(8))
    y = fused.rescale(np.full((2, 4), x, np.float32), qp, 1.0, qp, False, "half_away")
    assert np.float64(x) / qp.scale == below_half and (y == 0).all()
    assert quantize(np.float32([x]), qp, "half_away").tolist() == [0]


def test_ort_requant_of_an_accumulator_wider_than_32_bits_is_kept_exact():
    # acc_bits > 32 with requant = "ort" stays allowed: a wider accumulator requantized in float32 (a design
    # point, not onnxruntime itself) is well defined, unlike tflite's int64 products that wrap past 2^32
    from mabert_hw.quant import config as qconfig
    from mabert_hw.quant.formats import IntFormat
    from mabert_hw.quant.requant import requantize

    assert qconfig.from_dict({"acc_bits": 40}).settings("l", "linear").acc_bits == 40
    acc = np.array([[2 ** 32 + 12345, -(2 ** 32) - 7, 1000]], np.int64)
    y_scale = 2 ** 32 * 1e-5 / 100  # acc * x_s * w_s / y_s = 100 * acc / 2^32
    got = requantize(acc, "ort", 0.01, np.full(3, 1e-3), y_scale, 0, IntFormat(16, True))
    assert got.tolist() == [[100, -100, 0]]


def test_dyadic_fit_rounds_the_dropped_bits_half_away_from_zero():
    """m' = round-half-away(m / 2^drop), from exact Decimal arithmetic, for M and -M alike: on a tie (the
    dropped bits exactly half) -M gives -m', as I-BERT's ROUND_HALF_UP does with the mantissa itself."""
    from mabert_hw.quant.requant import dyadic_drop, dyadic_fit, dyadic_multiplier

    peak = 2 ** 32  # 33 bits: dyadic_drop drops 33 + 31 - 62 = 2 low bits of m
    drop = dyadic_drop(peak)
    assert drop == 2
    ties = [(2 ** 30 + 2) / 2 ** 31 * 2.0 ** -3, (2 ** 30 + 6) / 2 ** 31 * 2.0 ** -7]  # m = ...10 in binary
    others = list(np.random.default_rng(3).uniform(1e-4, 1.0, 40))
    for M in ties + others:
        for signed in (M, -M):
            m, e = dyadic_multiplier(signed)
            fitted, fitted_e = dyadic_fit(signed, peak)
            expected = int((Decimal(int(m)) / 2 ** drop).quantize(Decimal(1), rounding=ROUND_HALF_UP))
            assert (int(fitted), int(fitted_e)) == (expected, int(e) - drop)
    assert [int(dyadic_multiplier(M)[0]) % 4 for M in ties] == [2, 2]  # the ties are ties

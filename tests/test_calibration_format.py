"""The mse and entropy calibrators tune a range for the format the fixed backend then quantizes with.
A non-negative tensor (softmax probabilities, ReLU outputs, anything calibrated at min >= 0) is quantized
unsigned: with act_symmetric the scale is alpha * hi / 255, not the signed alpha * hi / 127 the
calibrators assumed before, so mse picked the alpha best for a grid never used (its MSE 43 % above the
grid's best on softmax-like data) and entropy binned |x| into 128 levels instead of 256.

The expected alpha is found here by brute force: the quantization MSE of every grid alpha under the
backend's own format (scale and codes from formats.quantize, the function the backend quantizes with)."""

from __future__ import annotations

import numpy as np
import pytest

from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import MSE_GRID, Calibration, TensorStats, entropy_threshold
from mabert_hw.quant.formats import IntFormat, choose_qparams, dequantize, quantize
from tests.test_entropy_reference import tensorrt_entropy_threshold

U8 = IntFormat(8, signed=False)


def _softmax_like() -> np.ndarray:
    x = np.random.default_rng(0).exponential(0.02, 60000).astype(np.float32)
    x = np.minimum(x, 1.0)
    x[0] = 1.0
    return x


def _qparams(x: np.ndarray, calibrator: str, symmetric: bool = True):
    calibration = Calibration({"op:out": TensorStats(lo=float(x.min()), hi=float(x.max()), samples=[x])})
    backend = FixedBackend(config=qconfig.from_dict({"act_symmetric": symmetric, "calibrator": calibrator}),
                           calibration=calibration)
    backend._op = ("op", "gelu")
    return backend._act_qparams("out", backend._settings())


def _mse(x: np.ndarray, alpha: float, fmt: IntFormat) -> float:
    qp = choose_qparams(0.0, alpha * float(x.max()), fmt, True)
    return float(np.mean((dequantize(quantize(x.astype(np.float64), qp), qp) - x) ** 2))


def test_mse_picks_the_best_alpha_of_the_unsigned_format_it_quantizes_with():
    x = _softmax_like()
    qp = _qparams(x, "mse")
    assert qp.fmt == U8
    errors = [_mse(x, alpha, U8) for alpha in MSE_GRID]
    best = MSE_GRID[int(np.argmin(errors))]
    assert float(qp.scale) == pytest.approx(best * float(x.max()) / U8.qmax, rel=1e-12)
    signed_best = MSE_GRID[int(np.argmin([_mse(x, a, IntFormat(8)) for a in MSE_GRID]))]
    assert signed_best != best  # the data tells the two formats apart: the test would catch the old choice


def test_entropy_bins_a_non_negative_tensor_into_the_unsigned_formats_levels():
    x = np.random.default_rng(2).gamma(0.5, 1.0, 60000).astype(np.float32)  # a long tail: the levels matter
    qp = _qparams(x, "entropy")
    assert qp.fmt == U8
    threshold = float(qp.scale) * U8.qmax
    levels_256, _ = tensorrt_entropy_threshold(x.astype(np.float64), 256)  # the independent transcription
    assert threshold == pytest.approx(levels_256, rel=1e-12)  # scale = threshold / 255: one rounding
    assert entropy_threshold(x.astype(np.float64), IntFormat(9)) == levels_256  # signed 9 bits: 256 levels too
    levels_128, _ = tensorrt_entropy_threshold(x.astype(np.float64), 128)
    assert entropy_threshold(x.astype(np.float64), IntFormat(8)) == levels_128
    assert threshold != pytest.approx(levels_128, rel=1e-3)  # the data tells 128 levels from 256


def test_signed_tensors_keep_the_signed_format():
    x = np.random.default_rng(1).normal(0, 1, 40000).astype(np.float32)
    for calibrator in ("mse", "entropy"):
        assert _qparams(x, calibrator).fmt == IntFormat(8, signed=True)

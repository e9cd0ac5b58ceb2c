"""Helpers the fixed backend and the fused kernels share (formats.py), checked against brute force.

centred_peak bounds |q - zero_point| for exact_matmul and the kernels' dyadic fits. The fixed backend's
copy took only the largest zero point: right for the per-tensor parameters its GEMM operands have
(config.py refuses per-channel activations there), an underestimate per channel, e.g. zero points
(-100, 0) at 8 bits: 128 instead of 127 + 100 = 227."""

from __future__ import annotations

import numpy as np
import pytest

from mabert_hw.quant.formats import IntFormat, QParams, centred_peak, operand_params, operand_scale


def _brute_peak(qp: QParams) -> int:
    """max over every code of the format and every zero point of |q - zero_point|."""
    codes = np.arange(qp.fmt.qmin, qp.fmt.qmax + 1)
    return int(np.abs(codes[:, None] - np.ravel(qp.zero_point)[None, :]).max())


@pytest.mark.parametrize("fmt", [IntFormat(8), IntFormat(8, signed=False), IntFormat(4), IntFormat(12)])
def test_centred_peak_is_the_largest_centred_code_per_tensor_and_per_channel(fmt):
    rng = np.random.default_rng(0)
    for zero_point in ([fmt.qmin], [fmt.qmax], [0 if fmt.signed else fmt.qmax // 2],
                       [fmt.qmin // 2 - 1, 0], rng.integers(fmt.qmin, fmt.qmax + 1, 16)):
        zero_point = np.asarray(zero_point, np.int64)
        per_channel = QParams(np.ones(zero_point.shape), zero_point, fmt)
        assert centred_peak(per_channel) == _brute_peak(per_channel), zero_point
        per_tensor = QParams(np.float64(1.0), np.int64(zero_point[0]), fmt)
        assert centred_peak(per_tensor) == _brute_peak(per_tensor), zero_point[0]


def test_operand_params_are_python_numbers_per_tensor_and_arrays_per_channel():
    fmt = IntFormat(8)
    scale, zero_point = operand_params(QParams(np.float64(0.5), np.int64(3), fmt))
    assert (type(scale), type(zero_point), scale, zero_point) == (float, int, 0.5, 3)
    assert type(operand_scale(QParams(np.float64(0.5), np.int64(3), fmt))) is float
    channels = QParams(np.array([0.5, 0.25]), np.array([3, -1]), fmt)
    scale, zero_point = operand_params(channels)
    assert scale is channels.scale and zero_point is channels.zero_point
    assert operand_scale(channels) is channels.scale

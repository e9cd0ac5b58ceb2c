"""Integer kernels and requantization vs onnxruntime and torch quantized kernels, bit for bit.

Each engine is driven with random shapes, scales and zero points; the tolerance is 0 codes
(tolerances.INTEGER_KERNEL_MISMATCHES). TFLite modes are checked against a scalar transcription of
gemmlowp in Python integers; the BLAS-exactness bound against int64 matmul.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from mabert_hw.quant.formats import IntFormat, QParams, choose_qparams, dequantize, fixed_point, quantize
from mabert_hw.quant.intgemm import FLOAT32_EXACT, int_matmul, int_matmul_u8s8_avx2, limit_accumulator
from mabert_hw.quant.requant import quantize_multiplier, requantize
from .tolerances import INTEGER_KERNEL_MISMATCHES

U8 = IntFormat(8, False)


def _has_vnni() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "vnni" in cpuinfo.read_text()


def _session(node, inputs, outputs):
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper

    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _vi(name, elem, shape=None):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def _random_problem(rng):
    M, K, N = (int(v) for v in rng.integers(1, [24, 400, 48]))
    return M, K, N, float(np.float32(rng.uniform(1e-3, 0.1))), float(np.float32(rng.uniform(1e-2, 1.0)))


@pytest.mark.parametrize("a_signed,b_signed", [(False, True), (True, True), (False, False)])
def test_qlinearmatmul_bit_exact(a_signed, b_signed):
    pytest.importorskip("onnx")
    from onnx import TensorProto as TP, helper

    fa, fb = IntFormat(8, a_signed), IntFormat(8, b_signed)
    ta, tb = (TP.INT8 if s else TP.UINT8 for s in (a_signed, b_signed))
    na, nb = (np.int8 if s else np.uint8 for s in (a_signed, b_signed))
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    sess = _session(node, [_vi("a", ta), _vi("as", TP.FLOAT, []), _vi("az", ta, []), _vi("b", tb),
                           _vi("bs", TP.FLOAT, []), _vi("bz", tb, []), _vi("ys", TP.FLOAT, []),
                           _vi("yz", ta, [])], [_vi("y", ta)])
    u8s8 = not a_signed and b_signed
    rng = np.random.default_rng(5)
    mismatches = 0
    for _ in range(25):
        M, K, N, a_s, y_s = _random_problem(rng)
        b_s = float(np.float32(rng.uniform(1e-3, 0.1)))
        a = rng.integers(fa.qmin, fa.qmax + 1, (M, K))
        b = rng.integers(fb.qmin, fb.qmax + 1, (K, N))
        az, bz, yz = (int(rng.integers(f.qmin, f.qmax + 1)) for f in (fa, fb, fa))
        feed = {"a": a.astype(na), "as": np.array(a_s, np.float32), "az": np.array(az, na), "b": b.astype(nb),
                "bs": np.array(b_s, np.float32), "bz": np.array(bz, nb), "ys": np.array(y_s, np.float32),
                "yz": np.array(yz, na)}
        y = sess.run(None, feed)[0]
        saturating = u8s8 and not _has_vnni()
        acc = int_matmul_u8s8_avx2(a, b, az, bz) if saturating else int_matmul(a, b, az, bz)
        mismatches += int((requantize(acc, "ort", a_s, b_s, y_s, yz, fa) != y).sum())
    assert mismatches == INTEGER_KERNEL_MISMATCHES


def test_matmulinteger_and_quantizelinear_bit_exact():
    pytest.importorskip("onnx")
    from onnx import TensorProto as TP, helper

    mm = _session(helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"]),
                  [_vi("a", TP.INT8), _vi("b", TP.INT8), _vi("az", TP.INT8, []), _vi("bz", TP.INT8, [])],
                  [_vi("y", TP.INT32)])
    ql = _session(helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"]),
                  [_vi("x", TP.FLOAT), _vi("s", TP.FLOAT, []), _vi("z", TP.UINT8, [])], [_vi("y", TP.UINT8)])
    rng = np.random.default_rng(6)
    mismatches = 0
    for _ in range(20):
        M, K, N, scale, _ = _random_problem(rng)
        a, b = rng.integers(-128, 128, (M, K)), rng.integers(-128, 128, (K, N))
        az, bz = (int(v) for v in rng.integers(-128, 128, 2))
        y = mm.run(None, {"a": a.astype(np.int8), "b": b.astype(np.int8), "az": np.array(az, np.int8),
                          "bz": np.array(bz, np.int8)})[0]
        mismatches += int((int_matmul(a, b, az, bz) != y).sum())
        zp = int(rng.integers(0, 256))
        x = rng.normal(0, 3, 2000).astype(np.float32)
        x[:500] = ((rng.integers(-300, 300, 500) + 0.5) * scale).astype(np.float32)  # near rounding ties
        y = ql.run(None, {"x": x, "s": np.array(scale, np.float32), "z": np.array(zp, np.uint8)})[0]
        qp = QParams(np.array(scale), np.array(zp), U8)
        mismatches += int((quantize(x, qp, "half_even", float32=True) != y).sum())
    assert mismatches == INTEGER_KERNEL_MISMATCHES


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_torch_quantized_linear_bit_exact(engine):
    torch = pytest.importorskip("torch")
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"torch has no {engine} engine here")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    rng = np.random.default_rng(7)
    mismatches = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantized tensor creation is deprecated
            for trial in range(12):
                M, K, N, x_s, y_s = _random_problem(rng)
                per_channel = trial % 2 == 0
                w_s = rng.uniform(1e-3, 0.05, N) if per_channel else np.full(N, rng.uniform(1e-3, 0.05))
                xq, wq = rng.integers(0, 256, (M, K)), rng.integers(-128, 128, (N, K))
                x_zp, y_zp = (int(v) for v in rng.integers(0, 256, 2))
                bias = rng.normal(0, 1, N).astype(np.float32)
                x_t = torch._make_per_tensor_quantized_tensor(torch.tensor(xq, dtype=torch.uint8), x_s, x_zp)
                w_int = torch.tensor(wq, dtype=torch.int8)
                w_t = (torch._make_per_channel_quantized_tensor(w_int, torch.tensor(w_s), torch.zeros(N, dtype=torch.long), 0)
                       if per_channel else torch._make_per_tensor_quantized_tensor(w_int, float(w_s[0]), 0))
                packed = torch.ops.quantized.linear_prepack(w_t, torch.tensor(bias))
                y = torch.ops.quantized.linear(x_t, packed, y_s, y_zp).int_repr().numpy()
                saturating = engine == "fbgemm" and not _has_vnni()
                acc = int_matmul_u8s8_avx2(xq, wq.T, x_zp) if saturating else int_matmul(xq, wq.T, x_zp)
                mismatches += int((requantize(acc, engine, x_s, w_s, y_s, y_zp, U8, bias) != y).sum())
    finally:
        torch.backends.quantized.engine = previous
    assert mismatches == INTEGER_KERNEL_MISMATCHES


def _gemmlowp_scalar(acc: int, M: float, single: bool) -> int:
    """TFLite MultiplyByQuantizedMultiplier transcribed with Python ints (independent of requant.py)."""
    import math

    mantissa, shift = math.frexp(M)
    q = math.floor(mantissa * 2 ** 31 + 0.5)
    if q == 2 ** 31:
        q, shift = q // 2, shift + 1
    if single:
        total = 31 - shift
        return (acc * q + (1 << (total - 1))) >> total
    a = acc * (1 << max(shift, 0))
    ab = a * q
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    high = int((ab + nudge) / 2 ** 31) if abs(ab + nudge) < 2 ** 52 else (abs(ab + nudge) >> 31) * (1 if ab + nudge >= 0 else -1)
    right = max(-shift, 0)
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if (high & mask) > threshold else 0)


@pytest.mark.parametrize("mode", ["tflite", "tflite_single"])
def test_tflite_requant_matches_scalar_gemmlowp(mode):
    rng = np.random.default_rng(8)
    acc = rng.integers(-(1 << 24), 1 << 24, 3000)
    multipliers = rng.uniform(1e-5, 0.9, 3000)
    wide = IntFormat(32, True)
    mine = np.concatenate([requantize(acc[i:i + 1], mode, 1.0, m, 1.0, 0, wide) for i, m in enumerate(multipliers)])
    scalar = np.array([_gemmlowp_scalar(int(a), float(m), mode == "tflite_single") for a, m in zip(acc, multipliers)])
    assert int((mine != scalar).sum()) == INTEGER_KERNEL_MISMATCHES


def test_single_and_double_rounding_differ_by_at_most_one_step():
    rng = np.random.default_rng(9)
    acc = rng.integers(-(1 << 20), 1 << 20, 20000)
    M = 0.0123
    wide = IntFormat(32, True)
    double, single = (requantize(acc, m, 1.0, M, 1.0, 0, wide) for m in ("tflite", "tflite_single"))
    exact = np.rint(acc * M)
    assert np.abs(double - single).max() == 1 and np.abs(double - exact).max() <= 1
    q31, shift = quantize_multiplier(M)
    assert abs(q31 * 2.0 ** (int(shift) - 31) - M) <= 2.0 ** (int(shift) - 32)  # half a q31 step


def test_dyadic_equals_exact_rational_rounding():
    from fractions import Fraction

    rng = np.random.default_rng(10)
    acc = rng.integers(-(1 << 30), 1 << 30, 500)
    M = 0.0371
    mine = requantize(acc, "dyadic", 1.0, M, 1.0, 0, IntFormat(32, True))
    mant, exp = np.frexp(M)
    m, e = int(np.floor(mant * 2 ** 31 + 0.5)), 31 - int(exp)
    expected = [round(Fraction(int(a) * m, 2 ** e)) for a in acc]  # Python round: half to even
    assert mine.tolist() == expected


def test_float_blas_path_is_exact_beyond_naive_float32():
    rng = np.random.default_rng(11)
    a, b = rng.integers(200, 256, (64, 2048)), rng.integers(100, 128, (2048, 32))
    exact = a @ b  # int64 matmul
    assert exact.max() > FLOAT32_EXACT  # a plain float32 GEMM would round here...
    naive = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    assert (naive != exact).any()
    assert np.array_equal(int_matmul(a, b), exact)  # ...the blocked path does not
    big = rng.integers(-(1 << 15), 1 << 15, (8, 300)), rng.integers(-(1 << 15), 1 << 15, (300, 8))
    assert np.array_equal(int_matmul(*big), big[0] @ big[1])


def test_accumulator_wrap_and_saturate():
    acc = np.array([-40000, -5, 0, 32767, 32768, 70000])
    sat, n = limit_accumulator(acc, 16, "saturate")
    assert n == 3 and sat.tolist() == [-32768, -5, 0, 32767, 32767, 32767]
    wrapped, _ = limit_accumulator(acc, 16, "wrap")
    assert wrapped.tolist() == [v - 65536 if v > 32767 else v + 65536 if v < -32768 else v for v in acc]


def test_formats_roundtrip_rounding_and_fixed_point():
    rng = np.random.default_rng(12)
    x = rng.normal(0, 2, (16, 64))
    for bits in range(2, 17):
        for symmetric in (True, False):
            qp = choose_qparams(x.min(), x.max(), IntFormat(bits, True), symmetric)
            err = np.abs(dequantize(quantize(x, qp), qp) - x).max()
            assert err <= qp.scale.max() / 2 * (1 + 1e-9)
    qp = QParams(np.array(1.0), np.array(0), IntFormat(8))
    ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    assert quantize(ties, qp, "half_even").tolist() == [-2, -2, 0, 0, 2, 2]
    assert quantize(ties, qp, "half_away").tolist() == [-3, -2, -1, 1, 2, 3]
    assert quantize(ties, qp, "floor").tolist() == [-3, -2, -1, 0, 1, 2]
    draws = quantize(np.full(20000, 0.25), qp, "stochastic", np.random.default_rng(0))
    assert abs(draws.mean() - 0.25) < 0.02  # unbiased: E[q] = x, 4.5 sigma of the binomial mean
    fmt, scale = fixed_point(3, 4)  # Q3.4: 8 bits, range [-8, 8 - 1/16]
    assert (fmt.bits, fmt.qmin * scale, fmt.qmax * scale) == (8, -8.0, 8 - 1 / 16)
    w = rng.normal(0, 1, (6, 32))
    from mabert_hw.quant.formats import weight_qparams

    for gran in ("tensor", "channel", "group"):
        qp = weight_qparams(w, IntFormat(4), gran, group_size=8)
        assert np.abs(dequantize(quantize(w, qp), qp) - w).max() <= qp.scale.max() / 2 * (1 + 1e-9)


def _avx2_u8s8_scalar(a_row, b_col, a_zp: int, b_zp: int) -> int:
    """One output of the AVX2 u8 x s8 kernel (onnxruntime MLAS, fbgemm without VNNI), instruction by instruction
    in Python ints: vpmaddubsw multiplies unsigned bytes by signed bytes and adds each pair k = 2i, 2i + 1 with
    signed saturation to int16; vpmaddwd against ones adds adjacent int16s into int32; vpaddd accumulates in
    int32 (wrapping); the zero points are then taken out with exact row and column sums:
    sum (a - a_zp)(b - b_zp) = sum ab - a_zp sum b - b_zp sum a + K a_zp b_zp, with sum ab the saturated one."""
    a, b = [int(v) for v in a_row], [int(v) for v in b_col]
    K = len(a)
    if K % 2:
        a, b = a + [0], b + [0]
    words = [max(-(1 << 15), min((1 << 15) - 1, a[k] * b[k] + a[k + 1] * b[k + 1])) for k in range(0, len(a), 2)]
    words += [0] * (len(words) % 2)
    acc = 0
    for j in range(0, len(words), 2):
        acc = (acc + words[j] + words[j + 1] + (1 << 31)) % (1 << 32) - (1 << 31)
    return acc - a_zp * sum(b) - b_zp * sum(a) + K * a_zp * b_zp


def test_avx2_u8s8_emulation_equals_scalar_vpmaddubsw_on_any_cpu():
    """int_matmul_u8s8_avx2 vs the scalar transcription above, whatever this CPU has (with VNNI the engine
    tests above never run the emulation): byte pairs that overflow int16 saturate."""
    one = int_matmul_u8s8_avx2(np.array([[255, 255]]), np.array([[127], [127]]))
    assert one.tolist() == [[32767]]  # 2 * 255 * 127 = 64770 saturates; exact int_matmul gives 64770
    assert int_matmul_u8s8_avx2(np.array([[255, 255]]), np.array([[-128], [-128]])).tolist() == [[-32768]]
    rng = np.random.default_rng(13)
    a = rng.integers(0, 256, (7, 33))  # odd K: the last byte pairs with a zero
    a[:, :8] = 255
    b = rng.integers(-128, 128, (33, 5))
    b[:8, :2] = 127
    a_zp, b_zp = 37, rng.integers(-128, 128, 5)
    got = int_matmul_u8s8_avx2(a, b, a_zp, b_zp)
    want = np.array([[_avx2_u8s8_scalar(a[m], b[:, n], a_zp, int(b_zp[n])) for n in range(5)] for m in range(7)])
    assert int((got != want).sum()) == INTEGER_KERNEL_MISMATCHES
    assert (want != int_matmul(a, b, a_zp, b_zp)).sum() >= 14  # saturation hit (columns 0-1 of every row at least)


def test_fixed_backend_avx2_accumulate_equals_scalar_chain():
    """FixedBackend.linear with accumulate = "avx2_u8s8" == quantize -> the scalar vpmaddubsw chain ->
    requantize (ort) code for code, on inputs at the top code (255) against weights at 127, which saturate."""
    from mabert_hw.backends.fixed import FixedBackend
    from mabert_hw.quant import config as qconfig
    from mabert_hw.quant.calibrate import Calibration, TensorStats
    from mabert_hw.quant.formats import weight_qparams

    rng = np.random.default_rng(14)
    x = rng.uniform(-0.2, 1.0, (2, 6, 34)).astype(np.float32)
    x[..., :10] = 1.0  # code 255
    w = rng.normal(0, 0.2, (8, 34)).astype(np.float32)
    w[:3] = 0.5  # rows of equal weights: every code 127
    bias = rng.normal(0, 0.1, 8).astype(np.float32)
    calibration = Calibration({"fc:in0": TensorStats(-0.2, 1.0), "fc:out": TensorStats(-3.0, 6.0)})
    settings = {"requant": "ort", "weight_granularity": "channel"}
    got = {mode: FixedBackend(config=qconfig.from_dict({**settings, "accumulate": mode}), calibration=calibration)
           .linear("fc", x, w, bias) for mode in ("avx2_u8s8", "exact")}

    xqp = choose_qparams(-0.2, 1.0, U8, False)
    yqp = choose_qparams(-3.0, 6.0, U8, False)
    wqp = weight_qparams(w, IntFormat(8), "channel")
    xq, wq = quantize(x, xqp, float32=True).reshape(-1, 34), quantize(w, wqp)
    acc = np.array([[_avx2_u8s8_scalar(row, wq[n], int(xqp.zero_point), int(wqp.zero_point.reshape(-1)[n]))
                     for n in range(8)] for row in xq])
    assert (acc != int_matmul(xq, wq.T, xqp.zero_point, wqp.zero_point.reshape(-1))).any()  # saturated
    acc, overflowed = limit_accumulator(acc, 32)
    assert overflowed == 0
    yq = requantize(acc, "ort", float(xqp.scale), wqp.scale.reshape(-1), float(yqp.scale), int(yqp.zero_point),
                    yqp.fmt, bias)
    codes = np.rint(got["avx2_u8s8"] / np.float32(yqp.scale)).astype(np.int64).reshape(-1, 8) + int(yqp.zero_point)
    assert int((codes != yq).sum()) == INTEGER_KERNEL_MISMATCHES
    assert not np.array_equal(got["avx2_u8s8"], got["exact"])  # the saturation reaches the output codes

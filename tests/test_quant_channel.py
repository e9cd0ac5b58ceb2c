"""Per-channel activation scales (per hidden unit) for the residual stream and GEMM outputs (issue 5).

Each piece is checked against an independent computation: the residual add's output codes against
closed-form per-channel scales and onnxruntime's per-axis QuantizeLinear; a linear's per-channel
output against the engine-verified scalar requantization, column by column; the integer add against
exact rational rounding; the integer LayerNorm on per-channel codes against float LayerNorm; the
per-channel calibrators against the per-tensor ones run on each channel's column.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.backends.reference import ReferenceBackend
from mabert_hw.errors import UserError
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import (
    Calibration,
    ObservingBackend,
    TensorStats,
    calibrate,
    channel_mse_range,
    mse_range,
)
from mabert_hw.quant.error import compare
from mabert_hw.quant.formats import IntFormat, choose_qparams, quantize, weight_qparams
from mabert_hw.quant.intgemm import int_matmul
from mabert_hw.quant.intops import COMMON_SCALE_BITS, int_add, int_layernorm, to_common_scale
from mabert_hw.quant.requant import dyadic_multiplier, requantize
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .tolerances import FLOAT32_DEQUANT_RTOL, INT_LAYERNORM_STEPS, INTEGER_KERNEL_MISMATCHES

RESIDUAL = "encoder.layer.0.output.residual"


def _outlier_activations(rng, shape=(3, 10, 16), outlier=5, factor=40.0):
    x = rng.normal(0, 1, shape).astype(np.float32)
    x[..., outlier] *= factor  # one outlier channel, as in BERT's residual stream
    return x


def _outlier_model_run(spec, channels=(1, 4), gain=30.0):
    """Forward of a tiny random model whose LayerNorm gains are `gain` on a few channels, so that those
    channels dominate the residual stream, as BERT's outlier channels do."""
    weights = random_weights(spec, seed=5)
    for key in weights:
        if key.endswith("LayerNorm.weight"):
            weights[key][list(channels)] *= gain
    batch = random_batch(spec, 3, 12, seed=5)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids).last_hidden_state

    return run


def _quantize_linear_per_axis(x, scale, zero_point):
    """onnxruntime QuantizeLinear, per-axis on the last axis (uint8)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto as TP
    from onnx import helper

    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=x.ndim - 1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TP.FLOAT, None),
                                            helper.make_tensor_value_info("s", TP.FLOAT, None),
                                            helper.make_tensor_value_info("z", TP.UINT8, None)],
                              [helper.make_tensor_value_info("y", TP.UINT8, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "s": scale.astype(np.float32), "z": zero_point.astype(np.uint8)})[0]


def test_residual_add_per_channel_equals_closed_form_and_onnxruntime():
    pytest.importorskip("onnx")
    rng = np.random.default_rng(30)
    a, b = _outlier_activations(rng), rng.normal(0, 0.5, (3, 10, 16)).astype(np.float32)
    observer = ObservingBackend()
    observer.add(RESIDUAL, a, b)
    backend = FixedBackend(config=qconfig.from_dict({"residual_granularity": "channel"}),
                           calibration=observer.calibration)
    got = backend.add(RESIDUAL, a, b)

    x = a + b  # float32, as both backends add
    lo = np.minimum(x.min(axis=(0, 1)), 0.0).astype(np.float64)  # per channel, widened to include 0
    hi = np.maximum(x.max(axis=(0, 1)), 0.0).astype(np.float64)
    scale = (hi - lo) / 255.0  # asymmetric uint8: equation (2) of formats.py with qmin 0, qmax 255
    zero_point = np.clip(-np.rint(lo / scale), 0, 255)
    expected = _quantize_linear_per_axis(x, scale, zero_point).astype(np.int64)
    codes = np.rint(got / scale + zero_point).astype(np.int64)
    assert int((codes != expected).sum()) == INTEGER_KERNEL_MISMATCHES
    np.testing.assert_allclose(got, (expected - zero_point) * scale, rtol=FLOAT32_DEQUANT_RTOL, atol=0)
    per_tensor = FixedBackend(calibration=observer.calibration).add(RESIDUAL, a, b)
    normal = np.arange(16) != 5  # the channels beside the outlier gain the resolution
    assert np.abs(got - x)[..., normal].max() < np.abs(per_tensor - x)[..., normal].max()


@pytest.mark.parametrize("requant", ["ort", "tflite", "dyadic"])
def test_linear_per_channel_output_equals_per_column_requantization(requant):
    """Per-channel output scales enter the per-column multiplier x_s w_s[n] / y_s[n]: column n must equal
    the engine-verified requantization with the scalar y_s[n] (test_quant_kernels)."""
    rng = np.random.default_rng(31)
    x = rng.normal(0, 1.0, (2, 12, 40)).astype(np.float32)
    w = rng.normal(0, 0.2, (24, 40)).astype(np.float32)
    bias = rng.normal(0, 0.1, 24).astype(np.float32)
    out_lo, out_hi = -rng.uniform(0.5, 4, 24), rng.uniform(0.5, 4, 24)
    calibration = Calibration({"fc:in0": TensorStats(float(x.min()), float(x.max())),
                               "fc:out": TensorStats(float(out_lo.min()), float(out_hi.max()),
                                                     channel_lo=out_lo, channel_hi=out_hi)})
    config = qconfig.from_dict({"requant": requant, "rule": [{"kind": "linear", "act_granularity": "channel"}]})
    got = FixedBackend(config=config, calibration=calibration).linear("fc", x, w, bias).reshape(-1, 24)

    float32 = requant == "ort"
    xqp = choose_qparams(x.min(), x.max(), IntFormat(8, False), False)
    wqp = weight_qparams(w, IntFormat(8), "channel")
    acc = int_matmul(quantize(x, xqp, float32=float32).reshape(-1, 40), quantize(w, wqp).T, xqp.zero_point,
                     wqp.zero_point.reshape(-1))
    mismatches = 0
    for n in range(24):
        yqp = choose_qparams(out_lo[n], out_hi[n], IntFormat(8, False), False)
        column = requantize(acc[:, n:n + 1], requant, float(xqp.scale), wqp.scale[n], float(yqp.scale),
                            int(yqp.zero_point), yqp.fmt, bias[n:n + 1])[:, 0]
        codes = np.rint(got[:, n] / yqp.scale + yqp.zero_point).astype(np.int64)
        mismatches += int((codes != column).sum())
    assert mismatches == INTEGER_KERNEL_MISMATCHES


def test_int_add_per_channel_equals_exact_rational_rounding():
    rng = np.random.default_rng(32)
    C = 6
    qa, qb = rng.integers(0, 256, (4, C)), rng.integers(0, 256, (4, C))
    za, zb, zo = rng.integers(60, 200, C), rng.integers(60, 200, C), rng.integers(60, 200, C)
    sa, sb, so = rng.uniform(0.01, 0.5, C), rng.uniform(0.01, 0.5, C), rng.uniform(0.02, 0.8, C)
    got = int_add(qa, za, sa, qb, zb, sb, so, zo, IntFormat(8, False))

    def dyadic(v, M):  # I-BERT requantization: round_half_even(v * m / 2^e), m / 2^e ~ M
        m, e = dyadic_multiplier(M)
        return round(Fraction(int(v) * int(m), 2 ** int(e)))  # Python round: half to even

    expected = [[min(max(dyadic(qa[i, c] - za[c], sa[c] / so[c]) + dyadic(qb[i, c] - zb[c], sb[c] / so[c]) + zo[c],
                         0), 255) for c in range(C)] for i in range(4)]
    assert got.tolist() == expected


def test_to_common_scale_shifts_pow2_channels_exactly():
    rng = np.random.default_rng(33)
    shifts = np.array([0, 3, 1, 5])
    scale = 0.01 * 2.0 ** shifts
    q, zero_point = rng.integers(0, 256, (7, 4)), rng.integers(0, 256, 4)
    codes, common = to_common_scale(q, zero_point, scale)
    assert common == 0.01 and codes.tolist() == ((q - zero_point) << shifts).tolist()
    degenerate = np.array([0.01 * 2.0 ** -40, 0.01])  # a near-constant channel: no 40-bit codes for the others
    codes, common = to_common_scale(q[:, :2], zero_point[:2], degenerate)
    assert common == 0.01 * 2.0 ** -COMMON_SCALE_BITS
    assert codes[:, 0].tolist() == [0] * 7 and codes[:, 1].tolist() == ((q[:, 1] - zero_point[1]) << COMMON_SCALE_BITS).tolist()


def test_int_layernorm_per_channel_input_close_to_float():
    rng = np.random.default_rng(34)
    x = _outlier_activations(rng, (10, 48), outlier=7).astype(np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    qp = choose_qparams(lo, hi, IntFormat(8, False), False)
    q = quantize(x, qp)
    gain, bias = rng.uniform(0.5, 1.5, 48), rng.normal(0, 0.1, 48)
    out_scale, fmt = 8 / 127, IntFormat(8)
    codes, _ = int_layernorm(q, qp.zero_point, qp.scale, gain, bias, 1e-12, out_scale, 0, fmt)
    xq = (q - qp.zero_point) * qp.scale  # the dequantized input the integer LayerNorm sees
    ref = (xq - xq.mean(-1, keepdims=True)) / xq.std(-1, keepdims=True) * gain + bias
    assert np.abs(codes - np.clip(ref / out_scale, fmt.qmin, fmt.qmax)).max() <= INT_LAYERNORM_STEPS


def test_per_channel_calibrators_equal_per_tensor_ones_on_each_channel(tmp_path):
    rng = np.random.default_rng(35)
    observer = ObservingBackend()
    for _ in range(12):  # 12 calls x 32 sampled rows: more than CHANNEL_ROW_CAP, so the cap applies
        a = _outlier_activations(rng, (4, 9, 8), outlier=2)
        observer.add(RESIDUAL, a, np.zeros_like(a))
    calibration = observer.calibration
    calibration.save(tmp_path / "cal.npz")
    loaded = Calibration.load(tmp_path / "cal.npz")
    key, fmt = f"{RESIDUAL}:out", IntFormat(8)
    st = loaded.stats[key]
    rows = st.rows[0].astype(np.float64)
    lo, hi = loaded.channel_range(key, "minmax", fmt, False)
    assert np.array_equal(lo, calibration.stats[key].channel_lo) and np.array_equal(hi, st.channel_hi)
    p_lo, p_hi = loaded.channel_range(key, "percentile", fmt, False, 99.0)
    assert np.array_equal(p_hi, [np.percentile(rows[:, c], 99.0) for c in range(8)])
    assert np.array_equal(p_lo, [np.percentile(rows[:, c], 1.0) for c in range(8)])
    m_lo, m_hi = loaded.channel_range(key, "mse", fmt, False)
    per_column = [mse_range(rows[:, c], lo[c], hi[c], fmt, False) for c in range(8)]
    assert np.array_equal(np.stack([m_lo, m_hi], 1), per_column)
    assert (m_hi < hi).any()  # some channel is clipped: the per-channel estimate is not min-max
    assert np.array_equal(channel_mse_range(rows, lo, hi, fmt, False)[1], m_hi)
    with pytest.raises(UserError):
        loaded.channel_range(key, "entropy", fmt, False)


def test_ragged_last_axis_has_no_per_channel_calibration():
    observer = ObservingBackend()
    for T in (5, 6):  # attention scores: the last axis is the key length, which changes with padding
        observer.softmax("scores", np.zeros((1, 2, T, T), np.float32))
    with pytest.raises(UserError):
        observer.calibration.channel_range("scores:in0", "minmax", IntFormat(8), False)


def test_config_residual_granularity_and_validation():
    cfg = qconfig.from_dict({"residual_granularity": "channel"})
    assert cfg.settings(RESIDUAL, "add").act_granularity == "channel"
    assert cfg.settings("encoder.layer.0.output.LayerNorm", "layernorm").act_granularity == "channel"
    assert cfg.settings("encoder.layer.0.output.dense", "linear").act_granularity == "tensor"
    assert qconfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"residual_granularity": "group"}, {"rule": [{"kind": "softmax", "act_granularity": "channel"}]},
                {"act_granularity": "row"}):
        with pytest.raises(UserError):
            qconfig.from_dict(bad)
    with pytest.raises(UserError):  # a default that reaches an op without per-channel activations
        qconfig.from_dict({"act_granularity": "channel"}).settings("x.softmax", "softmax")


@pytest.mark.parametrize("nonlinear", ["float", "integer"])
def test_per_channel_residual_beats_per_tensor_with_outlier_channels(nonlinear):
    """A tiny model whose LayerNorm gains make two outlier channels in the residual stream (as BERT's):
    8-bit per-channel residual scales must leave the final hidden state closer to the float reference."""
    spec = TINY_SPECS[0]
    run = _outlier_model_run(spec)
    calibration = calibrate(run)
    reference = run(ReferenceBackend())
    sqnr = {}
    for granularity in ("tensor", "channel"):
        config = qconfig.from_dict({"nonlinear": nonlinear, "residual_granularity": granularity})
        sqnr[granularity] = compare(reference.astype(np.float64),
                                    run(FixedBackend(config=config, calibration=calibration)))["sqnr_db"]
    assert sqnr["channel"] > sqnr["tensor"]


def test_compare_leaves_padding_positions_out():
    rng = np.random.default_rng(36)
    token_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    pad = token_mask == 0
    hidden = rng.normal(0, 1, (2, 4, 6))
    noisy = hidden + np.where(pad[..., None], 100.0, 0.0)  # errors at padding tokens only
    assert compare(hidden, noisy, token_mask)["sqnr_db"] == np.inf
    assert compare(hidden, noisy)["sqnr_db"] < 0
    for heads in (3, 4):  # 4 heads = 4 tokens: the per-head layout must still mask tokens, not heads
        scores = rng.normal(0, 1, (2, heads, 4, 4))
        noisy = scores + np.where(pad[:, None, :, None] | pad[:, None, None, :], 100.0, 0.0)  # padding queries / keys
        assert compare(scores, noisy, token_mask, keys=True)["sqnr_db"] == np.inf
        rows = rng.normal(0, 1, (2, heads, 4, 5))  # (B, H, T, D) per-head context rows
        assert compare(rows, rows + np.where(pad[:, None, :, None], 100.0, 0.0), token_mask)["sqnr_db"] == np.inf


def test_cli_quant_error_baseline_shows_sqnr_change(tmp_path, minilm, capsys):
    import csv
    import io

    from mabert_hw.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("A plane is taking off.\nA man is playing a flute.\nA woman is slicing an onion.\n")
    cfg = tmp_path / "q.toml"
    cfg.write_text('residual_granularity = "channel"\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--baseline", "default", "--data", str(texts),
                 "--no-sensitivity", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out)))
    for row in rows:
        assert float(row["delta_db"]) == round(float(row["sqnr_db"]) - float(row["baseline_sqnr_db"]), 2)
    residual = [float(r["delta_db"]) for r in rows if r["kind"] in ("add", "layernorm")]
    assert np.median(residual) > 0  # per-channel residual scales raise the residual stream's SQNR

"""Fixed backend, integer non-linearities, calibration, configs and sweeps (issue 5).

Integer ops are checked against closed forms (math.isqrt, erf GELU, float softmax / LayerNorm) in
quantization steps; the fixed backend against the reference at high precision, where quantization
error must vanish, and at W8A8, where it must stay small.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf

from mabert_hw.backends import make_backend
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import calibrate, entropy_threshold, mse_range
from mabert_hw.quant.formats import IntFormat
from mabert_hw.quant.intops import int_gelu, int_layernorm, int_softmax, isqrt
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .test_entropy_reference import tensorrt_entropy_threshold
from .tolerances import (FIXED16_INTEGER_VS_REFERENCE_ATOL, FIXED8_MIN_COSINE, FIXED_INTEGER_PER_4_BITS_MIN_RATIO,
                         FIXED_PER_4_BITS_MIN_RATIO, INT_GELU_MAX_ERR, INT_LAYERNORM_STEPS, INT_SOFTMAX_MAX_ERR)


def test_isqrt_matches_math_isqrt():
    rng = np.random.default_rng(0)
    n = np.concatenate([np.arange(0, 2000), rng.integers(0, 1 << 62, 5000), [(1 << 62) - 1, (1 << 40) ** 1]])
    assert isqrt(n).tolist() == [math.isqrt(int(v)) for v in n]


def test_int_softmax_close_to_float_and_masks():
    rng = np.random.default_rng(1)
    scale = 0.04
    q = rng.integers(-127, 128, (64, 50))
    valid = rng.random((64, 50)) > 0.2
    valid[:, 0] = True
    codes = int_softmax(q, scale, 8, valid)
    x = np.where(valid, q * scale, -np.inf)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert np.abs(codes / 256 - p).max() <= INT_SOFTMAX_MAX_ERR
    assert (codes[~valid] == 0).all()


def test_int_gelu_close_to_erf_gelu():
    scale = 6 / 127
    q = np.arange(-127, 128)
    codes, code_scale = int_gelu(q, scale)
    x = q * scale
    assert np.abs(codes * code_scale - 0.5 * x * (1 + erf(x / math.sqrt(2)))).max() <= INT_GELU_MAX_ERR


def test_int_layernorm_close_to_float():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 3, (10, 48))
    x[:, 5] *= 8  # an outlier channel, as in BERT residuals
    scale = np.abs(x).max() / 32767
    q = np.rint(x / scale).astype(np.int64)
    gain, bias = rng.uniform(0.5, 1.5, 48), rng.normal(0, 0.1, 48)
    out_scale, fmt = 8 / 127, IntFormat(8)
    codes, _ = int_layernorm(q, 0, scale, gain, bias, 1e-12, out_scale, 0, fmt)
    xq = q * scale
    ref = (xq - xq.mean(-1, keepdims=True)) / xq.std(-1, keepdims=True) * gain + bias
    assert np.abs(codes - np.clip(ref / out_scale, fmt.qmin, fmt.qmax)).max() <= INT_LAYERNORM_STEPS


def _tiny_run(spec, seed=0):
    weights = random_weights(spec, seed)
    batch = random_batch(spec, 3, 12, seed=seed)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids).last_hidden_state

    return run


def _errors_by_bits(run, calibration, ref, nonlinear, **settings):
    """error(weight_bits, act_bits): max |fixed - reference| with 64-bit accumulators."""

    def error(weight_bits, act_bits):
        cfg = qconfig.from_dict({"weight_bits": weight_bits, "act_bits": act_bits, "nonlinear": nonlinear,
                                 "acc_bits": 64, **settings})
        fixed = make_backend("fixed", config=cfg, calibration=calibration)
        return float(np.abs(run(fixed) - ref).max())

    return error


@pytest.mark.parametrize("nonlinear", ["float", "integer"])
def test_fixed_backend_converges_to_reference_as_bits_grow(nonlinear):
    """Every 4 more bits of weights and activations shrink the steps 16x: with float non-linearities the
    error must shrink by FIXED_PER_4_BITS_MIN_RATIO per step 8 -> 12 -> 16, for weights and activations
    together and each alone; with integer ones it floors at the I-BERT fits' error (tolerances.py)."""
    spec = TINY_SPECS[0]
    run = _tiny_run(spec)
    calibration = calibrate(run)
    ref = run(make_backend("reference"))
    error = _errors_by_bits(run, calibration, ref, nonlinear)
    both = {bits: error(bits, bits) for bits in (8, 12, 16)}
    if nonlinear == "float":
        assert both[8] >= FIXED_PER_4_BITS_MIN_RATIO * both[12]
        assert both[12] >= FIXED_PER_4_BITS_MIN_RATIO * both[16]
        assert error(8, 16) >= FIXED_PER_4_BITS_MIN_RATIO * error(12, 16)  # weights alone (16-bit activations)
        assert error(16, 8) >= FIXED_PER_4_BITS_MIN_RATIO * error(16, 12)  # activations alone (16-bit weights)
        assert error(16, 12) >= FIXED_PER_4_BITS_MIN_RATIO * both[16]
    else:
        assert both[8] >= FIXED_INTEGER_PER_4_BITS_MIN_RATIO * both[12]
        assert both[16] <= FIXED16_INTEGER_VS_REFERENCE_ATOL
    w8 = run(make_backend("fixed", config=qconfig.from_dict({"nonlinear": nonlinear}), calibration=calibration))
    cos = (w8 * ref).sum(-1) / np.linalg.norm(w8, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= FIXED8_MIN_COSINE
    assert not np.array_equal(w8, ref)


def test_integer_mode_is_deterministic_and_accumulator_overflow_counted():
    spec = TINY_SPECS[2]
    run = _tiny_run(spec, seed=3)
    calibration = calibrate(run)
    cfg = qconfig.from_dict({"nonlinear": "integer"})
    a, b = (run(make_backend("fixed", config=cfg, calibration=calibration)) for _ in range(2))
    assert np.array_equal(a, b)
    narrow = make_backend("fixed", config=qconfig.from_dict({"acc_bits": 12}), calibration=calibration)
    run(narrow)
    assert sum(narrow.overflows.values()) > 0


def test_config_rules_and_validation(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text('act_bits = 8\nresidual_bits = 16\n[[rule]]\nkind = "softmax"\nact_bits = 12\n'
                    '[[rule]]\nname = "encoder.layer.1.*"\nquantize = false\n')
    cfg = qconfig.load(path)
    assert cfg.settings("encoder.layer.0.attention.self.softmax", "softmax").act_bits == 12
    assert cfg.settings("encoder.layer.0.output.residual", "add").act_bits == 16
    assert cfg.settings("encoder.layer.0.output.dense", "linear").act_bits == 8
    assert not cfg.settings("encoder.layer.1.output.dense", "linear").quantize
    from mabert_hw.errors import UserError

    with pytest.raises(UserError):
        qconfig.from_dict({"requant": "nope"})


def test_calibrators_clip_outliers():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, 20000), [40.0, -35.0]])
    fmt = IntFormat(8)
    lo, hi = mse_range(x, x.min(), x.max(), fmt, True)
    assert hi < 40.0 and lo > -35.0
    threshold = entropy_threshold(np.abs(x), fmt)
    assert threshold == tensorrt_entropy_threshold(np.abs(x), fmt.qmax + 1)[0]  # TensorRT's KL search
    assert 2.0 < threshold < 35.0  # both outliers clipped, the bulk kept


def test_sweep_local_and_dask(tmp_path, minilm, data_dir):
    pytest.importorskip("dask.distributed")
    from dask.distributed import Client, LocalCluster

    from mabert_hw.eval.sweep import Job, done_keys, load_grid, run_sweep
    from mabert_hw.eval.tasks import load_stsb, run_batches, stsb_spearman

    pairs = load_stsb(data_dir, limit=3)
    cal_path = tmp_path / "cal.npz"
    calibrate(lambda b: run_batches(minilm, pairs.first, b)).save(cal_path)
    grid = tmp_path / "grid.toml"
    grid.write_text("act_bits = [8, 16]\n")
    points = load_grid(grid)
    assert points == [{"act_bits": 8}, {"act_bits": 16}]
    data = str(data_dir / "glue/STS-B/dev.tsv")
    jobs = [Job("minilm", "stsb", data, 3, p, str(cal_path)) for p in points]
    out = tmp_path / "local.csv"
    local = run_sweep(jobs[:1], out)
    assert len(done_keys(out)) == 1
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1) as cluster, Client(cluster) as client:
        rows = run_sweep(jobs, tmp_path / "dask.csv", scheduler=client)
    assert {r["act_bits"] for r in rows} == {8, 16}
    assert done_keys(tmp_path / "dask.csv") == {r["key"] for r in rows}
    # each row's metric is its own configuration's: recomputed here on the fixed backend with that config and
    # the calibration file, outside the sweep (a sweep that dropped the config would give both rows one value)
    from mabert_hw.backends.fixed import FixedBackend
    from mabert_hw.eval.sweep import config_key
    from mabert_hw.quant.calibrate import Calibration

    task = load_stsb(data, 3)
    metric = {}
    for point in points:
        backend = FixedBackend(config=qconfig.from_dict(point), calibration=Calibration.load(cal_path))
        metric[point["act_bits"]] = round(stsb_spearman(minilm, task, backend, batch_size=jobs[0].batch_size), 4)
    assert {r["key"]: r["metric"] for r in rows} == {config_key(p): metric[p["act_bits"]] for p in points}
    assert [r["metric"] for r in local] == [metric[8]]  # the local pool's row too
    reference = stsb_spearman(minilm, task, make_backend("reference"))
    assert metric[8] != metric[16]
    assert abs(metric[16] - reference) < abs(metric[8] - reference)


def test_cli_quant_error_and_sweep_guard(tmp_path, minilm, capsys):
    from mabert_hw.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("A plane is taking off.\nA man is playing a flute.\n")
    cfg = tmp_path / "q.toml"
    cfg.write_text('nonlinear = "integer"\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--data", str(texts), "--no-sensitivity",
                 "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("section,tensor,kind,sqnr_db") and any("output.LayerNorm" in line for line in lines)
    out = tmp_path / "done.csv"
    out.write_text("key,metric\n")
    grid = tmp_path / "grid.toml"
    grid.write_text("act_bits = [8]\n")
    assert main(["sweep", "minilm", "--task", "stsb", "--data", str(texts), "--grid", str(grid),
                 "--out", str(out)]) == 2


def test_ma_encoder_runs_all_integer():
    import dataclasses

    from mabert_hw.spec import Variant

    spec = dataclasses.replace(TINY_SPECS[0], variant=Variant(softmax="mlp", ffn_activation="relu", norm="powernorm",
                                                              mask="multiplicative", softmax_input=16, softmax_hidden=16))
    run = _tiny_run(spec)
    calibration = calibrate(run)
    ref = run(make_backend("reference"))
    fixed = make_backend("fixed", config=qconfig.from_dict({"weight_bits": 16, "act_bits": 16, "nonlinear": "integer",
                                                            "acc_bits": 64}), calibration=calibration)
    run(fixed)
    assert not fixed.float_ops
    assert not fixed.overflows  # a W16A16 GEMM's exact sums exceed int32 (1951 saturate at acc_bits = 32)
    # No I-BERT fit on this path (ReLU, a 0/1 mask select, dyadic affine): the error is quantization only and
    # must shrink with the bits as the float-non-linearity path does.
    error = _errors_by_bits(run, calibration, ref, "integer")
    both = {bits: error(bits, bits) for bits in (8, 12, 16)}
    assert both[8] >= FIXED_PER_4_BITS_MIN_RATIO * both[12]
    assert both[12] >= FIXED_PER_4_BITS_MIN_RATIO * both[16]


@pytest.mark.parametrize("op", ["layernorm", "affine"])
def test_integer_normalisation_with_a_zero_gain_channel_outputs_its_bias(op):
    """A channel whose gain (LayerNorm) or scale (folded PowerNorm) is 0 outputs its bias; the others are
    as accurate as without it (before: its bias codes overflowed and shrank every channel's multiplier)."""
    from mabert_hw.backends.fixed import FixedBackend
    from mabert_hw.backends.reference import ReferenceBackend

    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (2, 4, 16)).astype(np.float32)
    bias = np.full(16, 0.5, np.float32)
    errors = {}
    for dead in (False, True):
        gain = np.ones(16, np.float32)
        gain[3] = 0.0 if dead else 1.0

        def call(backend):
            return (backend.layernorm("ln", x, gain, bias, 1e-12) if op == "layernorm"
                    else backend.affine("ln", x, gain, bias))

        fixed = call(FixedBackend(config=qconfig.from_dict({"nonlinear": "integer"}), calibration=calibrate(call)))
        errors[dead] = np.abs(fixed - call(ReferenceBackend())).max()
        if dead:
            assert np.abs(fixed[..., 3] - 0.5).max() < 0.02  # the bias, to an 8-bit output step (~0.02)
    assert errors[True] <= errors[False] + 1e-6

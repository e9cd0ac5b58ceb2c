"""Fixes from the review of the int8 / fixed-point code (one test or more per finding, each failing on
the code before the fix): MA approximator weights with per-group scales, the embedding output format,
the sensitivity ranking's scope, non-UTF-8 TOML files, JSON for exact tensors, torch's activation
quantizer, the PoWER ops run in float, and half-away-from-zero rounding.

Checked against what does not share the code under test: torch.quantize_per_tensor, Python's decimal
rounding, the padding invariance of the MA approximator (a zero-padded score row must give the same
result at any padded length), and counts of distinct values a format can hold.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest

from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.cli import main
from mabert_hw.cli.common import check_configs_for_model
from mabert_hw.errors import UserError
from mabert_hw.eval.sweep import load_grid
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.quant import config as qconfig
from mabert_hw.quant import fused
from mabert_hw.quant.calibrate import calibrate
from mabert_hw.quant.error import capture, sqnr_change, with_baseline
from mabert_hw.quant.formats import IntFormat, QParams, quantize, round_values
from mabert_hw.spec import Variant
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS

TEXTS = "A plane is taking off.\nA man is playing a flute.\nA woman is slicing an onion.\n"
MA_SPEC = dataclasses.replace(TINY_SPECS[0], variant=Variant(softmax="mlp", ffn_activation="relu", norm="powernorm",
                                                             mask="multiplicative", softmax_input=16,
                                                             softmax_hidden=8))
APPROXIMATOR = "encoder.layer.0.attention.self.softmax.linear_relu_stack."


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text(TEXTS)
    return path


# --- 1. MA approximator weights: quantized as stored (per group along n), whatever T ---------------------
def _ma_runs(real: int):
    """Runs of MA_SPEC on two sentences of `real` tokens, unpadded and zero-padded to n = 16 tokens."""
    weights = random_weights(MA_SPEC, 4)
    ids = np.random.default_rng(4).integers(1, MA_SPEC.vocab_size, (2, real))
    n = MA_SPEC.variant.softmax_input
    padded = np.zeros((2, n), np.int64)
    padded[:, :real] = ids
    mask = (np.arange(n) < real).astype(np.int64)[None].repeat(2, 0)

    def run(input_ids, attention_mask):
        return lambda backend: forward(MA_SPEC, weights, input_ids, backend, attention_mask).last_hidden_state

    return run(ids, np.ones_like(ids)), run(padded, mask)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_ma_approximator_output_does_not_depend_on_the_padded_length(granularity):
    """The approximator reads a score row zero-padded to n (the padded keys' scores are 0 with the 0/1
    mask): the real rows and columns of its linears' outputs must not change with the padding, which
    holds only when W_1 (h, n) and W_2 (n, h) are quantized as stored, not as cut to the T tokens. At
    T = 7 with group_size 4 the old code raised ValueError (7 columns are no whole number of groups)."""
    unpadded, padded = _ma_runs(7)
    calibration = calibrate(padded)
    config = qconfig.from_dict({"weight_granularity": granularity, "group_size": 4, "nonlinear": "integer"})
    outputs = []
    for run in (unpadded, padded):
        backend = FixedBackend(config=config, calibration=calibration)
        store = capture(backend)
        run(backend)
        outputs.append(store)
    short, long = outputs
    hidden = APPROXIMATOR + "0"
    assert short[hidden].shape[-2:] == (7, 8) and long[hidden].shape[-2:] == (16, 8)
    np.testing.assert_array_equal(short[hidden], long[hidden][:, :, :7])  # real queries
    np.testing.assert_array_equal(short[APPROXIMATOR + "2"], long[APPROXIMATOR + "2"][:, :, :7, :7])


def test_group_sizes_are_checked_against_the_stored_approximator_width():
    """n = 16, h = 8: group_size 4 fits every linear (the old check traced T = 2 and refused it: 'does
    not divide its 2 inputs'); 16 does not fit the second linear's h = 8 inputs."""
    check_configs_for_model([qconfig.from_dict({"weight_granularity": "group", "group_size": 4})], "cfg", MA_SPEC)
    approximator_groups = {"rule": [{"name": "*.softmax.linear_relu_stack.*", "weight_granularity": "group",
                                     "group_size": 16}]}
    with pytest.raises(UserError, match=r"cfg: encoder.layer.0.attention.self.softmax.linear_relu_stack.2: "
                                        r"group_size 16 does not divide its 8 inputs \(and 1 more ops\)$"):
        check_configs_for_model([qconfig.from_dict(approximator_groups)], "cfg", MA_SPEC)


def test_group_misfit_in_the_backend_is_a_user_error():
    spec = TINY_SPECS[0]  # intermediate 40: no groups of 3
    weights, batch = random_weights(spec, 1), random_batch(spec, 2, 6, seed=1)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask)

    backend = FixedBackend(config=qconfig.from_dict({"weight_granularity": "group", "group_size": 3}),
                           calibration=calibrate(run))
    with pytest.raises(UserError, match=r"output.dense: group_size 3 does not divide its 40 inputs"):
        run(backend)


# --- 2. embedding outputs in the residual stream's activation format --------------------------------------
@pytest.mark.parametrize("values, most, per_channel", [
    ({"rule": [{"kind": "embedding", "act_bits": 3}]}, 8, False),
    ({"rule": [{"kind": "embedding", "act_bits": 3, "act_granularity": "channel"}]}, 8, True),
    ({"residual_bits": 4}, 16, False),
])
def test_embedding_outputs_take_the_activation_format(values, most, per_channel):
    """A b-bit output holds at most 2^b distinct values (per channel with per-channel scales); the old
    code returned the rows of the 8-bit per-row table (hundreds of distinct values)."""
    spec = TINY_SPECS[0]
    weights, batch = random_weights(spec, 2), random_batch(spec, 3, 12, seed=2, padded=False)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    backend = FixedBackend(config=qconfig.from_dict(values), calibration=calibrate(run))
    store = capture(backend)
    run(backend)
    for name in ("word_embeddings", "position_embeddings"):
        out = store["embeddings." + name].reshape(-1, spec.hidden)  # (B T, C)
        columns = out.T if per_channel else [out]
        assert max(len(np.unique(c)) for c in columns) <= most, name
        assert len(np.unique(out)) > 1


# --- 3. sensitivity ranks only the ops the config quantizes -----------------------------------------------
def test_sensitivity_ranks_only_ops_the_config_quantizes(tmp_path, texts, minilm, capsys):
    cfg = tmp_path / "one.toml"
    cfg.write_text('quantize = false\n[[rule]]\nname = "encoder.layer.5.output.dense"\nquantize = true\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--data", str(texts), "--limit", "2",
                 "--top", "5", "--format", "csv"]) == 0
    ranking = capsys.readouterr().out.split("sensitivity", 1)[1].split("\n", 1)[1]
    assert [row["tensor"] for row in csv.DictReader(io.StringIO(ranking))] == ["encoder.layer.5.output.dense"]


# --- 4. a TOML file that is not UTF-8 -------------------------------------------------------------------------
def test_non_utf8_toml_is_a_one_line_error(tmp_path, texts, minilm, capsys):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("act_bits = [8]\n# café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"cannot read quantization config .*latin1.toml: not UTF-8 text"):
        qconfig.load(latin1)
    with pytest.raises(UserError, match=r"cannot read grid .*latin1.toml: not UTF-8 text"):
        load_grid(latin1)
    assert main(["quant-error", "minilm", "--config", str(latin1), "--data", str(texts), "--no-sensitivity"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- 5. exact tensors: a change of 0, null in JSON, not the worst bar --------------------------------------------
def test_sqnr_change_between_exact_results_is_zero():
    assert sqnr_change(math.inf, math.inf) == 0.0
    assert sqnr_change(math.inf, 20.0) == math.inf and sqnr_change(20.0, math.inf) == -math.inf
    assert sqnr_change(20.5, 10.25) == 10.25
    rows = [{"tensor": "a", "sqnr_db": math.inf}, {"tensor": "b", "sqnr_db": 12.5}]
    assert [r["delta_db"] for r in with_baseline(rows, rows)] == [0.0, 0.0]


def test_quant_error_json_is_valid_with_exact_tensors(tmp_path, texts, minilm, capsys):
    cfg = tmp_path / "last.toml"
    cfg.write_text('quantize = false\n[[rule]]\nname = "encoder.layer.5.*"\nquantize = true\n')

    def no_constants(name):
        raise AssertionError(f"invalid JSON token {name}")

    assert main(["quant-error", "minilm", "--config", str(cfg), "--baseline", str(cfg), "--data", str(texts),
                 "--limit", "2", "--no-sensitivity", "--format", "json"]) == 0
    rows = next(iter(json.loads(capsys.readouterr().out, parse_constant=no_constants).values()))
    exact = [r for r in rows if r["tensor"].startswith("encoder.layer.0.")]
    assert exact and all(r["sqnr_db"] is None and r["baseline_sqnr_db"] is None and r["delta_db"] == 0.0
                         for r in exact)
    assert all(isinstance(r["sqnr_db"], float) for r in rows if r["tensor"].startswith("encoder.layer.5."))


def test_sqnr_chart_draws_exact_tensors_at_the_top():
    from mabert_hw.cli.quant_error import _chart_rows

    rows = [{"tensor": "a", "sqnr_db": math.inf}, {"tensor": "b", "sqnr_db": 12.5}, {"tensor": "c", "sqnr_db": 30.0}]
    assert [(r["tensor"], r["sqnr_db"]) for r in _chart_rows(rows)] == [("a (exact)", 30.0), ("b", 12.5),
                                                                        ("c", 30.0)]


# --- 6. fbgemm / qnnpack: torch.quantize_per_tensor's activation codes -------------------------------------------
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
# (x, scale, zero point, torch's code): the reviewer's example (onnxruntime's formula gives 91), and an x whose
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


# --- 7. the PoWER selection runs in float, and says so ------------------------------------------------------------
def test_power_selection_is_listed_in_float_ops():
    spec = TINY_SPECS[0].with_variant(retention=(8, 6))
    weights, batch = random_weights(spec, 3), random_batch(spec, 2, 10, seed=3)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    backend = FixedBackend(calibration=calibrate(run))
    backend.record = True
    run(backend)
    selection = {op.kind for op in backend.ops if op.name.endswith((".power.significance", ".power.top_tokens"))}
    assert selection == {"significance", "top_tokens"}
    assert backend.float_ops == selection


# --- 8. half away from zero as C round() ----------------------------------------------------------------------------
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
    """x / scale = 0.49999999999999994 exactly in float64 (x float32): code 0, as C round(); the old kernel
    rounded it to 1."""
    below_half = np.nextafter(0.5, 0.0)
    x = next(np.float32(k) for k in range(1, 1000) if np.float64(k) / (k / below_half) == below_half)
    qp = QParams(np.array(float(x) / below_half), np.array(0), IntFormat(8))
    y = fused.rescale(np.full((2, 4), x, np.float32), qp, 1.0, qp, False, "half_away")
    assert np.float64(x) / qp.scale == below_half and (y == 0).all()
    assert quantize(np.float32([x]), qp, "half_away").tolist() == [0]

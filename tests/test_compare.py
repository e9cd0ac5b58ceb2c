"""`mabert-hw compare`: each row is its recipe on the checkpoint's architecture; no speed-up against a variant
the hardware prices only in part; the JSON carries the context the table prints; --plots is checked before
the work and writes nothing for variants that were all skipped."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import pytest

from mabert_hw import checkpoint
from mabert_hw.cli import compare as compare_cli
from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.spec import PRESETS, VARIANTS

from .helpers import EDGE_TOML, no_exp_hardware, run_cli


def test_bert_and_power_use_bert_arithmetic_on_a_relu_checkpoint():
    """The checkpoint's own activation does not enter: bert and power are both GELU BERT (power kept
    ReLU while bert was reset to GELU)."""
    config = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "relu"}
    spec = checkpoint.spec_from_config(config, "relu-bert")
    assert spec.variant.ffn_activation == "relu"
    bert = compare_cli.variant_spec(spec, "bert", 16)
    power = compare_cli.variant_spec(spec, "power", 16, (16, 16))
    assert bert.variant == VARIANTS["bert"]
    assert power.variant == replace(VARIANTS["bert"], retention=(16, 16))


def test_ma_row_keeps_an_ma_checkpoints_approximator():
    spec = PRESETS["minilm-l6"].with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": 64,
                                                "softmax_hidden": 12})
    ma = compare_cli.variant_spec(spec, "ma", 32).variant
    assert (ma.softmax_input, ma.softmax_hidden) == (64, 12)
    (outcome,) = compare_cli.evaluate(spec, ["ma"], 1, 100, None)  # its trained n is not raised to T
    assert outcome.estimate is None and "100 tokens exceed the softmax approximator's input size 64" in outcome.skipped
    bert = PRESETS["minilm-l6"]  # the recipe's n = 128 is raised to T > n
    assert compare_cli.variant_spec(bert, "ma", 200).variant.softmax_input == 200


def test_vector_share_counts_the_relu_that_nonlinear_leaves_out(capsys):
    """MA-BERT's ReLU is not one of the functions it removes, but it runs on the vector unit: the
    vector column holds it (and every other vector op, each summed by kind here), nonlinear does not."""
    from mabert_hw.cost.counts import model_ops
    from mabert_hw.cost.cycles import estimate
    from mabert_hw.cost.hardware import load

    code, out, _ = run_cli(capsys, "compare", "minilm-l6", "--seq-len", "32", "--format", "json")
    assert code == 0
    rows = {r["variant"]: r for r in json.loads(out)["variants"]}
    ma = estimate(model_ops(compare_cli.variant_spec(PRESETS["minilm-l6"], "ma", 32), 1, 32),
                  load(compare_cli.DEFAULT_HW))
    total = ma.total("cycles")
    relu = sum(c.cycles for c in ma.costs if c.op.kind == "relu")
    array_or_memory_kinds = {"linear", "matmul", "embedding", "slice", "gather"}
    vector = sum(c.cycles for c in ma.costs if c.op.kind not in array_or_memory_kinds)
    assert relu > 0 and rows["ma"]["cycles"] == total
    assert rows["ma"]["vector_cycles_%"] == pytest.approx(100 * vector / total)
    assert rows["ma"]["vector_cycles_%"] > rows["ma"]["nonlinear_cycles_%"] + 100 * relu / total * 0.99


def test_compare_gives_no_speedup_against_a_partly_priced_variant(capsys, tmp_path):
    # without exp, the softmax of bert, power and fff has no cycle rule; ma (no softmax) is fully priced
    code, out, _ = run_cli(capsys, "compare", "minilm-l6", "--seq-len", "8", "--hw", no_exp_hardware(tmp_path),
                           "--format", "json")
    assert code == 0
    rows = {r["variant"]: r for r in json.loads(out)["variants"]}
    assert rows["bert"]["status"] == "6 ops unpriced" and rows["ma"]["status"] == "ok"
    for name in ("bert", "ma", "power", "fff"):
        assert rows[name]["speedup"] is None and rows[name]["energy_saved_%"] is None, name
    _, out, _ = run_cli(capsys, "compare", "minilm-l6", "--seq-len", "8", "--format", "json")
    rows = {r["variant"]: r for r in json.loads(out)["variants"]}
    assert rows["ma"]["speedup"] == rows["bert"]["cycles"] / rows["ma"]["cycles"]


def test_compare_gmacs_count_the_ops_the_hardware_cannot_price(capsys, tmp_path):
    path = tmp_path / "no-erf.toml"  # the FFF node's GELU needs erf: every FFF op unpriced
    path.write_text(EDGE_TOML.replace('erf = "pwl"\n', ""))
    code, out, _ = run_cli(capsys, "compare", "minilm-l6", "--seq-len", "8", "--variants", "fff", "--hw", str(path),
                           "--format", "json")
    assert code == 0
    (row,) = json.loads(out)["variants"]
    assert row["status"] == "6 ops unpriced"  # the 6 layers' FFF walks
    B, T, C, H, D, L, depth = 1, 8, 384, 12, 32, 6, 11
    # Q, K, V, O projections, QK^T and PV; the FFF walk: T tokens visit depth + 1 nodes, a dot of C and
    # an axpy of C each; the pooler
    macs = L * B * (4 * T * C * C + 2 * H * T * T * D + T * (depth + 1) * 2 * C) + B * C * C
    assert row["gmacs"] == macs / 1e9


def test_compare_json_carries_the_context_the_table_prints(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "compare", "minilm-l6", "--batch", "2", "--seq-len", "8", "--variants", "bert,ma",
                           "--hw", no_exp_hardware(tmp_path), "--overlap", "off", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["model"], doc["batch"], doc["seq_len"]) == ("minilm-l6", 2, 8)
    assert doc["hardware"]["name"] == "edge-32x32-int8" and doc["hardware"]["memory"]["overlap"] is False
    assert "exp" not in doc["hardware"]["vector"]["functions"]
    bert, ma = doc["variants"]
    assert (bert["variant"], bert["spec"]) == ("bert", "baseline")
    assert ma["spec"] == "softmax=mlp,ffn_activation=relu,norm=powernorm,mask=multiplicative"
    assert [op["name"] for op in bert["unpriced_ops"]] == [f"encoder.layer.{j}.attention.self.softmax"
                                                            for j in range(6)]
    assert {op["kind"] for op in bert["unpriced_ops"]} == {"softmax"}
    assert all("exp" in op["reason"] for op in bert["unpriced_ops"])
    assert ma["unpriced_ops"] == []


def test_compare_csv_stays_a_plain_table(capsys):
    code, out, _ = run_cli(capsys, "compare", "minilm-l6", "--seq-len", "8", "--variants", "bert,ma", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["variant"] for r in rows] == ["bert", "ma"] and "spec" not in rows[0]


def test_compare_plots_nothing_when_every_variant_is_skipped(capsys, tmp_path, monkeypatch, recwarn):
    from mabert_hw.cli import compare

    def failing(spec, name, seq_len, retention=None):
        raise UserError(f"{name} cannot be traced")

    monkeypatch.setattr(compare, "variant_spec", failing)
    code, out, err = run_cli(capsys, "compare", "minilm-l6", "--seq-len", "8", "--variants", "bert,ma",
                             "--plots", str(tmp_path / "plots"))
    assert code == 0 and "skipped: ma cannot be traced" in out
    assert list((tmp_path / "plots").iterdir()) == []  # were two PNGs of empty axes
    assert err == f"mabert-hw: warning: every variant was skipped: no plots written to {tmp_path / 'plots'}\n"
    assert not [w for w in recwarn if "legend" in str(w.message)]


def test_compare_plots_on_a_file_fails_before_printing(tmp_path, capsys):
    file = tmp_path / "afile"
    file.write_text("")
    code = main(["compare", "bert-base-uncased", "--seq-len", "16", "--plots", str(file)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "is not a directory" in err and err.count("\n") == 1, err


def test_compare_plots_write_error_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from mabert_hw.report import plots

    def unwritable(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(plots, "stacked_cycles", unwritable)
    code = main(["compare", "bert-base-uncased", "--seq-len", "16", "--plots", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot write plots" in err and "Permission denied" in err and err.count("\n") == 1, err


def test_compare_refuses_a_variant_named_twice(capsys):
    """bert,bert printed the same row twice."""
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "bert-base-uncased", "--seq-len", "16", "--variants", "bert,ma,bert"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith("mabert-hw compare: error: argument --variants: 'bert' named twice\n")

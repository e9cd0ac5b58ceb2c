"""Review of `profile` and `compare`: hardware files with values of the wrong kind, a flag that did
nothing, a shared MA-BERT approximator's parameters, ops without a cycle rule shown as free or compared,
MACs that depended on the hardware, help text, and the variants' ops in the engine time profile."""

from __future__ import annotations

import csv
import io
import json

import pytest

from mabert_hw.cli import main
from mabert_hw.cost import hardware
from mabert_hw.errors import UserError

EDGE_TOML = (hardware.HW_DIR / "edge-32x32-int8.toml").read_text()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("edit, message", [
    (("overlap = true", 'overlap = "false"'), "overlap must be true or false"),  # was read as on
    (("clock_ghz = 1.0", "clock_ghz = inf"), "clock_ghz must be positive"),  # was a ZeroDivisionError
    (("dram_gb_per_s = 17.1", "dram_gb_per_s = nan"), "dram_gb_per_s must be positive"),  # was a ValueError
    (("ifmap_sram_kib = 256", "ifmap_sram_kib = -256"), "ifmap_sram_kib must be positive"),  # spilled everything
    (("lanes = 32", "lanes = true"), "lanes must be positive and finite, got True"),  # was 1 lane
    (("rows = 32", "rows = 32.7"), "rows must be a whole number"),  # was 32 rows
    (("[vector.functions]\n", 'functions = "lut"\n[unused]\n'), "functions must be a table"),  # AttributeError
])
def test_hardware_values_of_the_wrong_kind_are_user_errors(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(EDGE_TOML.replace(*edit))
    assert path.read_text() != EDGE_TOML
    with pytest.raises(UserError, match=message):
        hardware.load(str(path))


def test_infinite_clock_is_a_one_line_error_with_exit_2(capsys, tmp_path):
    path = tmp_path / "fast.toml"
    path.write_text(EDGE_TOML.replace("clock_ghz = 1.0", "clock_ghz = inf"))
    code, _, err = run_cli(capsys, "profile", "minilm-l6", "--seq-len", "8", "--hw", str(path))
    assert code == 2 and err.count("\n") == 1 and "clock_ghz" in err


def test_overlap_without_hw_is_refused_not_ignored(capsys):
    code, _, err = run_cli(capsys, "profile", "minilm-l6", "--seq-len", "8", "--overlap", "off")
    assert code == 2 and "--overlap" in err and "--hw" in err


def shared_ma_config(tmp_path):
    """An MA-BERT config (W6WM9M/MA-BERT keys) at MiniLM-L6 sizes, one approximator for all layers."""
    config = {"model_type": "bert", "hidden_size": 384, "num_attention_heads": 12, "num_hidden_layers": 6,
              "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512,
              "type_vocab_size": 2, "share_softmax_nn": True, "norm_type": "Power", "use_softmax_approx": True,
              "ffn_hidden_act": "relu", "softmax_input_size": 128, "softmax_hidden_layer_size": 128}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("seq_len", [128, 64])
def test_a_shared_approximator_counts_its_parameters_once(capsys, tmp_path, seq_len):
    V, P, S, C, F, L, n, h = 30522, 512, 2, 384, 1536, 6, 128, 128
    per_layer = 4 * (C * C + C) + (C * F + F) + (F * C + C)  # Q, K, V, O; FFN in, out (PowerNorm folded)
    used = min(seq_len, n)  # at T < n the approximator reads the first T inputs, writes the first T outputs
    approximator = h * used + h + used * h + used  # Linear(n->h), Linear(h->n): once, not once per layer
    readout, pooler = 2 * C, C * C + C  # the folded basis' read-out affine; the pooler
    expected = (V + P + S) * C + L * per_layer + approximator + readout + pooler
    code, out, _ = run_cli(capsys, "profile", str(shared_ma_config(tmp_path)), "--seq-len", str(seq_len),
                           "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["totals"]["params"] == expected
    assert sum(op["params"] for op in doc["ops"]) == expected
    code, out, _ = run_cli(capsys, "profile", str(shared_ma_config(tmp_path)), "--seq-len", str(seq_len),
                           "--by", "layer", "--format", "csv")
    assert sum(int(row["params"]) for row in csv.DictReader(io.StringIO(out))) == expected


def no_exp_hardware(tmp_path) -> str:
    path = tmp_path / "no-exp.toml"
    path.write_text(EDGE_TOML.replace('exp = "lut"\n', ""))
    return str(path)


def test_an_op_without_a_cycle_rule_has_no_cycles_rather_than_zero(capsys, tmp_path):
    argv = ["profile", "minilm-l6", "--seq-len", "8", "--hw", no_exp_hardware(tmp_path), "--format", "csv"]
    _, out, _ = run_cli(capsys, *argv, "--by", "kind")
    softmax = {r["kind"]: r for r in csv.DictReader(io.StringIO(out))}["softmax"]
    assert softmax["bound"] == "no cycle rule"
    assert softmax["cycles"] == softmax["time_us"] == softmax["energy_uj"] == softmax["util_%"] == ""
    _, out, _ = run_cli(capsys, *argv, "--by", "op")
    ops = {r["name"]: r for r in csv.DictReader(io.StringIO(out))}
    assert ops["encoder.layer.0.attention.self.softmax"]["cycles"] == ""
    assert int(ops["encoder.layer.0.attention.self.scale"]["cycles"]) > 0


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


def help_of(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_compare_help_states_its_hardware_default_and_no_precision_flag(capsys):
    text = help_of(capsys, "compare")
    assert "--precision" not in text  # compare has no such flag
    assert "default edge-32x32-int8" in text


def test_profile_help_says_json_ignores_the_grouping(capsys):
    text = help_of(capsys, "profile")
    assert "--by {op,layer,kind} row grouping of the table, csv and md formats (json lists every op" in text


def test_time_by_call_times_the_variants_ops_not_as_overhead():
    from mabert_hw.bench.profile import time_by_call
    from mabert_hw.inputs import random_batch
    from mabert_hw.weights import random_weights

    from .conftest import TINY_SPECS

    spec = TINY_SPECS[0].with_variant(ffn="fff", fff_depth=2, fff_trees=1, retention=(5, 3))  # 2 layers, T = 9
    rows = time_by_call("reference", spec, random_weights(spec, seed=0), random_batch(spec, 2, 9, seed=1), repeat=1)
    calls = {row["call"] for row in rows}
    assert {"fff", "significance", "top_tokens", "select_tokens"} <= calls


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


# --- second review: profile's cycle ratio with unpriced ops, compare's --retention, JSON context and plots
# of skipped variants, the label of a pre-LN encoder's final LayerNorm


def test_profile_retention_gives_no_cycles_ratio_when_ops_are_unpriced(capsys, tmp_path):
    argv = ["profile", "minilm-l6", "--seq-len", "64", "--retention", "48,27,20,15,11,1"]
    code, out, _ = run_cli(capsys, *argv, "--hw", no_exp_hardware(tmp_path), "--format", "json")
    assert code == 0
    doc = json.loads(out)
    softmaxes = [f"encoder.layer.{j}.attention.self.softmax" for j in range(6)]
    assert [op["name"] for op in doc["hw_totals"]["unpriced_ops"]] == softmaxes
    assert doc["power"]["cycles"] == doc["hw_totals"]["cycles"]
    assert doc["power"]["cycles_ratio"] is None  # was 1.412: totals short of their softmaxes, compared
    assert doc["power"]["flops_ratio"] > 1  # the counts need no hardware: still compared
    _, out, _ = run_cli(capsys, *argv, "--hw", no_exp_hardware(tmp_path))
    assert "cycles not compared: ops without a cycle rule are missing from the totals" in out
    assert "x fewer\n" not in out + "\n"  # the FLOP and MAC ratios end in "...)", a cycles ratio in "x fewer"
    _, out, _ = run_cli(capsys, *argv, "--hw", "edge-32x32-int8", "--format", "json")
    power = json.loads(out)["power"]
    assert power["cycles_ratio"] == power["cycles_without_elimination"] / power["cycles"]


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


CRAMMED_ARCH = {  # a crammedBERT arch config (see tests/test_crammed.py) at tiny sizes: dense FFN, no head
    "num_transformer_layers": 2, "hidden_size": 24, "intermed_type": "ff", "intermed_size": 48, "nonlin": "GELU",
    "norm": "LayerNorm", "norm_eps": 1e-12, "final_norm": True, "use_bias": True,
    "embedding": {"vocab_size": 61, "pos_embedding": "learned", "max_seq_length": 40, "embedding_dim": 24,
                  "normalization": True},
    "attention": {"type": "self-attention", "causal_attention": False, "num_attention_heads": 3, "qkv_bias": True,
                  "rotary_embedding": False, "sequence_op": "torch-softmax", "skip_output_projection": False},
}


def test_a_pre_ln_encoders_final_layernorm_is_labelled_final_not_head(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "crammedBERT", "arch": CRAMMED_ARCH}))
    code, out, _ = run_cli(capsys, "profile", str(path), "--seq-len", "8", "--retention", "6,3",
                           "--by", "layer", "--format", "csv")
    assert code == 0
    rows = {r["layer"]: r for r in csv.DictReader(io.StringIO(out))}
    assert list(rows) == ["embeddings", "0", "1", "final"]  # was "head": the model has none (no pooler)
    final = rows["final"]
    C = 24
    assert (final["ops"], final["macs"], final["params"]) == ("1", "0", str(2 * C))  # one LayerNorm: gain, bias
    assert final["tokens_out"] == "3"  # it normalises the last layer's kept tokens

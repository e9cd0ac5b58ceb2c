"""`profile --hw` and `compare`: columns, JSON totals, skipped variants, plots, bad input."""

from __future__ import annotations

import csv
import io
import json

import pytest

from mabert_hw.cli import compare as compare_cli
from mabert_hw.cost import hardware
from mabert_hw.cost.counts import trace
from mabert_hw.cost.cycles import estimate
from mabert_hw.errors import UserError
from mabert_hw.spec import PRESETS

from .helpers import EDGE_TOML, no_exp_hardware, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_profile_hw_json_has_per_op_cycles_and_totals(capsys):
    code, out, _ = run_cli(capsys, "profile", "bert-base-uncased", "--seq-len", "64", "--hw", "edge-32x32-int8",
                           "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["hardware"]["name"] == "edge-32x32-int8"
    per_op = [op["hw"] for op in doc["ops"]]
    assert all("cycles" in record for record in per_op)
    totals = doc["hw_totals"]
    assert totals["cycles"] == sum(r["cycles"] for r in per_op)
    assert totals["cycles"] == sum(k["cycles"] for k in totals["by_kind"].values())
    assert totals["cycles"] == sum(k["cycles"] for k in totals["by_layer"].values())
    assert totals["energy_pj"]["total"] == pytest.approx(sum(sum(r["energy_pj"].values()) for r in per_op))
    assert totals["unpriced_ops"] == []
    direct = estimate(trace(PRESETS["bert-base-uncased"], 1, 64), hardware.load("edge-32x32-int8"))
    assert totals["cycles"] == direct.total("cycles")


@pytest.mark.parametrize("by", ["op", "layer", "kind"])
def test_profile_hw_csv_columns_sum_to_the_total(capsys, by):
    argv = ["profile", "bert-base-uncased", "--seq-len", "32", "--hw", "tpu-128x128-bf16"]
    _, out, _ = run_cli(capsys, *argv, "--by", by, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {"cycles", "time_us", "energy_uj", "bound", "util_%"} <= rows[0].keys()
    _, doc, _ = run_cli(capsys, *argv, "--format", "json")
    assert sum(int(r["cycles"]) for r in rows) == json.loads(doc)["hw_totals"]["cycles"]


def test_partial_sums_cross_the_ofmap_buffer_at_the_accumulators_width(capsys):
    """edge-32x32-int8 (WS, 32 x 32, int8 operands, int32 accumulators): MiniLM's query projection at T = 16 is
    a (16, 384) x (384, 384) GEMM. Its ofmap buffer sees 16*384*(2*ceil(384/32) - 1) partial-sum accesses of
    4 bytes each; they were priced at the operands' 1 byte."""
    code, out, _ = run_cli(capsys, "profile", "minilm-l6", "--seq-len", "16", "--hw", "edge-32x32-int8",
                           "--by", "op", "--format", "json")
    assert code == 0
    (op,) = [op for op in json.loads(out)["ops"] if op["name"] == "encoder.layer.0.attention.self.query"]
    M, K, N, R, C = 16, 384, 384, 32, 32
    ifmap, weights, partial_sums = M * K * -(-N // C), K * N, M * N * (2 * -(-K // R) - 1)
    assert op["hw"]["sram_bytes"] == 1 * ifmap + 1 * weights + 4 * partial_sums
    table = hardware.load("edge-32x32-int8").energy
    assert op["hw"]["energy_pj"]["sram"] == pytest.approx(
        ifmap * table.sram_pj_per_byte(256) + weights * table.sram_pj_per_byte(128)
        + 4 * partial_sums * table.sram_pj_per_byte(128))


def test_profile_overlap_off_costs_at_least_as_much(capsys):
    argv = ["profile", "bert-base-uncased", "--seq-len", "32", "--hw", "tpu-256x256-int8", "--format", "json"]
    _, on, _ = run_cli(capsys, *argv, "--overlap", "on")
    _, off, _ = run_cli(capsys, *argv, "--overlap", "off")
    on_ops, off_ops = json.loads(on)["ops"], json.loads(off)["ops"]
    for a, b in zip(on_ops, off_ops):
        assert a["hw"]["cycles"] == max(a["hw"]["compute_cycles"], a["hw"]["memory_cycles"])
        assert b["hw"]["cycles"] == b["hw"]["compute_cycles"] + b["hw"]["memory_cycles"]


def test_profile_table_with_a_user_hardware_file(capsys, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text((hardware.HW_DIR / "edge-32x32-int8.toml").read_text().replace("rows = 32", "rows = 8"))
    code, out, _ = run_cli(capsys, "profile", "bert-base-uncased", "--seq-len", "16", "--hw", str(path))
    assert code == 0 and "cycles" in out and "(8x32 ws int8" in out


@pytest.mark.parametrize("argv, message", [
    (["profile", "bert-base-uncased", "--hw", "nope"], "unknown hardware 'nope'"),
    (["profile", "bert-base-uncased", "--hw", "missing.toml"], "no such hardware file"),
    (["compare", "bert-base-uncased", "--variants", "bert,nope"], "unknown variant 'nope'"),
])
def test_bad_input_exits_2(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)  # flag values argparse checks: the usage line, then the message
    assert code == 2 and err.startswith("usage: mabert-hw") and "error: argument " in err and message in err
    assert "Traceback" not in err


def test_compare_table_csv_and_plots(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "compare", "bert-base-uncased", "--seq-len", "32", "--hw", "ma-motivation",
                           "--format", "csv", "--plots", str(tmp_path))
    assert code == 0
    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO(out))}
    assert set(rows) == {"bert", "ma", "power", "fff"}
    assert float(rows["bert"]["speedup"]) == 1.0
    for name in ("cycles_by_kind.png", "roofline.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_compare_lists_a_failing_variant_as_skipped(capsys, monkeypatch):
    real = compare_cli.variant_spec

    def failing(spec, name, seq_len, retention=None):
        if name == "fff":
            raise UserError("variant ffn=fff is not executable yet")
        return real(spec, name, seq_len, retention)

    monkeypatch.setattr(compare_cli, "variant_spec", failing)
    code, out, _ = run_cli(capsys, "compare", "bert-base-uncased", "--seq-len", "32", "--variants", "bert,fff")
    assert code == 0
    assert "skipped: variant ffn=fff is not executable yet" in out


def test_power_retention_schedule():
    kept = compare_cli.power_retention(128, 12)
    assert len(kept) == 12 and list(kept) == sorted(kept, reverse=True)
    assert kept[-1] == round(128 * compare_cli.POWER_LAST_LAYER_FRACTION)
    schedule = (100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5, 1)
    spec = compare_cli.variant_spec(PRESETS["bert-base-uncased"], "power", 128, schedule)
    assert spec.variant.retention[-1] == 1


def test_ma_approximator_input_grows_to_the_sequence_length():
    spec = compare_cli.variant_spec(PRESETS["bert-base-uncased"], "ma", 512)
    assert spec.variant.softmax_input == 512
    assert compare_cli.variant_spec(PRESETS["bert-base-uncased"], "ma", 64).variant.softmax_input == 128


# what profile never needs: building the parser imports every command's module, and one top-level import of
# the sweep's (scipy, through quant.calibrate) made every command load scipy
HEAVY_MODULES = ("matplotlib", "pandas", "torch", "scipy", "numba", "transformers", "tokenizers", "dask")


def test_profile_with_hardware_stays_light(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from mabert_hw.cli import main; "
            f"main(['profile', 'bert-base-uncased', '--hw', 'edge-32x32-int8', '--output', '{tmp_path / 'p.txt'}']); "
            "print(sorted(m for m in HEAVY if m in sys.modules))").replace("HEAVY", repr(HEAVY_MODULES))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_infinite_clock_is_a_one_line_error_with_exit_2(capsys, tmp_path):
    path = tmp_path / "fast.toml"
    path.write_text(EDGE_TOML.replace("clock_ghz = 1.0", "clock_ghz = inf"))
    code, _, err = run_cli(capsys, "profile", "minilm-l6", "--seq-len", "8", "--hw", str(path))
    assert code == 2 and err.count("\n") == 1 and "clock_ghz" in err


def test_overlap_without_hw_is_refused_not_ignored(capsys):
    code, _, err = run_cli(capsys, "profile", "minilm-l6", "--seq-len", "8", "--overlap", "off")
    assert code == 2 and "--overlap" in err and "--hw" in err


# ops the hardware has no cycle rule for: no cycles rather than zero, and no ratio of partial totals

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


def test_a_hardware_file_name_too_long_for_the_file_system_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "profile", "minilm-l6", "--hw", "a" * 300 + ".toml")  # was: OSError traceback
    assert code == 2 and "error: argument --hw: cannot read hardware file a" in err and "Traceback" not in err

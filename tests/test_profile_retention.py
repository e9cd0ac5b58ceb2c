"""`mabert-hw profile --retention`: PoWER-BERT counts against closed forms computed here from the
schedule, the savings it reports, config files from `power-search --out`, and bad schedules."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from mabert_hw.cli import main
from mabert_hw.spec import PRESETS

from .helpers import error_line

MODEL = "minilm-l6"
SPEC = PRESETS[MODEL]
BATCH, SEQ_LEN = 2, 64
SCHEDULES = [(48, 27, 20, 15, 11, 1), (64, 64, 30, 30, 2, 2), (40, 40, 40, 40, 40, 40)]


def profile_json(capsys, *argv: str) -> dict:
    assert main(["profile", MODEL, "--format", "json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def kept(retention) -> list[int]:
    """T_j: a layer keeps at most the tokens it was given."""
    out, current = [], SEQ_LEN
    for keep in retention:
        current = min(current, keep)
        out.append(current)
    return out


def gemm_macs_by_layer(retention) -> list[int]:
    """Layer j takes T_in = T_{j-1} tokens (T_0 = the input): Q, K, V and output projections
    4 * T_in * C^2, scores and context 2 * H * T_in^2 * D; elimination follows the attention block,
    so the FFN runs at T_j: 2 * T_j * C * F. Times the batch."""
    C, F, H, D = SPEC.hidden, SPEC.intermediate, SPEC.heads, SPEC.head_dim
    tokens = [SEQ_LEN, *kept(retention)]
    return [BATCH * (4 * t_in * C * C + 2 * H * t_in * t_in * D + 2 * t_out * C * F)
            for t_in, t_out in pairwise(tokens)]


def total_macs(retention) -> int:
    return sum(gemm_macs_by_layer(retention)) + BATCH * SPEC.hidden * SPEC.hidden  # + pooler


@pytest.mark.parametrize("retention", SCHEDULES, ids=lambda r: ",".join(map(str, r)))
def test_counts_with_retention_are_the_closed_form_at_each_layers_kept_tokens(capsys, retention):
    doc = profile_json(capsys, "--batch", str(BATCH), "--seq-len", str(SEQ_LEN),
                       "--retention", ",".join(map(str, retention)))
    by_layer = [sum(op["macs"] for op in doc["ops"] if op["layer"] == j) for j in range(SPEC.layers)]
    assert by_layer == gemm_macs_by_layer(retention)
    assert doc["totals"]["macs"] == total_macs(retention)
    ffn_tokens = [op["output_shape"][1] for op in doc["ops"] if op["name"].endswith("intermediate.dense")]
    assert ffn_tokens == kept(retention)

    power = doc["power"]
    no_elimination = [SEQ_LEN] * SPEC.layers
    assert power["kept_tokens"] == kept(retention) and power["retention"] == list(retention)
    assert power["macs"] == total_macs(retention)
    assert power["macs_without_elimination"] == total_macs(no_elimination)
    assert power["macs_ratio"] == total_macs(no_elimination) / total_macs(retention)
    plain = profile_json(capsys, "--batch", str(BATCH), "--seq-len", str(SEQ_LEN))
    assert power["flops"] == doc["totals"]["flops"]
    assert power["flops_without_elimination"] == plain["totals"]["flops"]
    assert power["flops_ratio"] == plain["totals"]["flops"] / doc["totals"]["flops"]


def test_table_states_the_flop_ratio_and_layer_rows_show_kept_tokens(capsys):
    retention = SCHEDULES[0]
    schedule = ",".join(map(str, retention))
    args = ["profile", MODEL, "--batch", str(BATCH), "--seq-len", str(SEQ_LEN), "--retention", schedule]
    assert main(args) == 0
    text = capsys.readouterr().out
    flops = profile_json(capsys, *args[2:])["power"]["flops_ratio"]
    assert f"{flops:.3f}x fewer FLOPs" in text and schedule in text
    assert main([*args, "--by", "layer", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert [int(r["tokens_out"]) for r in rows if r["layer"].isdigit()] == kept(retention)


def test_hardware_cycles_ratio_is_against_the_same_hardware_without_elimination(capsys):
    common = ["--batch", str(BATCH), "--seq-len", str(SEQ_LEN), "--hw", "edge-32x32-int8"]
    power = profile_json(capsys, *common, "--retention", "48,27,20,15,11,1")
    plain = profile_json(capsys, *common)
    assert power["power"]["cycles"] == power["hw_totals"]["cycles"]
    assert power["power"]["cycles_without_elimination"] == plain["hw_totals"]["cycles"]
    assert power["hw_totals"]["cycles"] < plain["hw_totals"]["cycles"]


def test_power_search_config_sets_the_schedule_and_the_length_it_was_searched_at(capsys, tmp_path):
    config = tmp_path / "config.json"
    retention = [30, 20, 10, 10, 5, 1]
    searched_at = 40
    config.write_text(json.dumps({"retention": retention, "seq_len": searched_at, "accuracy": 90.0}))
    doc = profile_json(capsys, "--retention", str(config))
    assert doc["seq_len"] == searched_at and doc["power"]["retention"] == retention
    assert profile_json(capsys, "--retention", str(config), "--seq-len", str(SEQ_LEN))["seq_len"] == SEQ_LEN


@pytest.mark.parametrize("retention,message", [
    ("48,27,20,15,11", "has 5 entries for 6 layers"),
    ("48,50,20,15,11,1", "non-increasing: layer 2 keeps 50 > 48"),
    ("65,27,20,15,11,1", "layer 1 keeps 65 > the 64 input tokens"),
    ("48,27,20,15,11,0", ">= 1 token"),
    ("48,x,20,15,11,1", "comma-separated integers"),
    ("missing.json", "cannot read"),
    ("list.json", "not a power-search config"),
])
def test_bad_schedules_are_one_line_errors_with_exit_2(capsys, tmp_path, monkeypatch, retention, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.json").write_text("[48, 27, 20, 15, 11, 1]")
    assert main(["profile", MODEL, "--seq-len", str(SEQ_LEN), "--retention", retention]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compare_takes_a_power_search_config_as_profile_does(capsys, tmp_path):
    retention = SCHEDULES[0]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"retention": list(retention), "seq_len": SEQ_LEN, "accuracy": 90.0}))
    assert main(["compare", MODEL, "--batch", str(BATCH), "--variants", "power", "--retention", str(config),
                 "--format", "json"]) == 0  # was exit 2: "retention must be comma-separated integers"
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["variants"]
    assert doc["seq_len"] == SEQ_LEN  # the length the config was searched at, as profile takes it
    assert row["spec"] == f"retention={retention}" and row["gmacs"] == total_macs(retention) / 1e9
    profiled = profile_json(capsys, "--batch", str(BATCH), "--retention", str(config), "--hw", "edge-32x32-int8")
    assert row["cycles"] == profiled["hw_totals"]["cycles"]
    assert main(["compare", MODEL, "--batch", str(BATCH), "--variants", "power", "--seq-len", str(SEQ_LEN),
                 "--retention", ",".join(map(str, retention)), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["variants"] == [row]  # inline: the same row


# --retention CONFIG.json: values that are not counts are refused, not reinterpreted

@pytest.mark.parametrize("config", [
    {"retention": "42"},  # was read character by character: 4,2
    {"retention": [9.7, 4.2, 3, 2, 1, 1]},  # was cut to 9,4,...
    {"retention": [True] * 6},  # was 1,1,...
])
def test_retention_that_is_not_a_list_of_counts_is_refused(tmp_path, capsys, config):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(config))
    assert main(["profile", "minilm-l6", "--retention", str(path)]) == 2
    assert "retention must be a list of integers" in error_line(capsys)


@pytest.mark.parametrize("seq_len", [True, "64", 0])
def test_searched_seq_len_that_is_not_a_length_is_refused(tmp_path, capsys, seq_len):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"retention": [8, 6, 4, 2, 1, 1], "seq_len": seq_len}))
    assert main(["profile", "minilm-l6", "--retention", str(path)]) == 2
    assert "seq_len must be a positive integer" in error_line(capsys)


def test_searched_seq_len_sets_the_profiled_length(tmp_path, capsys):
    """A valid config still sets the length: T_l = min(l_j, T_(l-1)) from T_0 = 16."""
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"retention": [8, 6, 4, 2, 1, 1], "seq_len": 16}))
    assert main(["profile", "minilm-l6", "--retention", str(path)]) == 0
    assert "16 -> 8 -> 6 -> 4 -> 2 -> 1 -> 1" in capsys.readouterr().out

"""Bad user input to quantization configs, `quant-error` and `sweep`: one-line errors (exit 2) naming
what is wrong, checked before the work; and a resumed sweep that must be the same run."""

from __future__ import annotations

import json
import re

import pytest

from mabert_hw.cli import build_parser, main
from mabert_hw.cost.counts import trace
from mabert_hw.errors import UserError
from mabert_hw.eval.tasks import TASK_FILES
from mabert_hw.eval.sweep import (COLUMNS, append_result, config_key, load_grid, record_path, run_record, run_sweep,
                                  write_run_record)
from mabert_hw.quant import config as qconfig

def _grid(tmp_path, text="act_bits = [8]\n"):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def _sweep(data_dir, grid, out, *extra) -> int:
    return main(["sweep", "minilm", "--task", "stsb", "--data", str(data_dir), "--grid", str(grid),
                 "--out", str(out), *extra])


@pytest.mark.parametrize("text, key, expected", [
    ('act_bits = "eight"\n', "act_bits", "expected an integer"),
    ("act_bits = 8.5\n", "act_bits", "expected an integer"),
    ("weight_bits = true\n", "weight_bits", "expected an integer"),
    ("quantize = 1\n", "quantize", "expected true or false"),
    ('percentile = "high"\n', "percentile", "expected a number"),
    ("percentile = 20.0\n", "percentile", "above 50"),
    ('rule = "x"\n', "rule", "expected [[rule]] tables"),
    ('residual_bits = "16"\n', "residual_bits", "expected an integer"),
    ("residual_bits = 24\n", "residual_bits", "expected an integer 2..23"),  # float32 carries codes to 23 bits
    ("[[rule]]\nkind = 3\n", "kind", "expected a string"),
    ('kind = "linear"\nact_bits = 16\n', "kind", "inside a [[rule]] table"),
    ("group_size = 0\n", "group_size", "at least 1"),
    ("seed = -1\n", "seed", "at least 0"),
])
def test_config_values_of_the_wrong_type_name_file_and_key(tmp_path, text, key, expected):
    path = tmp_path / "q.toml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        qconfig.load(path)
    assert str(path) in str(error.value) and key in str(error.value) and expected in str(error.value)


def test_cli_config_type_error_is_one_line(tmp_path, texts, minilm, data_dir, capsys):
    cfg = tmp_path / "q.toml"
    cfg.write_text('act_bits = "eight"\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--data", str(texts), "--no-sensitivity"]) == 2
    assert "error: " + str(cfg) + ": act_bits = 'eight'; expected an integer" in capsys.readouterr().err
    assert _sweep(data_dir, _grid(tmp_path, "act_bits = [8, 8.5]\n"), tmp_path / "o.csv") == 2
    assert "act_bits = 8.5; expected an integer" in capsys.readouterr().err


def test_an_unknown_field_lists_every_field_a_config_takes():
    # the list used to leave out the whole-config fields (residual_bits, residual_granularity)
    with pytest.raises(UserError) as error:
        qconfig.from_dict({"act_bitz": 8})
    listed = set(re.findall(r"\w+", str(error.value).split("unknown field 'act_bitz';")[1]))
    assert set(qconfig.SETTING_NAMES) | {"residual_bits", "residual_granularity"} <= listed


def test_rule_with_unknown_kind_is_refused():
    with pytest.raises(UserError, match=r"rule 1: kind = 'lnear' is no op kind; choose from .*linear"):
        qconfig.from_dict({"rule": [{"kind": "lnear", "act_bits": 4}]})


def test_rule_matching_no_op_warns(tmp_path, texts, minilm, capsys):
    cfg = tmp_path / "q.toml"
    cfg.write_text('[[rule]]\nname = "encoder.layr.*"\nact_bits = 4\n[[rule]]\nkind = "softmax"\nact_bits = 12\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--data", str(texts), "--limit", "2",
                 "--no-sensitivity", "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {cfg} rule 1 (name = 'encoder.layr.*') matches no op" in err
    assert "rule 2" not in err


def test_grid_with_an_empty_list_is_refused(tmp_path):
    grid = _grid(tmp_path, "act_bits = []\nweight_bits = [8]\n")
    with pytest.raises(UserError, match=r"grid.toml: act_bits = \[\]: give each field at least one value"):
        load_grid(grid)


def test_quant_error_plot_path_is_checked_first_and_report_comes_before_plot(tmp_path, texts, minilm, capsys,
                                                                             monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["quant-error", "minilm", "--data", str(texts), "--plot", str(tmp_path / "none" / "a.png")])
    assert exit_.value.code == 2 and "no such directory" in capsys.readouterr().err
    from mabert_hw.report import quant_plots

    def failing_plot(rows, png):
        assert "per tensor" in capsys.readouterr().out  # the report is out before the plot is tried
        raise OSError("disk full")

    monkeypatch.setattr(quant_plots, "plot_tensor_errors", failing_plot)
    with pytest.raises(OSError, match="disk full"):
        main(["quant-error", "minilm", "--data", str(texts), "--limit", "2", "--no-sensitivity",
              "--plot", str(tmp_path / "a.png")])


@pytest.mark.parametrize("flag", ["--out", "--plot"])
def test_sweep_output_paths_are_checked_first(tmp_path, flag, capsys):
    argv = ["sweep", "minilm", "--task", "stsb", "--data", "d", "--grid", "g", "--out", str(tmp_path / "o.csv")]
    argv += [flag, str(tmp_path / "none" / "o")]
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2 and f"argument {flag}: no such directory" in capsys.readouterr().err


def test_sweep_out_directory_and_foreign_csv_are_refused(tmp_path, minilm, data_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        _sweep(data_dir, _grid(tmp_path), tmp_path, "--resume")
    assert exit_.value.code == 2 and "is a directory" in capsys.readouterr().err
    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    assert _sweep(data_dir, _grid(tmp_path), foreign, "--resume") == 2
    assert "other.csv is not a sweep output (no 'key' column)" in capsys.readouterr().err


def test_unreachable_scheduler_is_a_user_error(tmp_path):
    pytest.importorskip("dask.distributed")
    with pytest.raises(UserError, match="cannot reach the dask scheduler at tcp://127.0.0.1:1"):
        run_sweep([], tmp_path / "o.csv", scheduler="tcp://127.0.0.1:1", connect_timeout=1)


def _finished_sweep(tmp_path, data_dir, limit, task="stsb"):
    """OUT holding one finished configuration (act_bits = 8) of a `task` run at `limit`, with its record."""
    out = tmp_path / "s.csv"
    append_result(out, {"key": config_key({"act_bits": 8}), "metric": 90.0, "seconds": 1.0, "overflows": 0,
                        "act_bits": 8}, [*COLUMNS, "act_bits"])
    write_run_record(out, run_record("minilm", "all-MiniLM-L6-v2", task, data_dir / TASK_FILES[task], limit))
    return out


def test_resume_refuses_another_run(tmp_path, minilm, data_dir, capsys):
    out = _finished_sweep(tmp_path, data_dir, 200, task="sst2")  # resumed as STS-B: MiniLM has no SST-2 head
    grid = _grid(tmp_path)
    assert main(["sweep", "minilm", "--task", "stsb", "--data", str(data_dir), "--grid", str(grid), "--out", str(out),
                 "--limit", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "s.csv holds the results of another run" in err
    assert "task: 'sst2' before, 'stsb' now" in err and "limit: 200 before, 4 now" in err


def test_resume_continues_the_same_run(tmp_path, minilm, data_dir, capsys):
    out = _finished_sweep(tmp_path, data_dir, 4)
    assert _sweep(data_dir, _grid(tmp_path), out, "--limit", "4", "--resume") == 0
    assert "1 configurations, 1 already done" in capsys.readouterr().out


def test_resume_of_a_sweep_without_record_warns_and_records(tmp_path, minilm, data_dir, capsys):
    out = _finished_sweep(tmp_path, data_dir, 4)
    record_path(out).unlink()
    assert _sweep(data_dir, _grid(tmp_path), out, "--limit", "4", "--resume") == 0
    assert "has no s.csv.run.json" in capsys.readouterr().err
    recorded = json.loads(record_path(out).read_text())
    assert (recorded["task"], recorded["limit"], recorded["model"]) == ("stsb", 4, "all-MiniLM-L6-v2")


def test_resume_help_says_what_the_same_run_is(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "same checkpoint, task, data file (path and contents), --limit and calibration" in help_text


def test_group_size_that_splits_no_linear_is_refused_before_the_work(tmp_path, texts, minilm, data_dir, capsys):
    misfit = "encoder.layer.0.attention.self.query: group_size 100 does not divide its 384 inputs"
    cfg = tmp_path / "q.toml"
    cfg.write_text('weight_granularity = "group"\ngroup_size = 100\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--data", str(texts), "--no-sensitivity"]) == 2
    assert f"error: {cfg}: {misfit} (and " in capsys.readouterr().err
    grid = _grid(tmp_path, 'weight_granularity = ["group"]\ngroup_size = [32, 100]\n')
    assert _sweep(data_dir, grid, tmp_path / "o.csv") == 2
    assert f"error: {grid}: {misfit}" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()  # refused before calibration and before the run record
    fits = qconfig.from_dict({"weight_granularity": "group", "group_size": 32})
    assert qconfig.group_misfits(fits, trace(minilm.spec, 1, 2)) == []


@pytest.mark.parametrize("requant", ["tflite", "tflite_single"])
def test_gemmlowp_requantization_of_wide_accumulators_is_refused(tmp_path, texts, minilm, requant, capsys):
    """gemmlowp multiplies int32 accumulators by a Q31 multiplier; above 2^32 the int64 product wraps."""
    config = qconfig.from_dict({"requant": requant, "acc_bits": 64})
    with pytest.raises(UserError, match=rf"requant = '{requant}' multiplies int32 accumulators .*acc_bits = 64"):
        config.settings("encoder.layer.0.output.dense", "linear")
    assert qconfig.from_dict({"requant": requant, "acc_bits": 32}).settings("any", "linear").acc_bits == 32
    cfg = tmp_path / "q.toml"
    cfg.write_text(f'requant = "{requant}"\nacc_bits = 48\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--data", str(texts), "--no-sensitivity"]) == 2
    assert "acc_bits = 48 must be at most 32" in capsys.readouterr().err


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

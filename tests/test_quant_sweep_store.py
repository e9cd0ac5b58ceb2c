"""The sweep result store: a resumed sweep whose rows carry new fields widens the CSV header once,
keeping every earlier row under its own columns (issue 5); --resume recognises a configuration however
the grid spells its numbers, refuses a CSV that is not a sweep output without touching it, and a run
record or results file that cannot be read or written is a one-line error."""

from __future__ import annotations

import csv

import pytest

from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.eval import sweep
from mabert_hw.eval.sweep import COLUMNS, append_result, config_key, done_keys, load_grid


def test_append_result_widens_header_and_keeps_rows(tmp_path):
    out = tmp_path / "results.csv"
    first = {"key": "a", "metric": 91.5, "seconds": 10, "overflows": 0, "calibrator": "minmax"}
    second = {"key": "b", "metric": 90.1, "seconds": 12, "overflows": 3, "calibrator": "mse", "nonlinear": "integer"}
    append_result(out, first, [*COLUMNS, "calibrator"])
    append_result(out, second, [*COLUMNS, "calibrator", "nonlinear"])
    append_result(out, {**first, "key": "c"}, [*COLUMNS, "calibrator"])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == ["a", "b", "c"]
    assert (rows[0]["calibrator"], rows[0]["nonlinear"]) == ("minmax", "")
    assert (rows[1]["calibrator"], rows[1]["nonlinear"], rows[1]["overflows"]) == ("mse", "integer", "3")
    assert done_keys(out) == {"a", "b", "c"}


def test_resume_drops_a_row_a_kill_cut_short(tmp_path):
    """A sweep killed while writing a row leaves a line without its newline: --resume must not count it
    as done, and the next row must not be appended onto it."""
    out = tmp_path / "results.csv"
    row = {"key": "a", "metric": 91.5, "seconds": 10, "overflows": 0}
    append_result(out, row, list(COLUMNS))
    with open(out, "a", newline="") as f:
        f.write('b,90.')  # the start of row b, then the kill
    assert done_keys(out) == {"a"}
    append_result(out, {**row, "key": "c"}, list(COLUMNS))
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["key"], r["metric"]) for r in rows] == [("a", "91.5"), ("c", "91.5")]


def test_resume_skips_a_config_whose_grid_spells_a_number_field_as_an_integer(tmp_path):
    # a row written with percentile = 99.0 used to miss the grid point percentile = 99 (the same
    # config), so --resume evaluated it again and wrote a second row
    out = tmp_path / "results.csv"
    row = {"key": '{"act_bits":8,"percentile":99.0}', "metric": 80.0, "seconds": 1.0, "overflows": 0}
    append_result(out, row, list(COLUMNS))
    grid = tmp_path / "grid.toml"
    grid.write_text("act_bits = [8]\npercentile = [99]\n")
    assert [config_key(p) in done_keys(out) for p in load_grid(grid)] == [True]


def test_keys_written_with_integer_numbers_still_match(tmp_path):
    out = tmp_path / "results.csv"
    append_result(out, {"key": '{"percentile":99}', "metric": 80.0, "seconds": 1.0, "overflows": 0}, list(COLUMNS))
    assert done_keys(out) == {config_key({"percentile": 99.0})}


def test_sweep_resume_refuses_a_foreign_csv_without_cutting_it(tmp_path, capsys, minilm, data_dir):
    # the last line (no final newline) used to be cut off first, and only then the file refused
    notes = tmp_path / "notes.csv"
    notes.write_bytes(b"alpha,1\nbeta,2")
    grid = tmp_path / "grid.toml"
    grid.write_text("act_bits = [8]\n")
    assert main(["sweep", "minilm", "--task", "stsb", "--data", str(data_dir), "--grid", str(grid), "--out",
                 str(notes), "--resume"]) == 2
    assert "is not a sweep output (no 'key' column)" in capsys.readouterr().err
    assert notes.read_bytes() == b"alpha,1\nbeta,2"


def test_a_run_record_that_is_not_an_object_is_one_line(tmp_path):
    # this used to be an AttributeError ('list' object has no attribute 'get') in sweep --resume
    out = tmp_path / "out.csv"
    sweep.record_path(out).write_text("[]")
    with pytest.raises(UserError, match="is not a run record"):
        sweep.recorded_run(out)


def test_a_results_file_that_cannot_be_written_is_one_line(tmp_path):
    # the OSError used to escape as a traceback after the configuration's work
    with pytest.raises(UserError, match="cannot write"):
        sweep.append_result(tmp_path / "no-such-dir" / "out.csv", {"key": "{}", "metric": 1.0}, list(sweep.COLUMNS))

"""The sweep result store: a resumed sweep whose rows carry new fields widens the CSV header once,
keeping every earlier row under its own columns (issue 5)."""

from __future__ import annotations

import csv

from mabert_hw.eval.sweep import COLUMNS, append_result, done_keys


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

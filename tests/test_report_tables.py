"""Report tables: the columns are the union of every row's keys, whatever the first row holds (a skipped
variant or engine first keeps the others' columns)."""

from __future__ import annotations

import csv
import re

import pytest

from mabert_hw.bench.timing import table_rows
from mabert_hw.errors import UserError
from mabert_hw.report.tables import figure, read_csv_rows, render, unpriced_count


SKIPPED_FIRST = [{"variant": "ma", "status": "skipped: no trace"}, {"variant": "bert", "status": "ok", "cycles": 7}]


@pytest.mark.parametrize("fmt", ["table", "csv", "md"])
def test_a_skipped_first_row_keeps_every_column(fmt):
    lines = render(SKIPPED_FIRST, fmt).splitlines()
    assert re.findall(r"\w+", lines[0]) == ["variant", "status", "cycles"]
    assert "7" in lines[-1]


def test_bench_table_keeps_timing_columns_when_the_first_engine_is_skipped():
    timing = {"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0, "tokens_per_s": 8.0, "gflops_per_s": 0.5,
              "ratio_vs_torch": 1.0}
    rows = table_rows({"engines": {"ort": {"skipped": "needs onnxruntime"}, "torch": timing}})
    header = render(rows, "table").splitlines()[0].split()
    assert header == ["engine", "median_ms", "min_ms", "max_ms", "tokens_per_s", "gflops_per_s", "ratio_vs_torch",
                      "note"]


@pytest.mark.parametrize("value, text", [(0.25, "0.25"), (341.3333, "341.3"), (9999.4, "9999"), (9999.6, "10,000"),
                                         (-9999.7, "-10,000"), (12345.6, "12,346"),
                                         (2.5e-6, "2.5e-06")])
def test_figures_keep_four_digits_and_no_exponent_from_ten_thousand(value, text):
    """bench-ffn's MAC ratio and fff_floor's times print through figure: .4g alone wrote 12345.6 as 1.235e+04."""
    assert figure(value) == text


def test_one_unpriced_op_is_singular():
    assert (unpriced_count(1), unpriced_count(6)) == ("1 op unpriced", "6 ops unpriced")  # was "1 ops unpriced"


def test_read_csv_rows_gives_what_the_csv_module_wrote(tmp_path):
    path = tmp_path / "rows.csv"
    rows = [{"name": "a, quoted", "value": "1"}, {"name": "b", "value": ""}]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "value"])
        writer.writeheader()
        writer.writerows(rows)
    assert read_csv_rows(path) == rows
    assert read_csv_rows(tmp_path / "absent.csv") == []


@pytest.mark.parametrize("bad", ["folder", "bytes"])
def test_read_csv_rows_refuses_an_unreadable_file_in_one_line(tmp_path, bad):
    path = tmp_path / "rows.csv"
    if bad == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"name\n\xff\xfe\n")
    with pytest.raises(UserError, match="cannot read .*rows.csv"):
        read_csv_rows(path)

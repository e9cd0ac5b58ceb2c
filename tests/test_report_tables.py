"""Report tables: the columns are the union of every row's keys, whatever the first row holds (a skipped
variant or engine first keeps the others' columns)."""

from __future__ import annotations

import re

import pytest

from mabert_hw.bench.timing import table_rows
from mabert_hw.report.tables import render


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

"""What quant-error reports: the cosine against all-zero tensors as torch computes it, exact tensors (SQNR inf)
as a change of 0, null in JSON and the top of the chart, and a sensitivity ranking of only the ops the config
quantizes."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch

from mabert_hw.cli import main
from mabert_hw.quant.error import compare, sqnr_change, with_baseline


@pytest.mark.parametrize("ref, got", [
    (np.array([1.0, -2.0, 3.0]), np.zeros(3)),  # every code rounded to zero: nothing of ref survives
    (np.zeros(3), np.array([0.5, 0.0, -1.0])),
    (np.array([1.0, -2.0, 3.0]), np.array([2.0, -4.0, 6.5])),
])
def test_cosine_matches_torch(ref, got):
    # this used to be 1.0 (a perfect score) whenever either side was all zero
    expected = torch.nn.functional.cosine_similarity(torch.tensor(ref), torch.tensor(got), dim=0).item()
    assert compare(ref, got)["cosine"] == pytest.approx(expected, abs=1e-6)


def test_cosine_of_two_zero_tensors_is_one():
    # equal tensors (noise 0, SQNR inf): full agreement, where torch's eps-guarded form says 0
    assert compare(np.zeros(4), np.zeros(4)) == {"sqnr_db": np.inf, "cosine": 1.0, "max_abs_err": 0.0}


def test_sensitivity_ranks_only_ops_the_config_quantizes(tmp_path, texts, minilm, capsys):
    cfg = tmp_path / "one.toml"
    cfg.write_text('quantize = false\n[[rule]]\nname = "encoder.layer.5.output.dense"\nquantize = true\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--data", str(texts), "--limit", "2",
                 "--top", "5", "--format", "csv"]) == 0
    rows = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert [row["tensor"] for row in rows if row["section"] == "sensitivity"] == ["encoder.layer.5.output.dense"]


def test_quant_error_csv_is_one_table(tmp_path, texts, minilm, capsys):
    """It was two titled tables of different columns (the title line read as the header: 1 column)."""
    cfg = tmp_path / "first.toml"
    cfg.write_text('quantize = false\n[[rule]]\nname = "encoder.layer.0.*"\nquantize = true\n')
    assert main(["quant-error", "minilm", "--config", str(cfg), "--baseline", "default", "--data", str(texts),
                 "--limit", "2", "--top", "3", "--format", "csv"]) == 0
    header, *rows = csv.reader(io.StringIO(capsys.readouterr().out))
    assert header == ["section", "tensor", "kind", "sqnr_db", "cosine", "max_abs_err", "overflows",
                      "baseline_sqnr_db", "delta_db"]
    assert all(len(row) == len(header) for row in rows)
    sections = [row[0] for row in rows]
    assert sections.count("sensitivity") == 3 and set(sections) == {"per_tensor", "sensitivity"}
    assert sections.index("sensitivity") == len(rows) - 3  # the ranking after the per-tensor rows
    ranked = rows[-3:]
    assert all(row[6:] == ["", "", ""] for row in ranked)  # no overflows or baseline columns of its own


def test_quant_error_help_says_what_each_format_holds(capsys):
    with pytest.raises(SystemExit):
        main(["quant-error", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "csv: one table, its first column `section` per_tensor or sensitivity" in text
    assert "table or md: a titled table per section" in text and "json: {title: rows} per section" in text


def test_top_without_the_ranking_is_refused(tmp_path, texts, capsys):
    """--top was ignored without a word under --no-sensitivity."""
    assert main(["quant-error", "minilm", "--data", str(texts), "--no-sensitivity", "--top", "5"]) == 2
    assert "--top sets the sensitivity rows shown: it has no use with --no-sensitivity" in capsys.readouterr().err


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

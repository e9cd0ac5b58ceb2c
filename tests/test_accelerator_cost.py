"""analysis/accelerator_cost.py writes where --out says (it always wrote reports/accelerator/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import analysis_script

REPORTS = Path(__file__).resolve().parents[1] / "reports" / "accelerator"


def report_state() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in REPORTS.iterdir()} if REPORTS.exists() else {}


def test_out_takes_the_report(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    script = analysis_script("accelerator_cost")
    preset = script.hardware.preset_names()[0]
    monkeypatch.setattr(script.hardware, "preset_names", lambda: [preset])  # one preset, two lengths: seconds
    monkeypatch.setattr(script, "SWEEP_SEQ_LENS", (32, 128))
    before = report_state()
    out = tmp_path / "new" / "accelerator"
    assert script.main(["--out", str(out)]) == 0
    assert report_state() == before
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "results.csv", "ma_breakdown.csv", "ma_vs_seq_len.csv", f"cycles_by_kind_{preset}.png",
         f"roofline_{preset}_T128.png", "ma_speedup_vs_T.png"])
    assert "![ma_speedup_vs_T.png](ma_speedup_vs_T.png)" in (out / "README.md").read_text()
    assert capsys.readouterr().err.strip() == f"wrote {out}"


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    script = analysis_script("accelerator_cost")
    monkeypatch.setattr(script, "main_rows", lambda spec: pytest.fail("priced before the refusal"))
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(SystemExit) as exit_:
        script.main(["--out", str(file)])
    assert exit_.value.code == 2
    assert f"error: argument --out: {file} exists and is not a directory" in capsys.readouterr().err

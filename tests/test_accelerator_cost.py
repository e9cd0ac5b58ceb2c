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


def test_ma_breakdown_sums_each_field_from_the_op_costs():
    """Cycles and energy alike: removed = BERT's softmax, LayerNorm and GELU ops, approximator = MA's
    softmax-MLP ops, net = the totals' difference, each summed here straight from the op costs."""
    from mabert_hw.cost.counts import APPROXIMATOR_MARK

    script = analysis_script("accelerator_cost")
    hw = script.hardware.load(script.hardware.preset_names()[0])
    outcomes = {o.name: o.estimate for o in script.evaluate(script.PRESETS["minilm-l6"], ["bert", "ma"], 1, 32, hw)}
    bert, ma = outcomes["bert"], outcomes["ma"]
    row = script.ma_breakdown("preset", "layer-by-layer", 32, bert, ma)
    for field, unit, scale in (("cycles", "cycles", 1), ("energy", "energy_uj", 1e-6)):
        removed = sum(getattr(c, field) for c in bert.costs if c.op.kind in ("softmax", "layernorm", "gelu"))
        approximator = sum(getattr(c, field) for c in ma.costs if APPROXIMATOR_MARK in c.op.name)
        assert removed > 0 and approximator > 0
        assert row[f"removed_{unit}"] == pytest.approx(removed * scale, rel=1e-12)
        assert row[f"approximator_{unit}"] == pytest.approx(approximator * scale, rel=1e-12)
        assert row[f"net_saved_{unit}"] == pytest.approx((bert.total(field) - ma.total(field)) * scale, rel=1e-9)

"""The PoWER-BERT frontier plot: the paper's SST-2 row is a measured speed-up (2.4x on a K80), so its star
belongs on the measured speed-up panels, not on the FLOPs-reduction one."""

from __future__ import annotations

from mabert_hw.report import power_plots

RESULTS = {"engine": "fast", "seq_len": 64, "baseline_dev_accuracy": 88.0,
           "paper_sst2": {"baseline": 93.0, "power": 92.1, "speedup": 2.4},
           "rows": [{"method": "greedy", "loss": 0.5, "flops_ratio": 3.0, "speedup_fixed_n": 2.5,
                     "speedup_dynamic_padding": 1.9}]}


def test_the_papers_star_is_on_the_speed_up_panels_only(monkeypatch, tmp_path):
    saved = []
    monkeypatch.setattr(power_plots, "save_figure", lambda fig, path: saved.append(fig))
    power_plots.plot_frontier(RESULTS, tmp_path / "frontier.png")
    flops, fixed, dynamic = saved[0].axes
    points = [[tuple(p) for c in ax.collections for p in c.get_offsets()] for ax in (flops, fixed, dynamic)]
    star = (2.4, round(93.0 - 92.1, 6))
    assert points[0] == [(3.0, 0.5)]
    assert star in [tuple(round(v, 6) for v in p) for p in points[1]] and (2.5, 0.5) in points[1]
    assert star in [tuple(round(v, 6) for v in p) for p in points[2]] and (1.9, 0.5) in points[2]

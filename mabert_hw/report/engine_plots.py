"""Engine benchmark plot: each engine's median time as a fraction of torch eager's, per shape.

One panel per model; bars grouped by (batch, seq_len); a dashed line marks a target ratio.
"""

from __future__ import annotations

from pathlib import Path

from .figures import plt, save_figure


def ratio_bars(rows: list[dict], path: Path, target: float | None = None) -> Path:
    """rows: {model, batch, seq_len, engine, ratio_vs_torch} (skipped engines: ratio None)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    width = 0.8 / max(len(engines), 1)
    for ax, model in zip(axes[0], models):
        shapes = list(dict.fromkeys((r["batch"], r["seq_len"]) for r in rows if r["model"] == model))
        for e, engine in enumerate(engines):
            ratio = {(r["batch"], r["seq_len"]): r["ratio_vs_torch"] for r in rows
                     if r["model"] == model and r["engine"] == engine}
            xs = [i + (e - (len(engines) - 1) / 2) * width for i in range(len(shapes))]
            ax.bar(xs, [ratio.get(s) or 0.0 for s in shapes], width, label=engine)
        if target is not None:
            ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
        ax.set_xticks(range(len(shapes)), [f"B={b}\nT={t}" for b, t in shapes])
        ax.set_ylabel("median time / torch eager median")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return path

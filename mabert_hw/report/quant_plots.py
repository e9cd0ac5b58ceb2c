"""Quantization plots: task metric vs bits per scheme (sweeps), per-tensor SQNR (quant-error)."""

from __future__ import annotations

from pathlib import Path

from .figures import plt, save_figure
from .tables import read_csv_rows

BIT_FIELDS = ("weight_bits", "act_bits")


def plot_metric_vs_bits(results_csv: str | Path, png: str | Path, metric_label: str = "metric") -> int:
    """One line per (varied bit field, other fields): the metric against that field's bits. Returns the
    lines drawn; with none (no bit field takes two values among otherwise equal rows) no PNG is written."""

    rows = read_csv_rows(results_csv)
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = 0
    for field in BIT_FIELDS:
        series: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            if not row.get(field):
                continue
            others = ", ".join(f"{k}={v}" for k, v in sorted(row.items())
                               if k not in (field, "key", "metric", "seconds", "overflows") and v)
            series.setdefault(others, []).append((int(row[field]), float(row["metric"])))
        for others, points in series.items():
            if len(points) > 1:
                points.sort()
                ax.plot(*zip(*points), marker="o", label=f"{field} ({others})" if others else field)
                lines += 1
    if not lines:
        plt.close(fig)
        return 0
    ax.set_xlabel("bits")
    ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, png)
    return lines


def plot_tensor_errors(rows: list[dict], png: str | Path) -> None:
    """Bar chart of SQNR (dB) per tensor, in forward order."""

    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.12), 4))
    ax.bar(range(len(rows)), [r["sqnr_db"] for r in rows])
    ax.set_xticks(range(len(rows)), [r["tensor"] for r in rows], rotation=90, fontsize=5)
    ax.set_ylabel("SQNR (dB)")
    save_figure(fig, png)

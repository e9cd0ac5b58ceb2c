"""Plots of hardware estimates (PNG files; the matplotlib set-up is in figures.py).

- stacked_cycles: one bar per variant, cycles stacked by op kind (MA-BERT's approximator apart).
- roofline: every op placed at (FLOPs per DRAM byte, achieved FLOP/s) under the array's and the vector
  unit's compute roofs and the DRAM bandwidth slope. Ops whose operands stay on chip (no DRAM bytes)
  are drawn at the right edge, marked "on chip".
"""

from __future__ import annotations

from pathlib import Path

from .figures import plt, save_figure

MARKERS = {"array": "o", "vector": "s", "memory": "^"}


def stacked_cycles(cycles_by_kind: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """cycles_by_kind: variant -> {kind: cycles}."""
    variants = list(cycles_by_kind)
    kinds = sorted({k for d in cycles_by_kind.values() for k in d},
                   key=lambda k: (-max(d.get(k, 0) for d in cycles_by_kind.values()), k))  # ties by name: a
    # set's order follows the per-process string hash, so equal-cycle kinds swapped colours between runs
    colours = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(1.6 * len(variants) + 4, 4.5))
    bottom = [0.0] * len(variants)
    for i, kind in enumerate(kinds):
        heights = [cycles_by_kind[v].get(kind, 0) / 1e6 for v in variants]
        ax.bar(variants, heights, bottom=bottom, label=kind, color=colours(i % 20))
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("cycles (millions)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path)
    return path


def roofline(estimates: dict, hw, path: Path, title: str) -> Path:
    """estimates: variant -> cost.cycles.Estimate on `hw`."""
    clock = hw.clock_ghz * 1e9
    array_peak = 2 * hw.rows * hw.cols * clock  # FLOP/s: a MAC is 2 FLOPs
    vector_peak = hw.lanes * clock  # one primitive per lane per cycle
    bandwidth = hw.dram_gb_per_s * 1e9
    points = []  # (variant, unit, intensity or None, flop/s)
    for variant, estimate in estimates.items():
        for cost in estimate.costs:
            if cost.cycles == 0 or cost.count.flops == 0:
                continue
            achieved = cost.count.flops / (cost.cycles / clock)
            intensity = cost.count.flops / cost.dram_bytes if cost.dram_bytes else None
            points.append((variant, cost.unit, intensity, achieved))
    finite = [p[2] for p in points if p[2] is not None] or [1.0]
    lo, hi = min(finite) / 4, max(max(finite), array_peak / bandwidth) * 8
    on_chip_x = hi / 2
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for peak, style, label in ((array_peak, "k-", "array roof"), (vector_peak, "k--", "vector roof")):
        xs = [lo, peak / bandwidth, hi]
        ax.plot(xs, [min(peak, bandwidth * x) for x in xs], style, lw=1, label=label)
    colours = plt.get_cmap("tab10")
    for i, variant in enumerate(estimates):
        for unit, marker in MARKERS.items():
            mine = [p for p in points if p[0] == variant and p[1] == unit]
            if mine:
                ax.scatter([p[2] if p[2] is not None else on_chip_x for p in mine], [p[3] for p in mine],
                           marker=marker, s=14, alpha=0.6, color=colours(i % 10), label=f"{variant} {unit}")
    ax.axvline(on_chip_x, color="grey", lw=0.5)
    ax.annotate("on chip", (on_chip_x, 0.02), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                color="grey", ha="right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per DRAM byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"{title}\n{hw.rows}x{hw.cols} {hw.dataflow} {hw.array_precision}, {hw.lanes} lanes, "
                 f"{hw.dram_gb_per_s:g} GB/s", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path)
    return path


def lines(series: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str, ylabel: str,
          reference: float | None = None) -> Path:
    """One line per series name of (x, y) points; an optional horizontal reference line."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, points in series.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=name)
    if reference is not None:
        ax.axhline(reference, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path

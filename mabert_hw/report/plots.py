"""Plots of hardware estimates (PNG files; the matplotlib set-up is in figures.py).

- stacked_cycles: one bar per variant, cycles stacked by op kind (MA-BERT's approximator apart). A kind
  has one colour in every figure (KINDS' order); a variant with unpriced ops has its bar hatched and
  its tick label says how many ops are missing from it.
- roofline: every op placed at (work per DRAM byte, achieved work per second) under the array's and the
  vector unit's compute roofs and the DRAM bandwidth slope. Work is the unit's own, so a point's height
  over its roof is the util the table prints (cost.cycles): FLOPs on the array (a MAC is 2), lane issue
  slots on the vector unit (a primitive takes its issue cycles: a 1-cycle add is 1, a 14-cycle
  software exp 14; counted in FLOPs, an exp-bound softmax at 100 % util sat under both roofs). Ops whose
  operands stay on chip (no DRAM bytes) are drawn at the right edge, marked "on chip". Markers are
  hollow, one colour and size per variant, the first variant largest: variants share most op shapes
  (power and fff are bert's but for some ops), and a shared op shows as nested rings, none hidden.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from matplotlib.patches import Patch

from ..cost.counts import RULES
from .figures import plt, save_figure
from .tables import unpriced_count

MARKERS = {"array": "o", "vector": "s", "memory": "^"}
# Stacking (and colour) order: the kinds that hold most cycles first, then the cost model's other kinds;
# a kind it does not know comes after, in name order.
KINDS = ("linear", "matmul", "softmax", "softmax_mlp", "layernorm", "gelu", "relu", "fff", "add", "mask")
KINDS += tuple(k for k in RULES if k not in KINDS)
PALETTE = [plt.get_cmap("tab10")(i) for i in range(10)] + [plt.get_cmap("tab20b")(i) for i in (0, 4, 8, 12, 16, 2, 6, 10, 14, 18)]
# after tab10's ten, tab20b's five hue groups, dark then light: no kind past the tenth shares a hue shade
# with one of the first ten (tab20's light tab10 shades made scale and matmul look alike)


def kind_colour(kind: str, kinds: list[str]):
    """The colour of `kind`: its place in KINDS, or after them in `kinds` (those of the figure)."""
    unknown = sorted(k for k in kinds if k not in KINDS)
    place = KINDS.index(kind) if kind in KINDS else len(KINDS) + unknown.index(kind)
    return PALETTE[place % len(PALETTE)]


def stacked_cycles(cycles_by_kind: dict[str, dict[str, float]], path: Path, title: str,
                   unpriced: dict[str, list[str]] | None = None) -> Path:
    """cycles_by_kind: variant -> {kind: cycles}; unpriced: variant -> the kinds of its ops without a cycle
    rule, one per op (their cycles are missing from its bar)."""
    unpriced = {v: kinds for v, kinds in (unpriced or {}).items() if kinds}
    variants = list(cycles_by_kind)
    present = {k for d in cycles_by_kind.values() for k in d}
    kinds = [k for k in KINDS if k in present] + sorted(present - set(KINDS))
    labels = [f"{v}\n{short_note(unpriced[v])}" if v in unpriced else v for v in variants]
    fig, ax = plt.subplots(figsize=(1.6 * len(variants) + 4, 4.5))
    bottom = [0.0] * len(variants)
    for kind in kinds:
        heights = [cycles_by_kind[v].get(kind, 0) / 1e6 for v in variants]
        bars = ax.bar(labels, heights, bottom=bottom, label=kind, color=kind_colour(kind, kinds))
        for variant, bar in zip(variants, bars):
            if variant in unpriced:
                bar.set_hatch("//")
                bar.set_edgecolor("white")
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("cycles (millions)")
    ax.set_title(title + ("\nhatched: a total short of its unpriced ops" if unpriced else ""), fontsize=9)
    swatches = [Patch(color=kind_colour(k, kinds), label=k) for k in reversed(kinds)]  # top down, as stacked;
    # plain: a hatched bar's own patch would make its kind look unpriced
    ax.legend(handles=swatches, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path)
    return path


def short_note(kinds: list[str]) -> str:
    """'6 ops unpriced' (the table's words) and their kinds: '(gelu 6)'."""
    counts = ", ".join(f"{k} {n}" for k, n in sorted(Counter(kinds).items()))
    return f"{unpriced_count(len(kinds))}\n({counts})"



def roofline(estimates: dict, hw, path: Path, title: str) -> Path:
    """estimates: variant -> cost.cycles.Estimate on `hw`."""
    clock = hw.clock_ghz * 1e9
    array_peak = 2 * hw.rows * hw.cols * clock  # FLOP/s: a MAC is 2 FLOPs
    vector_peak = hw.lanes * clock  # issue slots/s: one per lane per cycle
    bandwidth = hw.dram_gb_per_s * 1e9
    points = []  # (variant, unit, intensity or None, work/s)
    for variant, estimate in estimates.items():
        for cost in estimate.costs:
            work = op_work(cost, hw)
            if cost.cycles == 0 or work == 0:
                continue
            intensity = work / cost.dram_bytes if cost.dram_bytes else None
            points.append((variant, cost.unit, intensity, work / (cost.cycles / clock)))
    finite = [p[2] for p in points if p[2] is not None] or [1.0]
    lo, hi = min(finite) / 4, max(max(finite), array_peak / bandwidth) * 8
    on_chip_x = hi / 2
    fig, ax = plt.subplots(figsize=(8, 5))
    for peak, style, label in ((array_peak, "k-", "array roof (FLOP/s)"),
                               (vector_peak, "k--", "vector roof (issue slots/s)")):
        xs = [lo, peak / bandwidth, hi]
        ax.plot(xs, [min(peak, bandwidth * x) for x in xs], style, lw=1, label=label)
    colours = plt.get_cmap("tab10")
    n = len(estimates)
    for i, variant in enumerate(estimates):
        size = (3 + 2.5 * (n - 1 - i)) ** 2  # points^2: diameters 3, 5.5, 8, ... pt, the first variant largest
        for unit, marker in MARKERS.items():
            mine = [p for p in points if p[0] == variant and p[1] == unit]
            if mine:
                ax.scatter([p[2] if p[2] is not None else on_chip_x for p in mine], [p[3] for p in mine],
                           marker=marker, s=size, facecolors="none", edgecolors=[colours(i % 10)],
                           linewidths=0.9, label=f"{variant} {unit}")
    ax.axvline(on_chip_x, color="grey", lw=0.5)
    ax.annotate("on chip", (on_chip_x, 0.02), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                color="grey", ha="right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("work per DRAM byte (array: FLOPs; vector: lane issue slots)")
    ax.set_ylabel("achieved work/s (array: FLOP/s; vector: issue slots/s)")
    ax.set_title(f"{title}\n{hw.rows}x{hw.cols} {hw.dataflow} {hw.array_precision}, {hw.lanes} lanes, "
                 f"{hw.dram_gb_per_s:g} GB/s; a vector op's slots are its primitives x their issue cycles",
                 fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0),
              title="hollow, first variant largest:\na shared op shows as rings", title_fontsize=6)
    save_figure(fig, path)
    return path


def op_work(cost, hw) -> float:
    """An op's work in its unit's own measure: GEMM FLOPs on the array (2 * MACs, so work / (2 * rows * cols *
    cycles) is the table's util; the bias adds beside them run on the vector unit), lane issue slots on the
    vector unit (the lane-cycles of cost.cycles' util, so work / (lanes * cycles) is that util)."""
    if cost.unit == "vector":
        return cost.utilisation * hw.lanes * cost.cycles
    return cost.count.gemm_flops


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

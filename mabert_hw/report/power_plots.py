"""PoWER-BERT study plots: SST-2 accuracy loss against FLOPs reduction and measured speed-up, with the
paper's SST-2 row (93.0 -> 92.1 at 2.4x on a K80) beside ours."""

from __future__ import annotations

from pathlib import Path

from .figures import plt, save_figure

MARKERS = {"geometric": "o", "greedy": "s", "soft-extract, no retraining": "^", "soft-extract + hard retraining": "D"}


def plot_frontier(results: dict, path: Path) -> None:
    """results: analysis/power_sst2.py's results.json document."""
    panels = [("flops_ratio", "FLOPs reduction (x, from the trace)"),
              ("speedup_fixed_n", f"measured speed-up (x, {results['engine']} engine, N = {results['seq_len']})"),
              ("speedup_dynamic_padding", f"measured speed-up (x, {results['engine']}, dynamic padding)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5), sharey=True)
    paper = results["paper_sst2"]
    for ax, (key, label) in zip(axes, panels):
        for method, marker in MARKERS.items():
            rows = [r for r in results["rows"] if r["method"] == method and key in r]
            if rows:
                ax.scatter([r[key] for r in rows], [r["loss"] for r in rows], marker=marker, label=method)
        if key.startswith("speedup"):  # the paper's 2.4x is a measured speed-up, not a FLOPs reduction
            ax.scatter([paper["speedup"]], [paper["baseline"] - paper["power"]], marker="*", s=160, color="black",
                       label="paper SST-2 (BERT-base, K80, measured)")
            ax.axvline(paper["speedup"], color="grey", linestyle=":", linewidth=0.8)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"SST-2 dev accuracy loss (points, baseline {results['baseline_dev_accuracy']:.2f})")
    axes[1].legend(fontsize=8)  # the panel with every marker, the paper's star included
    fig.suptitle("PoWER-BERT on fine-tuned MiniLM-L6 (SST-2 dev)")
    save_figure(fig, path)

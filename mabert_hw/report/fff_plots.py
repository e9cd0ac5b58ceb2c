"""Plots of the FFF studies (matplotlib lives in report/ only)."""

from __future__ import annotations

from pathlib import Path

from .figures import plt, save_figure


def spearman_vs_depth(rows: list[dict], path: Path) -> Path:
    """STS-B dev Spearman of each FFF depth (layer-wise distilled; and after end-to-end knowledge
    transfer, rows named "... + kd"), with the depth-less rows (the dense model, the no-FFN control)
    as horizontal lines."""

    references = [r for r in rows if r["depth"] is None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kd, label in ((False, "FFF (layer-wise distilled)"), (True, "FFF + end-to-end KD")):
        fff = sorted((r for r in rows if r["depth"] is not None and r["model"].endswith(" + kd") == kd),
                     key=lambda r: r["depth"])
        if fff:
            ax.plot([r["depth"] for r in fff], [r["stsb_spearman"] for r in fff], "o-", label=label)
    for r, style in zip(references, ("--", ":", "-.")):
        ax.axhline(r["stsb_spearman"], color="gray", ls=style, label=r["model"])
    ax.set_xlabel("FFF depth d (d + 1 neurons visited per tree)")
    ax.set_ylabel("STS-B dev Spearman x 100")
    ax.set_title("MiniLM-L6 with FFF feed-forwards")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return path

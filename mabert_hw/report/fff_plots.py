"""Plots of the FFF studies (matplotlib lives in report/ only)."""

from __future__ import annotations

from pathlib import Path

from .figures import plt, save_figure


def spearman_vs_depth(rows: list[dict], path: Path) -> Path:
    """STS-B dev Spearman of each FFF depth, with the dense model as a horizontal line."""

    dense = [r for r in rows if r["depth"] is None]
    fff = sorted((r for r in rows if r["depth"] is not None), key=lambda r: r["depth"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["depth"] for r in fff], [r["stsb_spearman"] for r in fff], "o-", label="FFF (layer-wise distilled)")
    for r in dense:
        ax.axhline(r["stsb_spearman"], color="gray", ls="--", label=r["model"])
    ax.set_xlabel("FFF depth d (d + 1 neurons visited per tree)")
    ax.set_ylabel("STS-B dev Spearman x 100")
    ax.set_title("MiniLM-L6 with FFF feed-forwards")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return path

"""MA-BERT figures: approximator error by layer x head, error vs sentence length and padding."""

from __future__ import annotations

import json
from pathlib import Path

from ..torch_ref.softmax_error import summary_rows  # noqa: E402
from .figures import plt, save_figure
from .tables import csv_table  # noqa: E402


def write_softmax_error(out: Path, errors: dict, padding: list[dict]) -> list[Path]:
    """CSV tables by layer / head / length, padding JSON, and two PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for by in ("layer", "head", "length"):
        path = out / f"softmax_error_by_{by}.csv"
        path.write_text(csv_table(summary_rows(errors, by)))
        written.append(path)
    (out / "softmax_error_padding.json").write_text(json.dumps(padding, indent=2))
    heat = errors["mean_abs"].mean(-1)  # (L, H)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * heat.shape[1], 1 + 0.5 * heat.shape[0]))
    image = ax.imshow(heat, cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("mean |softmax - approximator|")
    fig.colorbar(image, ax=ax)
    save_figure(fig, out / "softmax_error_heatmap.png")
    by_length = summary_rows(errors, "length")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["length"] for r in by_length], [r["mean_abs"] for r in by_length], marker="o")
    left.set_xlabel("real sentence length (tokens)")
    left.set_ylabel("mean |p - q|")
    left.set_title("error vs sentence length")
    right.plot([r["padded_to"] for r in padding], [r["mean_abs_all_layers"] for r in padding], marker="o")
    right.set_xlabel("batch padded to T tokens")
    right.set_ylabel("mean |p - q|, same sentences")
    right.set_title("error vs padding")
    save_figure(fig, out / "softmax_error_length.png")
    return written + [out / "softmax_error_heatmap.png", out / "softmax_error_length.png"]


def plot_history(history: list[dict], path: Path) -> Path:
    """Knowledge-transfer loss terms per step (log scale)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    for term in ("loss", "hidden", "attention"):
        ax.plot(steps, [h[term] for h in history], label=term)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("knowledge transfer")
    ax.legend()
    save_figure(fig, path)
    return path

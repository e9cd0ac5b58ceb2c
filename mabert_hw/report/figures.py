"""What every plot shares: the headless backend and how a finished figure is written."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: CI and remote machines have none

import matplotlib.pyplot as plt  # noqa: E402

DPI = 120  # readable in a README at GitHub's content width, small enough to commit


def save_figure(fig, path: str | Path) -> Path:
    """Lay the figure out, write it as PNG and free it (pyplot keeps open figures alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)

"""What every plot shares: the headless backend and how a finished figure is written."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from ..errors import UserError

matplotlib.use("Agg")  # files only, no display: CI and remote machines have none

import matplotlib.pyplot as plt  # noqa: E402

DPI = 120  # readable in a README at GitHub's content width, small enough to commit


def save_figure(fig, path: str | Path) -> Path:
    """Lay the figure out, write it in the format its suffix names (PNG for the reports) and free it (pyplot
    keeps open figures alive)."""
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as error:  # e.g. a directory that takes no files (/proc)
        raise UserError(f"cannot write the plot {path}: {error.strerror or error}") from None
    finally:
        plt.close(fig)
    return Path(path)

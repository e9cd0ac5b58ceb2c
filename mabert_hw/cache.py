"""Where generated artifacts live (calibrations, ONNX exports, fine-tuned and converted checkpoints):
one folder outside any repository, and file names made safe from model names."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$MABERT_HW_CACHE (~ expanded), else $XDG_CACHE_HOME/mabert-hw when it is absolute (the XDG spec
    ignores a relative one), else ~/.cache/mabert-hw."""
    if os.environ.get("MABERT_HW_CACHE"):
        return Path(os.environ["MABERT_HW_CACHE"]).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", ""))
    return (xdg if xdg.is_absolute() else Path.home() / ".cache") / "mabert-hw"


CACHE_ROOT = cache_root()


def file_safe(name: str) -> str:
    """`name` with every character but letters, digits, '-', '_' and '.' replaced by '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

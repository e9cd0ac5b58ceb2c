"""Where generated artifacts live (calibrations, ONNX exports, fine-tuned and converted checkpoints):
one folder outside any repository, and file names made safe from model names."""

from __future__ import annotations

from pathlib import Path

CACHE_ROOT = Path.home() / ".cache" / "mabert-hw"


def file_safe(name: str) -> str:
    """`name` with every character but letters, digits, '-', '_' and '.' replaced by '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

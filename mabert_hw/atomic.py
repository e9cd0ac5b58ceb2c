"""Whole-file writes: a file is written under a temporary name beside it, then renamed over it, so a reader
never sees half a file and a failed or interrupted (Ctrl-C) write leaves the old file and no temporary one.

Each write has a temporary name of its own (process id and a random suffix), so two runs writing the same
file at once do not clobber or move each other's temporary. It is created as any file is (open's mode
0o666 less the umask): tempfile's files are private (0o600), which the renamed file would keep."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import UserError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside `path` for a writer that takes a file name (torch.save, torch.onnx.export);
    on leaving without an exception it replaces `path`, and in every case it is gone afterwards."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        yield temporary
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)  # there only after a failed or interrupted write


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """open(path, mode, **open_args) for writing ("w" or "wb"), through atomic_path: `path` changes only
    when the with-block ends without an exception, to the whole of what was written."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as temporary, open(temporary, "x" + mode[1:], **open_args) as handle:
        yield handle


def write_text_whole(path: str | Path, text: str) -> None:
    """path <- text through atomic_write; a write that fails (a full disk, a folder made read-only) is a
    one-line UserError naming the file, and leaves the previous file. A symlink is written through (the
    link stays, its target gets the text), as the CLI's --output files are."""
    try:
        target = Path(path).resolve()
    except RuntimeError:  # Python 3.11's resolve on a symlink loop (3.13 raises OSError)
        raise UserError(f"cannot write {path}: a loop of symbolic links") from None
    try:
        with atomic_write(target) as handle:
            handle.write(text)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None

"""Numba's kernel cache folder follows every kernel source (Numba's own key misses inlined functions)."""

from __future__ import annotations

import os

import pytest

config = pytest.importorskip("numba.core.config")

from mabert_hw.cache import CACHE_ROOT  # noqa: E402
from mabert_hw.kernels import kernel_cache_dir  # noqa: E402


def folder_for(sources, monkeypatch) -> str:
    monkeypatch.setattr(config, "CACHE_DIR", "")
    kernel_cache_dir(sources)
    return config.CACHE_DIR


def test_an_edit_of_an_inlined_helper_moves_the_cache(tmp_path, monkeypatch):
    """Editing approx.py alone (not the rows.py kernels that inline it) must give a new folder."""
    (tmp_path / "approx.py").write_text("def erf32(x):\n    return x\n")
    (tmp_path / "rows.py").write_text("from .approx import erf32\n")
    before = folder_for(tmp_path, monkeypatch)
    assert before.startswith(str(CACHE_ROOT / "numba"))
    assert folder_for(tmp_path, monkeypatch) == before  # same sources, same folder
    (tmp_path / "approx.py").write_text("def erf32(x):\n    return min(max(x, -1.0), 1.0)\n")
    assert folder_for(tmp_path, monkeypatch) != before


def test_a_cache_folder_the_user_set_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "mine"))
    kernel_cache_dir(tmp_path)
    assert config.CACHE_DIR == str(tmp_path / "mine")


def test_an_unwritable_cache_root_falls_back_to_the_temporary_directory(tmp_path, monkeypatch, capsys):
    """A read-only home used to send Numba's cache into the package's __pycache__, or, read-only too, to a
    RuntimeError traceback ("no locator available")."""
    from mabert_hw import cache

    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(cache, "CACHE_ROOT", tmp_path / "afile" / "mabert-hw")  # no folder can be made there
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    folder = folder_for(tmp_path, monkeypatch)
    private = tmp_path / "tmp" / f"mabert-hw-{os.getuid()}"
    assert folder.startswith(str(private / "numba"))
    assert private.stat().st_mode & 0o777 == 0o700
    assert "cannot write" in capsys.readouterr().err
    private.chmod(0o777)  # as another user could have made it first, open to all: never used
    assert not folder_for(tmp_path, monkeypatch).startswith(str(private))


def test_the_cache_root_follows_the_environment(tmp_path, monkeypatch):
    from mabert_hw.cache import cache_root

    monkeypatch.delenv("MABERT_HW_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "mabert-hw"
    monkeypatch.setenv("MABERT_HW_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"

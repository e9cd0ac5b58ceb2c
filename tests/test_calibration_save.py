"""Saving a calibration file: a temporary name of its own (two runs calibrating at once do not move each
other's file), the usual permissions, and a one-line error where it cannot be written."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mabert_hw.errors import UserError
from mabert_hw.quant.calibrate import Calibration, TensorStats


def _calibration() -> Calibration:
    return Calibration({"op:out": TensorStats(lo=-1.0, hi=1.0, samples=[np.linspace(-1, 1, 50, dtype=np.float32)])})


def test_calibration_save_uses_a_temporary_name_of_its_own(tmp_path):
    # every save used to write <name>.partial, so two runs calibrating at once moved each other's file
    # (FileNotFoundError); a leftover at that name now stands for the other run's file
    path = tmp_path / "cal.npz"
    (tmp_path / "cal.npz.partial").mkdir()
    _calibration().save(path)
    assert Calibration.load(path).range("op:out", "minmax", None, False) == (-1.0, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.npz", "cal.npz.partial"]


def test_calibration_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the calibration file"):
        _calibration().save(blocker / "cache" / "cal.npz")


def test_calibration_file_takes_the_usual_permissions(tmp_path):
    # a private temporary file (0600) renamed into place would have kept the cache from other users
    umask = os.umask(0)
    os.umask(umask)
    _calibration().save(tmp_path / "cal.npz")
    assert (tmp_path / "cal.npz").stat().st_mode & 0o777 == 0o666 & ~umask

"""`mabert-hw check`: its default random length fits the model (an MA-BERT approximator of n = 16 inputs
takes no 64-token batch), and a nan difference from HF is a failure, not OK."""

from __future__ import annotations

import pytest

from mabert_hw.cli import main


def test_check_default_length_fits_the_model():
    from mabert_hw.cli.check import default_random_length
    from mabert_hw.spec import VARIANTS, ModelSpec

    spec = ModelSpec("t", vocab_size=50, hidden=24, layers=1, heads=3, intermediate=40, max_positions=512)
    assert default_random_length(spec) == 64
    assert default_random_length(spec.with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": 16})) == 16
    assert default_random_length(spec.with_variant(**VARIANTS["ma"].__dict__)) == 64  # n = 128: 64 fits
    short = ModelSpec("t", vocab_size=50, hidden=24, layers=1, heads=3, intermediate=40, max_positions=40)
    assert default_random_length(short) == 40


def test_check_runs_an_ma_checkpoint_without_flags(tmp_path, capsys):
    pytest.importorskip("torch")
    from .test_ma_model import random_official_state, save_official, tiny_ma

    spec = tiny_ma(False, n=16)  # 40 positions: a default of min(64, 40) = 40 would exceed n
    path = save_official(tmp_path, spec, random_official_state(spec))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "random ids 4 x 16 " in out and "OK" in out


def test_check_fails_a_nan_row(tmp_path, capsys, config_json, monkeypatch):
    # finite weights can still overflow to nan: max() skipped nan rows, so `check` printed OK and exited 0
    from mabert_hw.torch_ref import check

    monkeypatch.setattr(check, "compare_with_hf", lambda *args: [("layer 0", 1e-13), ("layer 1", float("nan"))])
    assert main(["check", str(config_json)]) == 1
    assert "FAIL: max |diff| nan" in capsys.readouterr().out

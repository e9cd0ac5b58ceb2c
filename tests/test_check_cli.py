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


def batch_checked(monkeypatch, capsys, *argv) -> tuple[tuple[int, int], str]:
    """The (B, T) shape of the batch `check ARGV` compares (HF's side stubbed) and what it printed."""
    from mabert_hw.torch_ref import check

    shapes = []
    monkeypatch.setattr(check, "compare_with_hf", lambda ck, weights, batch, directory: shapes.append(batch.shape)
                        or [("layer 0", 0.0)])
    assert main(["check", *map(str, argv)]) == 0
    return shapes[0], capsys.readouterr().out


def test_check_batch_is_the_number_of_sequences(classifier, tmp_path, monkeypatch, capsys):
    # --batch 6 ran the 4 built-in sentences, and --batch 3 on a file of one text ran that text once
    (rows, _), out = batch_checked(monkeypatch, capsys, classifier, "--batch", "6")
    assert rows == 6 and "inputs: 6 tokenised texts (repeating 4 in turn)" in out
    one = tmp_path / "one.txt"
    one.write_text("a single sentence\n")
    (rows, _), out = batch_checked(monkeypatch, capsys, classifier, "--texts", one, "--batch", "3")
    assert rows == 3 and "inputs: 3 tokenised texts (repeating 1 in turn)" in out
    (rows, _), out = batch_checked(monkeypatch, capsys, classifier, "--batch", "2")
    assert rows == 2 and "inputs: 2 tokenised texts," in out


def test_check_cycled_texts():
    from mabert_hw.cli.check import cycled

    assert cycled(["a", "b", "c"], 2) == ["a", "b"]
    assert cycled(["a", "b"], 5) == ["a", "b", "a", "b", "a"]


def test_check_refuses_an_empty_texts_path(classifier, capsys):
    # was: the built-in sentences, silently
    from .helpers import refused

    assert refused(capsys, ["check", str(classifier), "--texts", ""]) == "mabert-hw: error: --texts is empty: " \
        "give a file of texts"


def test_check_refuses_a_missing_texts_file_before_loading_torch(tmp_path, monkeypatch, capsys):
    # the file was read after torch and the checkpoint had loaded, seconds in
    import builtins

    from .helpers import refused

    real_import = builtins.__import__

    def no_torch_yet(name, *args, **kwargs):
        assert not name.endswith("torch_ref.check") and name != "torch", f"{name} imported before the texts were read"
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch_yet)
    missing = tmp_path / "absent.txt"
    assert refused(capsys, ["check", "minilm", "--texts", str(missing)]) == \
        f"mabert-hw: error: cannot read {missing}: No such file or directory"

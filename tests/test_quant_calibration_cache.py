"""The calibration cache that sweeps and the fixed engine share: keyed by the model's weights and the
texts (not by the folder's name), written whole, read with one-line errors; and `eval --engine fixed`,
which calibrates before it quantizes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from mabert_hw import checkpoint
from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.eval.sweep import prepare_calibration
from mabert_hw.inputs import SAMPLE_TEXTS
from mabert_hw.model import forward
from mabert_hw.quant.calibrate import Calibration
from tests.test_cli_inputs_eval import STSB_HEADER, stsb_row

LINEAR_OUT = "encoder.layer.0.output.dense:out"  # a tensor whose range scales with the weights


def stsb_dir(root):
    """A GLUE-style STS-B folder: dev.tsv to evaluate, train.tsv to calibrate on."""
    folder = root / "glue" / "STS-B"
    folder.mkdir(parents=True)
    pairs = list(zip(SAMPLE_TEXTS, SAMPLE_TEXTS[1:] + SAMPLE_TEXTS[:1]))
    rows = "".join(stsb_row(str(i % 5 + 0.5), a, b) for i, (a, b) in enumerate(pairs))
    (folder / "dev.tsv").write_text(STSB_HEADER + rows)
    (folder / "train.tsv").write_text(STSB_HEADER + rows)
    return root


def scaled_copy(teacher_dir, target, factor):
    """teacher_dir's checkpoint with every weight times `factor`, in a folder named `target`."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(teacher_dir, target)
    weights = load_file(str(target / "model.safetensors"))
    save_file({k: v * np.float32(factor) for k, v in weights.items()}, str(target / "model.safetensors"))
    return target


def test_models_in_folders_of_one_name_get_their_own_calibration(teacher_dir, tmp_path):
    data = stsb_dir(tmp_path / "data") / "glue" / "STS-B" / "dev.tsv"
    first = checkpoint.load(str(scaled_copy(teacher_dir, tmp_path / "runA" / "model", 1.0)))
    second = checkpoint.load(str(scaled_copy(teacher_dir, tmp_path / "runB" / "model", 3.0)))
    assert first.spec.name == second.spec.name == "model"
    paths = [prepare_calibration(ck, "stsb", data, tmp_path / "cache") for ck in (first, second)]
    assert paths[0] != paths[1]
    spans = [Calibration.load(p).range(LINEAR_OUT, "minmax", None, False, 99.99) for p in paths]
    assert spans[1][1] > 2 * spans[0][1]  # the second model's own, larger range
    written = paths[0].stat().st_mtime_ns
    assert prepare_calibration(first, "stsb", data, tmp_path / "cache") == paths[0]  # reused, not redone
    assert paths[0].stat().st_mtime_ns == written


def test_an_interrupted_save_leaves_no_file_and_a_broken_file_is_one_line(tmp_path, monkeypatch):
    calibration = Calibration({})
    target = tmp_path / "calibration.npz"

    def killed(file, **arrays):  # the first bytes of a zip, then Ctrl-C
        if isinstance(file, (str, os.PathLike)):
            with open(file, "wb") as f:
                f.write(b"PK\x03\x04")
        else:
            file.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", killed)
    with pytest.raises(KeyboardInterrupt):
        calibration.save(target)
    assert not target.exists()
    target.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="cannot read the calibration file .*delete it"):
        Calibration.load(target)


def test_fixed_backend_without_calibration_names_the_missing_range(teacher_dir):
    from mabert_hw.inputs import random_batch

    ck = checkpoint.load(str(teacher_dir))
    batch = random_batch(ck.spec, 1, 8)
    with pytest.raises(ValueError, match=r":out has no calibrated range: calibrate the model first"):
        forward(ck.spec, ck.weights, batch.input_ids, FixedBackend(), batch.attention_mask, batch.token_type_ids)


SUBJECTS = ("A man", "A woman", "The child", "A dog", "Two cats", "The old farmer")
ACTIONS = ("is playing a flute", "is riding a horse", "is slicing an onion", "plays the guitar", "is taking off")


def many_pairs_stsb_dir(root, n):
    """As stsb_dir with n pairs of 30 made-up sentences: with SAMPLE_TEXTS' 4 pairs the tiny teacher's
    Spearman is -100 on both engines; n = 24 gives ranks that 8-bit quantization reorders."""
    folder = root / "glue" / "STS-B"
    folder.mkdir(parents=True)
    texts = [f"{s} {a}." for s in SUBJECTS for a in ACTIONS]
    rows = "".join(stsb_row(str(i * 7 % 11 / 2), texts[i % len(texts)], texts[(3 * i + 1) % len(texts)])
                   for i in range(n))
    (folder / "dev.tsv").write_text(STSB_HEADER + rows)
    (folder / "train.tsv").write_text(STSB_HEADER + rows)
    return root


def test_eval_on_the_fixed_engine_calibrates_first(teacher_dir, tmp_path, monkeypatch, capsys):
    """`eval --engine fixed` scores the default QuantConfig on the fixed backend with the cached calibration:
    its Spearman is the one computed here from those two, and not the reference engine's."""
    from mabert_hw.eval.tasks import load_stsb, stsb_spearman

    monkeypatch.setattr("mabert_hw.cache.CACHE_ROOT", tmp_path / "cache")
    pairs = 24
    data = many_pairs_stsb_dir(tmp_path / "data", pairs)
    argv = ["eval", str(teacher_dir), "--task", "stsb", "--data", str(data), "--format", "json"]
    assert main(argv + ["--engine", "fixed"]) == 0
    fixed = json.loads(capsys.readouterr().out)[0]
    assert main(argv) == 0
    reference = json.loads(capsys.readouterr().out)[0]
    cached = list((tmp_path / "cache").glob("calibration-*.npz"))
    assert len(cached) == 1
    assert fixed["engine"] == "fixed" and fixed["examples"] == reference["examples"] == pairs
    ck, task = checkpoint.load(str(teacher_dir)), load_stsb(data)
    expected = stsb_spearman(ck, task, FixedBackend(calibration=Calibration.load(cached[0])),
                             batch_size=fixed["batch_size"])
    assert fixed["spearman"] == round(expected, 2)
    assert fixed["spearman"] != reference["spearman"]


def test_another_config_beside_the_same_weights_gets_its_own_calibration(teacher_dir, tmp_path):
    """The ranges depend on the config too (here the FFN activation), not only on the weights."""
    data = stsb_dir(tmp_path / "data") / "glue" / "STS-B" / "dev.tsv"
    gelu = scaled_copy(teacher_dir, tmp_path / "a" / "model", 1.0)
    relu = scaled_copy(teacher_dir, tmp_path / "b" / "model", 1.0)
    config = json.loads((relu / "config.json").read_text())
    (relu / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    paths = [prepare_calibration(checkpoint.load(str(d)), "stsb", data, tmp_path / "cache") for d in (gelu, relu)]
    assert paths[0] != paths[1]

"""`convert` and `softmax-error` end to end on a tiny random BERT (a handful of steps only)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.cli import main
from mabert_hw.inputs import SAMPLE_TEXTS, tokenize
from mabert_hw.model import forward
from mabert_hw.spec import ModelSpec
from mabert_hw.torch_ref.hf import hf_forward, hf_model
from mabert_hw.torch_ref.ma_bert import MABertModel, load_official
from mabert_hw.weights import random_weights

from .conftest import TINY_TEACHER
from .helpers import LONG_TEXT, error_line, save_bert
from .tolerances import REFERENCE_VS_TORCH_ATOL



def test_baseline_torch_module_matches_hf():
    spec = TINY_TEACHER
    weights = random_weights(spec, seed=1)
    batch = tokenize_random(spec)
    ours = load_official(spec, weights)
    with torch.no_grad():
        out = ours(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids)))
    theirs = hf_forward(hf_model(spec, weights), batch)
    for a, b in zip(out["hidden_states"], theirs["hidden_states"]):
        assert np.abs(a.numpy() - b).max() <= REFERENCE_VS_TORCH_ATOL
    for a, b in zip(out["attentions"], theirs["attentions"]):
        assert np.abs(a.numpy() - b).max() <= REFERENCE_VS_TORCH_ATOL


def tokenize_random(spec):
    from mabert_hw.inputs import random_batch

    return random_batch(spec, 3, 12, seed=4)


def test_convert_resume_load_and_softmax_error(tmp_path, teacher_dir, corpus, capsys):
    out = tmp_path / "ma"
    common = [str(teacher_dir), "--out", str(out), "--data", str(corpus), "--softmax-input", "32",
              "--softmax-hidden", "16", "--max-len", "24", "--batch", "4", "--prefit-steps", "5",
              "--checkpoint-every", "2"]
    assert main(["convert", *common, "--steps", "2"]) == 0
    first = json.loads((out / "history.json").read_text())
    assert main(["convert", *common, "--steps", "4", "--resume"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4] and history[:2] == first
    ck = checkpoint.load(out)
    assert ck.spec.variant.softmax == "mlp" and ck.spec.variant.norm == "powernorm"
    torch_model = load_official(ck.spec, checkpoint.read_state_dict(out))
    assert isinstance(torch_model, MABertModel)
    batch = tokenize(ck.tokenizer_dir, list(SAMPLE_TEXTS))
    ours = forward(ck.spec, ck.weights, batch.input_ids, make_backend("reference"), batch.attention_mask,
                   batch.token_type_ids)
    with torch.no_grad():
        theirs = torch_model(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask,
                                                              batch.token_type_ids)))
    assert np.abs(ours.last_hidden_state - theirs["hidden_states"][-1].numpy()).max() <= REFERENCE_VS_TORCH_ATOL
    capsys.readouterr()
    assert main(["softmax-error", str(out), "--data", str(corpus), "--pad-to", "32",
                 "--output-dir", str(tmp_path / "err")]) == 0
    printed = capsys.readouterr().out
    assert "argmax_agree_%" in printed and "padding dependence" in printed
    assert (tmp_path / "err" / "softmax_error_heatmap.png").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_saved_model_gets_the_mode_of_any_file(tmp_path, umask):
    # safetensors' save_file wrote model.safetensors 0o600 while config.json and the rest were 0o644
    from mabert_hw.spec import VARIANTS
    from mabert_hw.torch_ref.export import save_ma_dir

    spec = TINY_TEACHER.with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": 16, "softmax_hidden": 4})
    previous = os.umask(umask)
    try:
        out = save_ma_dir(MABertModel(spec), tmp_path / "ma", None)
    finally:
        os.umask(previous)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == \
        {"config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask}
    assert checkpoint.load(out).spec.variant.softmax == "mlp"


def test_ablation_conversion_is_loadable(tmp_path, teacher_dir, corpus):
    out = tmp_path / "relu"
    assert main(["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--only", "relu",
                 "--steps", "1", "--max-len", "24", "--batch", "2"]) == 0
    v = checkpoint.load(out).spec.variant
    assert (v.ffn_activation, v.softmax, v.norm, v.mask) == ("relu", "exact", "layernorm", "additive")


# What a conversion records: the head's meaning, the teacher's absolute path, the learning rate it trained
# with; and softmax-error on the models convert writes.

SMALL = ("--softmax-input", "16", "--softmax-hidden", "8", "--max-len", "16", "--batch", "4")


def convert(teacher, out, corpus, *extra) -> int:
    return main(["convert", str(teacher), "--out", str(out), "--data", str(corpus), *SMALL, *extra])


def conversion(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def test_a_converted_multi_label_classifier_stays_multi_label(tmp_path, corpus, capsys):
    pytest.importorskip("torch")
    spec = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32, max_positions=64,
                     num_labels=3)
    teacher = save_bert(tmp_path / "teacher", spec, seed=4)
    head = {"problem_type": "multi_label_classification", "id2label": {"0": "a", "1": "b", "2": "c"},
            "label2id": {"a": 0, "b": 1, "c": 2}}
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, **head}))
    assert convert(teacher, tmp_path / "ma", corpus, "--steps", "0", "--prefit-steps", "0") == 0
    assert {k: conversion(tmp_path / "ma").get(k) for k in head} == head
    capsys.readouterr()
    assert main(["infer", str(tmp_path / "ma"), "--text", "a good movie", "--format", "json"]) == 0
    record, = json.loads(capsys.readouterr().out)
    assert "labels" in record and "label" not in record  # read as multi-label: a sigmoid per output
    assert abs(sum(record["probabilities"]) - 1.0) > 0.1  # three sigmoids near 1/2, not a softmax


def test_convert_records_the_teacher_by_absolute_path(tmp_path, teacher_dir, corpus, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(teacher_dir.parent)
    assert convert(teacher_dir.name, tmp_path / "ma", corpus, "--steps", "0", "--prefit-steps", "0") == 0
    recorded = conversion(tmp_path / "ma")["conversion"]["teacher"]
    assert recorded == str(teacher_dir.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["softmax-error", str(tmp_path / "ma"), "--data", str(corpus), "--max-rows", "20"]) == 0


def test_softmax_error_asks_for_the_teacher_when_an_old_record_is_relative(tmp_path, teacher_dir, corpus,
                                                                          monkeypatch, capsys):
    pytest.importorskip("torch")
    assert convert(teacher_dir, tmp_path / "ma", corpus, "--steps", "0", "--prefit-steps", "0") == 0
    config = conversion(tmp_path / "ma")
    config["conversion"]["teacher"] = "teacher-as-typed"
    (tmp_path / "ma" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["softmax-error", str(tmp_path / "ma"), "--data", str(corpus)]) == 2
    assert "'teacher-as-typed', a path relative to the directory `convert` ran in: give --teacher" in \
        error_line(capsys)


def test_presets_and_the_minilm_alias_are_recorded_as_given():
    from mabert_hw.cli.convert import teacher_record

    assert teacher_record("minilm") == "minilm" and teacher_record("bert-base-uncased") == "bert-base-uncased"


def test_a_resumed_conversion_records_the_learning_rate_it_trained_with(tmp_path, teacher_dir, corpus, capsys):
    torch = pytest.importorskip("torch")
    out = tmp_path / "ma"
    base = ("--steps", "4", "--prefit-steps", "0", "--checkpoint-every", "100")
    assert convert(teacher_dir, out, corpus, *base, "--lr", "1e-4", "--max-minutes", "0") == 0  # stops at step 1
    assert conversion(out)["conversion"]["steps_run"] == 1
    capsys.readouterr()
    assert convert(teacher_dir, out, corpus, *base, "--lr", "0.5", "--resume") == 0
    assert "keeps the first run's learning rate 0.0001 (--lr 0.5 is not used)" in capsys.readouterr().err
    used = torch.load(out / "train_state.pt", weights_only=False)["scheduler"]["base_lrs"]
    record = conversion(out)["conversion"]
    assert used == [1e-4] and record["config"]["lr"] == 1e-4
    assert record["config"]["steps"] == 4 and record["steps_run"] == 4


def test_convert_only_relu_takes_a_max_len_beyond_the_approximator(tmp_path, capsys, teacher_dir, corpus):
    # this used to be refused (--max-len 24 exceeds --softmax-input 16) although a ReLU-only student has no approximator
    assert main(["convert", str(teacher_dir), "--out", str(tmp_path / "out"), "--data", str(corpus), "--only", "relu",
                 "--softmax-input", "16", "--max-len", "24", "--steps", "1", "--prefit-steps", "0",
                 "--batch", "2"]) == 0


def test_softmax_error_defaults_on_a_model_with_64_positions(ma_wide, tmp_path, capsys):
    """The default --pad-to 64 128 and a text longer than the positions; the padding table says layer 0."""
    data = tmp_path / "texts.txt"
    data.write_text(f"{LONG_TEXT}\nA short one.\nAnother sentence here.\n")
    assert main(["softmax-error", str(ma_wide), "--data", str(data), "--output-dir", str(tmp_path / "err")]) == 0
    captured = capsys.readouterr()
    assert "--pad-to 128 skipped: above the model's 64 positions" in captured.err
    assert "1 of 3 texts truncated to the model's 64 tokens" in captured.err
    padding = json.loads((tmp_path / "err" / "softmax_error_padding.json").read_text())
    assert [row["padded_to"] for row in padding] == [64]  # --pad-to 64, the first batch's own width: not twice
    # the padding table's KL and argmax agreement are layer 0's, and labelled so
    table = captured.out.split("padding dependence")[1]
    assert "KL and argmax agreement of layer 0" in table
    assert "layer0_kl" in table and "layer0_argmax_agree_%" in table

"""Follow-ups from a review of the engines' inputs: `check` with nan rows, malformed config values,
a classifier config's label count, and torch .bin files with tensors that have no dense form. The
checkpoints are written by transformers itself (save_pretrained); HF's own reading is the reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, BertModel

from mabert_hw import checkpoint
from mabert_hw.cli import main
from mabert_hw.errors import UserError

TINY = dict(vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
            max_position_embeddings=40)


def saved_model(path, **changes):
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY)).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))
    return path


@pytest.mark.parametrize("command", [["check"], ["profile"], ["infer", "--text", "a b c"]])
def test_a_nan_weight_is_refused_at_load(tmp_path, capsys, command):
    # first `check` printed OK for nan rows (max() skipped them); then it failed them, but eval, sweep and
    # quant-error printed believable figures (accuracy 50, finite Spearman rows, nan tensors as exact)
    path = saved_model(tmp_path / "model")
    state = load_file(path / "model.safetensors")
    state["encoder.layer.1.output.dense.weight"][0, 0] = np.nan
    save_file(state, path / "model.safetensors")
    assert main([command[0], str(path), *command[1:]]) == 2
    assert "weight encoder.layer.1.output.dense.weight holds NaN or infinite values" in capsys.readouterr().err


@pytest.mark.parametrize("changes, message", [
    ({"hidden_act": ["gelu"]}, "unsupported hidden_act ['gelu']"),
    ({"layer_norm_eps": "1e-12"}, "layer_norm_eps must be a number, got '1e-12'"),  # transformers refuses it
    ({"architectures": ["BertForSequenceClassification"], "id2label": 3},
     "config 'id2label' must be a non-empty object of labels, got 3"),
    ({"architectures": ["BertForSequenceClassification"], "num_labels": 0},
     "config 'num_labels' must be at least 1, got 0"),
])
def test_malformed_config_values_are_one_line_errors(tmp_path, capsys, changes, message):
    # before: TypeError tracebacks (an unhashable activation, len() of an int)
    path = saved_model(tmp_path / "model", **changes)
    assert main(["profile", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_check_reports_a_config_transformers_refuses_in_one_line(tmp_path, capsys):
    # a whole float is a valid dimension here, but transformers 5 validates the field's type: before, its
    # StrictDataclassFieldValidationError escaped as a traceback
    path = saved_model(tmp_path / "model", hidden_size=24.0)
    assert main(["check", str(path)]) == 2
    assert "Field 'hidden_size' expected int, got float (value: 24.0)" in capsys.readouterr().err


def test_classifier_config_without_id2label_has_transformers_label_count(tmp_path):
    # before: num_labels was ignored, so a bare config read as 2 labels
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert", "num_labels": 3, **TINY}
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = BertForSequenceClassification(BertConfig.from_pretrained(tmp_path))
    assert checkpoint.load(str(tmp_path)).spec.num_labels == hf.config.num_labels == 3


@pytest.mark.parametrize("tensor, reason", [
    (lambda: torch.empty(3, 4, device="meta"), "meta device"),
    (lambda: torch.eye(3).to_sparse(), "Sparse layout"),
])
def test_torch_bin_without_a_dense_tensor_is_one_line(tmp_path, tensor, reason):
    # before: a TypeError traceback from .numpy()
    path = tmp_path / "pytorch_model.bin"
    torch.save({"embeddings.word_embeddings.weight": tensor()}, path)
    with pytest.raises(UserError, match=f"embeddings.word_embeddings.weight is not a dense tensor .*{reason}"):
        checkpoint._read_torch_bin(path)

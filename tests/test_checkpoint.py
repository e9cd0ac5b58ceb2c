"""Reading checkpoints written by HF transformers itself, and every bad-input case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import BertForMaskedLM, BertForSequenceClassification, BertModel

from mabert_hw import checkpoint
from mabert_hw.errors import UserError
from mabert_hw.spec import PRESETS
from mabert_hw.torch_ref.hf import hf_config

from .conftest import TINY_SPECS

SPEC = TINY_SPECS[0]


def save_hf(model_class, directory, safe=True):
    """save_pretrained writes safetensors; the legacy pytorch_model.bin is the same state dict pickled."""
    torch.manual_seed(0)
    model = model_class(hf_config(SPEC))
    model.save_pretrained(directory)
    if not safe:
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return model


@pytest.mark.parametrize("model_class", [BertModel, BertForSequenceClassification, BertForMaskedLM])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_reads_hf_saved_models(tmp_path, model_class, safe):
    model = save_hf(model_class, tmp_path, safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).exists()
    ck = checkpoint.load(tmp_path)
    assert ck.spec.hidden == SPEC.hidden and ck.spec.layers == SPEC.layers and ck.spec.heads == SPEC.heads
    assert ck.spec.has_pooler == (model_class is not BertForMaskedLM)
    assert ck.spec.num_labels == (model.config.num_labels if model_class is BertForSequenceClassification else 0)
    state = model.state_dict()
    prefix = "" if model_class is BertModel else "bert."
    query = f"{prefix}encoder.layer.1.attention.self.query.weight"
    np.testing.assert_array_equal(ck.weights["encoder.layer.1.attention.self.query.weight"], state[query].numpy())


def test_preset_and_bare_config(tmp_path):
    ck = checkpoint.load("bert-base-uncased")
    assert ck.spec == PRESETS["bert-base-uncased"] and ck.weights is None
    hf_config(SPEC).save_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / "config.json"):
        ck = checkpoint.load(source)
        assert ck.weights is None and ck.spec.intermediate == SPEC.intermediate


def test_minilm_alias(minilm):
    assert minilm.spec.layers == 6 and minilm.spec.hidden == 384 and minilm.tokenizer_dir is not None


def error_of(source) -> str:
    with pytest.raises(UserError) as info:
        checkpoint.load(source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "no such file or directory" in error_of(tmp_path / "nope")
    assert "missing config.json" in error_of(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "unsupported model_type 'gpt2'" in error_of(tmp_path)


def test_missing_key_and_wrong_shape(tmp_path):
    from safetensors.numpy import save_file

    save_hf(BertModel, tmp_path)
    path = tmp_path / "model.safetensors"
    state = checkpoint.read_state_dict(tmp_path)
    key = "encoder.layer.0.output.dense.weight"
    save_file({k: v for k, v in state.items() if k != key}, str(path))
    assert error_of(tmp_path) == f"missing key {key}"
    state[key] = np.zeros((3, 3), np.float32)
    save_file(state, str(path))
    assert error_of(tmp_path) == f"shape of key {key} is (3, 3) expected {(SPEC.hidden, SPEC.intermediate)}"


def test_corrupted_safetensors(tmp_path):
    save_hf(BertModel, tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: 200])
    assert "corrupted safetensors" in error_of(tmp_path)


def test_bad_json_and_bad_dims(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert "not a readable JSON config" in error_of(tmp_path)
    config = hf_config(SPEC).to_dict() | {"num_attention_heads": 5}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "not divisible by 5 heads" in error_of(tmp_path)


def test_config_file_and_its_directory_give_the_same_spec(tmp_path):
    """A bare config.json is read as its directory is: an MA config keeps its variant (softmax approximator,
    ReLU, PowerNorm) instead of falling back to a plain BERT."""
    config = hf_config(SPEC).to_dict() | {"ffn_hidden_act": "relu", "norm_type": "Power", "use_softmax_approx": True,
                                          "softmax_input_size": 16, "softmax_hidden_layer_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_dir, from_file = checkpoint.load(tmp_path).spec, checkpoint.load(tmp_path / "config.json").spec
    assert from_file == from_dir and from_file.variant != PRESETS["bert-base-uncased"].variant


@pytest.mark.parametrize("changes, key", [
    ({"num_hidden_layers": 2.7}, "num_hidden_layers"),
    ({"use_softmax_approx": True, "softmax_hidden_layer_size": 16.5}, "softmax_hidden_layer_size"),  # an MA config
])
def test_fractional_sizes_are_refused(tmp_path, changes, key):
    (tmp_path / "config.json").write_text(json.dumps(hf_config(SPEC).to_dict() | changes))
    assert f"{key} must be a whole number" in error_of(tmp_path)

"""Checkpoint layouts beyond one float32 file: bf16, training-checkpoint wrappers, TF-era LayerNorm names,
shards, per-token heads, and config values that must be refused. Wherever weights are read, they are
compared with what HF transformers' own from_pretrained reads from the same directory."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel

from mabert_hw import checkpoint
from mabert_hw.cli import main

from .test_checkpoint import error_of

# Written out here rather than derived from our spec, so HF's reading of the config is independent of ours.
CONFIG = dict(vocab_size=50, hidden_size=20, num_hidden_layers=2, num_attention_heads=5, intermediate_size=36,
              max_position_embeddings=32, type_vocab_size=3)


def tiny(model_class=BertModel, **changes):
    """A tiny HF model whose LayerNorms are random too: HF initialises them to 1 and 0, so a LayerNorm
    that from_pretrained failed to read would otherwise still match."""
    torch.manual_seed(0)
    model = model_class(BertConfig(**CONFIG, **changes))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


def assert_weights_match_hf(ck: checkpoint.Checkpoint, hf_model) -> None:
    """Every weight we read equals what HF's from_pretrained read (float32) from the same directory."""
    hf_state = {key.removeprefix("bert."): value for key, value in hf_model.state_dict().items()}
    missing = set(ck.weights) - set(hf_state)
    assert not missing, sorted(missing)
    for key, value in ck.weights.items():
        np.testing.assert_array_equal(value, hf_state[key].numpy(), err_msg=key)


def test_bf16_safetensors_read_as_hf_reads_them(tmp_path):
    tiny(BertForSequenceClassification).to(torch.bfloat16).save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as file:
        assert file.get_slice("bert.embeddings.word_embeddings.weight").get_dtype() == "BF16"
    ck = checkpoint.load(tmp_path)
    assert_weights_match_hf(ck, BertForSequenceClassification.from_pretrained(tmp_path, dtype=torch.float32))


def test_bf16_safetensors_without_torch_is_a_one_line_error(tmp_path, monkeypatch):
    tiny().to(torch.bfloat16).save_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # importing it now raises ImportError
    assert "BF16 safetensors needs torch" in error_of(tmp_path)


def test_integer_weights_are_refused(tmp_path):
    """int32 codes used to be widened to float32 and run as if they were the weights."""
    tiny().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    key = "encoder.layer.0.output.dense.weight"
    state[key] = state[key].round().astype(np.int32)
    save_file(state, tmp_path / "model.safetensors")
    assert error_of(tmp_path) == (f"weight {key} is int32, not floating point: quantized or integer "
                                  "checkpoints are not supported")


def test_bf16_safetensors_profile_exits_0(tmp_path):
    tiny().to(torch.bfloat16).save_pretrained(tmp_path)
    assert main(["profile", str(tmp_path), "--seq-len", "8"]) == 0


@pytest.mark.parametrize("wrap", [lambda state: {"state_dict": state, "epoch": 3}, lambda state: {"model": state}],
                         ids=["state_dict+epoch", "model"])
def test_training_checkpoint_wrapper_is_unwrapped(tmp_path, wrap):
    model = tiny(BertForSequenceClassification)
    model.save_pretrained(tmp_path)
    hf_model = BertForSequenceClassification.from_pretrained(tmp_path)  # read before the file is wrapped
    (tmp_path / "model.safetensors").unlink()
    torch.save(wrap(model.state_dict()), tmp_path / "pytorch_model.bin")
    assert_weights_match_hf(checkpoint.load(tmp_path), hf_model)


@pytest.mark.parametrize("file_name", ["pytorch_model.bin", "ma_bert_mlm_ckpt.pt"])  # a directory, an official MA file
def test_non_tensor_values_are_a_one_line_error(tmp_path, file_name):
    model = tiny()
    model.config.save_pretrained(tmp_path)
    torch.save({**model.state_dict(), "step": 5}, tmp_path / file_name)
    source = tmp_path if file_name == "pytorch_model.bin" else tmp_path / file_name
    assert "expected a flat state dict of name -> tensor; got 'step' -> int" in error_of(source)


def test_unpicklable_bin_is_a_one_line_error(tmp_path):
    """weights_only refuses a pickle holding other globals (NumPy strings here) with a many-line message."""
    model = tiny()
    model.config.save_pretrained(tmp_path)
    torch.save({np.str_(key): value for key, value in model.state_dict().items()}, tmp_path / "pytorch_model.bin")
    error = error_of(tmp_path)
    # the cause, not torch's advice to load with weights_only=False (which a CLI user cannot act on)
    assert "unreadable torch checkpoint (refused by torch's weights-only reader: " in error
    assert "numpy" in error and "weights_only" not in error


def test_random_bytes_bin_names_the_cause(tmp_path):
    tiny().config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(np.random.default_rng(0).bytes(2000))
    error = error_of(tmp_path)
    assert error.startswith(f"{tmp_path / 'pytorch_model.bin'}: unreadable torch checkpoint (")
    assert "weights_only" not in error and "Weights only load failed" not in error


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_weight_file_that_is_a_directory(tmp_path, name):
    """Was "corrupted safetensors file (No such device (os error 19))" and torch's IsADirectoryError."""
    tiny().config.save_pretrained(tmp_path)
    (tmp_path / name).mkdir()
    assert error_of(tmp_path) == f"{tmp_path / name} is not a file"


def test_legacy_layernorm_gamma_beta_names(tmp_path):
    """The original bert-base-uncased upload names LayerNorm parameters gamma / beta; HF renames them on load."""
    model = tiny(BertForSequenceClassification)
    model.config.save_pretrained(tmp_path)
    legacy = {key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): value
              for key, value in model.state_dict().items()}
    assert "bert.embeddings.LayerNorm.gamma" in legacy
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    hf_model = BertForSequenceClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(hf_model.state_dict(), model.state_dict(), rtol=0, atol=0)  # HF read every gamma
    assert_weights_match_hf(checkpoint.load(tmp_path), hf_model)


def test_sharded_safetensors_read_as_hf_reads_them(tmp_path):
    tiny(BertForSequenceClassification).save_pretrained(tmp_path, max_shard_size="16KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    assert_weights_match_hf(checkpoint.load(tmp_path), BertForSequenceClassification.from_pretrained(tmp_path))


def save_sharded_bin(model, directory, shards: int = 2) -> None:
    """The legacy sharded layout: pytorch_model-0000i-of-0000n.bin plus pytorch_model.bin.index.json."""
    model.config.save_pretrained(directory)
    keys = list(model.state_dict())
    weight_map = {}
    for i, part in enumerate(np.array_split(np.array(keys), shards)):
        part = [str(key) for key in part]
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({key: model.state_dict()[key] for key in part}, directory / name)
        weight_map |= {key: name for key in part}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_bin_read_as_hf_reads_it(tmp_path):
    save_sharded_bin(tiny(BertForSequenceClassification), tmp_path)
    hf_model = BertForSequenceClassification.from_pretrained(tmp_path)
    assert_weights_match_hf(checkpoint.load(tmp_path), hf_model)


def test_missing_shard_is_a_one_line_error(tmp_path):
    save_sharded_bin(tiny(), tmp_path)
    (tmp_path / "pytorch_model-00002-of-00002.bin").unlink()
    assert "shard pytorch_model-00002-of-00002.bin is missing" in error_of(tmp_path)


def test_unread_weight_file_is_refused_not_treated_as_weightless(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "model.fp16.safetensors")
    assert "weight file model.fp16.safetensors is not one this tool reads" in error_of(tmp_path)


def test_token_classification_is_refused(tmp_path):
    tiny(BertForTokenClassification, num_labels=3).save_pretrained(tmp_path)
    assert "BertForTokenClassification checkpoints are not supported" in error_of(tmp_path)


def test_token_classification_with_a_leftover_pooler_is_refused(tmp_path):
    """With pooler weights the state dict looks like a sequence classifier's; the architecture tells them apart."""
    from safetensors.torch import save_file

    model = tiny(BertForTokenClassification, num_labels=3)
    model.save_pretrained(tmp_path)
    pooler = {f"bert.{key}": value for key, value in tiny().state_dict().items() if key.startswith("pooler.")}
    save_file(model.state_dict() | pooler, str(tmp_path / "model.safetensors"))
    assert "BertForTokenClassification checkpoints are not supported" in error_of(tmp_path)


def test_classifier_without_pooler_or_architectures_is_refused(tmp_path):
    model = tiny(BertForTokenClassification, num_labels=3)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "classifier.weight without pooler weights" in error_of(tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"type_vocab_size": 0}, "type_vocab_size must be positive, got 0"),
    ({"type_vocab_size": -1}, "type_vocab_size must be positive, got -1"),
    # named by the config's key, not the spec's field (was "intermediate must be positive")
    ({"intermediate_size": 0}, "intermediate_size must be positive, got 0"),
    ({"num_attention_heads": 0}, "num_attention_heads must be positive, got 0"),
    ({"max_position_embeddings": -3}, "max_position_embeddings must be positive, got -3"),
    ({"num_hidden_layers": 10_001}, "10001 layers is past the 10,000 this tool traces"),  # profile grew without bound
    ({"architectures": 5}, "config 'architectures' must be a list of class names, got 5"),
    ({"architectures": "BertForSequenceClassification"}, "config 'architectures' must be a list of class names"),
    ({"layer_norm_eps": -1.0}, "layer norm eps must be a positive finite number, got -1.0"),
    ({"layer_norm_eps": 0.0}, "layer norm eps must be a positive finite number, got 0.0"),
    ({"layer_norm_eps": math.nan}, "layer norm eps must be a positive finite number, got nan"),
    ({"layer_norm_eps": math.inf}, "layer norm eps must be a positive finite number, got inf"),
])
def test_bad_config_values_are_refused(tmp_path, changes, message):
    config = BertConfig(**CONFIG).to_dict() | changes
    (tmp_path / "config.json").write_text(json.dumps(config))  # NaN / Infinity: json.loads accepts both
    assert message in error_of(tmp_path / "config.json")


@pytest.mark.parametrize("arch", [5, None, [1, 2]])
def test_crammed_arch_must_be_an_object(tmp_path, arch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "crammedBERT", "arch": arch}))
    assert "crammed config's 'arch' must be a JSON object" in error_of(tmp_path)


def test_bad_config_value_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(BertConfig(**CONFIG).to_dict() | {"type_vocab_size": 0}))
    assert main(["profile", str(tmp_path), "--seq-len", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "type_vocab_size must be positive" in err


def test_classifier_whose_config_names_the_base_model_still_loads(tmp_path):
    """A config copied from the base model (architectures BertForMaskedLM) says nothing of the head."""
    tiny(BertForSequenceClassification).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    assert checkpoint.load(str(tmp_path)).spec.num_labels == 2


@pytest.mark.parametrize("name", ["tf_model.h5", "flax_model.msgpack"])
def test_tensorflow_and_flax_weights_are_refused_not_treated_as_weightless(tmp_path, name):
    tiny().config.save_pretrained(tmp_path)
    (tmp_path / name).write_bytes(b"\0" * 16)
    assert name in error_of(tmp_path)

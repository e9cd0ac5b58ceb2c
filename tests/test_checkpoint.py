"""Reading checkpoints written by HF transformers itself, and every bad-input case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from transformers.activations import ACT2FN

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.spec import PRESETS
from mabert_hw.torch_ref.hf import hf_config
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .test_check_infer_inputs import save_model
from .tolerances import REFERENCE_VS_TORCH_ATOL

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
    assert error_of("/dev/null") == "/dev/null: not a checkpoint directory or file"  # was "missing config.json"


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


@pytest.mark.parametrize("key", ["use_softmax_approx", "share_softmax_nn"])
def test_ma_flags_written_as_strings_are_refused(tmp_path, key):
    """"false" is a non-empty string: bool() read it as true, so `use_softmax_approx: "false"` ran and
    counted the approximator, and `share_softmax_nn: "false"` asked for the shared approximator's keys."""
    config = hf_config(SPEC).to_dict() | {"ffn_hidden_act": "relu", "norm_type": "Power", key: "false"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert f"{key} must be true or false, got 'false'" in error_of(tmp_path)


# Checkpoints saved by transformers with values a model cannot hold: each is refused in one line, or read
# as transformers reads it.

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
    # a nan weight stops every command at load: `check` used to print OK for nan rows (max() skipped them),
    # and eval, sweep and quant-error printed believable figures (accuracy 50, finite Spearman rows, nan
    # tensors as exact)
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
    # these used to be TypeError tracebacks (an unhashable activation, len() of an int)
    path = saved_model(tmp_path / "model", **changes)
    assert main(["profile", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_check_reports_a_config_transformers_refuses_in_one_line(tmp_path, capsys):
    # a whole float is a valid dimension here, but transformers 5 validates the field's type: its
    # StrictDataclassFieldValidationError used to escape as a traceback
    path = saved_model(tmp_path / "model", hidden_size=24.0)
    assert main(["check", str(path)]) == 2
    assert "Field 'hidden_size' expected int, got float (value: 24.0)" in capsys.readouterr().err


def test_classifier_config_without_id2label_has_transformers_label_count(tmp_path):
    # num_labels used to be ignored, so a bare config read as 2 labels
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert", "num_labels": 3, **TINY}
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = BertForSequenceClassification(BertConfig.from_pretrained(tmp_path))
    assert checkpoint.load(str(tmp_path)).spec.num_labels == hf.config.num_labels == 3


@pytest.mark.parametrize("tensor, reason", [
    (lambda: torch.empty(3, 4, device="meta"), "meta device"),
    (lambda: torch.eye(3).to_sparse(), "Sparse layout"),
])
def test_torch_bin_without_a_dense_tensor_is_one_line(tmp_path, tensor, reason):
    # this used to be a TypeError traceback from .numpy()
    path = tmp_path / "pytorch_model.bin"
    torch.save({"embeddings.word_embeddings.weight": tensor()}, path)
    with pytest.raises(UserError, match=f"embeddings.word_embeddings.weight is not a dense tensor .*{reason}"):
        checkpoint._read_torch_bin(path)


def test_weights_with_more_layers_than_the_config_are_refused(tmp_path, capsys):
    # the extra layer's weights used to be ignored, even by `check`: a truncated model ran without a word
    from safetensors.numpy import save_file

    spec = TINY_SPECS[0]
    save_file(random_weights(spec, 2), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden, "num_hidden_layers": 1,
        "num_attention_heads": spec.heads, "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_positions}))
    assert main(["profile", str(tmp_path)]) == 2
    assert ("the weights hold encoder.layer.1, past the config's num_hidden_layers = 1"
            in capsys.readouterr().err)


# hidden_act gelu_python is HF's exact GELU and is read as such; gelu_accurate is the tanh form, refused

def test_gelu_python_is_read_as_the_exact_gelu_and_matches_hf(tmp_path):
    x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    torch.testing.assert_close(ACT2FN["gelu_python"](x), torch.nn.functional.gelu(x), rtol=0, atol=1e-15)
    model = save_model(BertModel, tmp_path, vocab=False, hidden_act="gelu_python").eval()
    ck = checkpoint.load(tmp_path)
    assert model.config.hidden_act == "gelu_python"
    ids = torch.from_numpy(random_batch(ck.spec, 2, 9, seed=4).input_ids)
    with torch.no_grad():
        theirs = BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()(ids).last_hidden_state
    ours = forward(ck.spec, ck.weights, ids.numpy(), make_backend("reference")).last_hidden_state
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=REFERENCE_VS_TORCH_ATOL)


def test_gelu_accurate_is_still_refused(tmp_path):
    x = torch.tensor([1.0], dtype=torch.float64)
    assert (ACT2FN["gelu_accurate"](x) - torch.nn.functional.gelu(x)).abs().item() > 1e-6  # another function
    save_model(BertModel, tmp_path, vocab=False, hidden_act="gelu_accurate")
    with pytest.raises(UserError, match="unsupported hidden_act 'gelu_accurate'"):
        checkpoint.load(tmp_path)

"""crammed BERT / UltraFastBERT checkpoints and arch configs the engines cannot run as the official code
does (broken key sets, unsupported or unbuildable configs, a rescaled attention): each a one-line
UserError, from the loader and from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mabert_hw import checkpoint
from mabert_hw.cli import main
from mabert_hw.crammed_checkpoint import parse_arch
from mabert_hw.errors import UserError
from tests.crammed_checkpoints import HIDDEN, arch_config, random_state, save_cramming, save_hf


def _break(state: dict, how: str) -> dict:
    state = dict(state)
    if how == "missing":
        del state["encoder.layers.1.norm2.weight"]
    elif how == "unexpected":
        state["encoder.layers.0.attn.dense.bias"] = np.zeros(HIDDEN, np.float32)
    elif how == "shape":
        state["encoder.layers.0.ffn.linear_in.bias"] = np.zeros(7, np.float32)
    elif how == "head":
        state["head.weight"] = np.zeros((2, 1024), np.float32)
    return state


@pytest.mark.parametrize("how,message", [
    ("missing", "missing key encoder.layers.1.norm2.weight"),
    ("unexpected", "unexpected key encoder.layers.0.attn.dense.bias"),
    ("shape", "shape of key encoder.layers.0.ffn.linear_in.bias is (7,) expected (30,)"),
    ("head", "sequence-classification heads"),
])
def test_bad_keys_are_one_line_user_errors(tmp_path, capsys, how, message):
    arch = arch_config()
    directory = save_hf(tmp_path / how, arch, _break(random_state(arch, 1), how))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checkpoint.load(directory)
    assert main(["profile", str(directory)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("changes,message", [
    ({"attention.rotary_embedding": True}, "unsupported crammed arch.attention.rotary_embedding = True"),
    ({"nonlin": "GELUglu"}, "unsupported crammed arch.nonlin = 'GELUglu'"),
    ({"final_norm": False}, "unsupported crammed arch.final_norm = False"),
])
def test_unsupported_configs_are_user_errors(tmp_path, changes, message):
    arch = arch_config(**changes)
    directory = save_hf(tmp_path / "bad", arch, random_state(arch_config(), 1))
    with pytest.raises(UserError, match=message):
        checkpoint.load(directory)


def test_crammed_keys_under_a_bert_config_are_a_user_error(tmp_path):
    directory = save_hf(tmp_path / "bert-config", arch_config(), random_state(arch_config(), 1))
    (directory / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": HIDDEN}))
    with pytest.raises(UserError, match="crammed BERT layout"):
        checkpoint.load(directory)


def test_arch_section_without_its_layer_count_names_the_key(tmp_path):
    """Was "needs its arch config: config.json with ... the 'arch' section", beside the section itself."""
    arch = arch_config()
    del arch["num_transformer_layers"]
    directory = save_hf(tmp_path / "no-layers", arch, random_state(arch_config(), 1))
    with pytest.raises(UserError, match="crammed config is missing arch.num_transformer_layers"):
        checkpoint.load(directory)


@pytest.mark.parametrize("key", ["num_transformer_layers", "attention.num_attention_heads", "embedding.max_seq_length"])
def test_a_zero_size_is_named_by_its_arch_key(key):
    """Was ModelSpec's field name ("layers must be positive"), a name the crammed config never uses."""
    with pytest.raises(UserError, match=f"crammed config has a bad value: arch.{key} must be positive, got 0"):
        parse_arch(arch_config(**{key: 0}))


def test_integer_weights_are_refused(tmp_path):
    """An int32 tensor used to be widened to float32 and run as if it were the weights."""
    arch = arch_config()
    state = random_state(arch, 1)
    key = "encoder.layers.0.ffn.linear_in.weight"
    state[key] = np.round(state[key] * 100).astype(np.int32)
    directory = save_hf(tmp_path / "int", arch, state)
    with pytest.raises(UserError, match=f"weight {key} is int32, not floating point"):
        checkpoint.load(directory)


def test_fractional_sizes_are_refused():
    arch = arch_config()
    arch["intermed_depth"] = 3.5
    with pytest.raises(UserError, match=r"arch.intermed_depth must be a whole number, got 3.5"):
        parse_arch(arch)


@pytest.mark.parametrize("changes,message", [
    ({"intermed_depth": -2}, "crammed arch.intermed_depth must be >= 0, got -2"),
    ({"hidden_size": 25, "embedding.embedding_dim": 25, "attention.num_attention_heads": 5},
     "crammed arch.embedding.pos_embedding 'scaled-sinusoidal' needs an even hidden_size, got 25"),
])
def test_unbuildable_arch_is_a_one_line_error(tmp_path, capsys, changes, message):
    """A negative depth gives trees of 0 or a fractional number of nodes; an odd width with sinusoids
    cannot fill the official table (its sin and cos columns come in pairs). Both were reported as
    something else, or as a traceback from `check` on a config without weights."""
    arch = arch_config(**changes)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        parse_arch(arch)
    directory = tmp_path / "config-only"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "crammedBERT", "arch": arch}))
    for command in ("profile", "check"):
        assert main([command, str(directory), "--seq-len", "8"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_learned_positions_take_an_odd_width():
    odd = HIDDEN + 1
    arch = arch_config(hidden_size=odd, **{"embedding.embedding_dim": odd, "embedding.pos_embedding": "learned"})
    assert parse_arch(arch).hidden == odd


@pytest.mark.parametrize("norm_factor", [np.float32(12 ** -0.5 * 1.001),  # no half-precision number
                                         np.float32(0.291015625)])  # bfloat16, 2 of its ulps from 1/sqrt(12)
def test_a_rescaled_attention_is_still_refused(tmp_path, capsys, norm_factor):
    arch = arch_config(**{"attention.num_attention_heads": 2})
    state = random_state(arch, seed=4)
    state.update({k: np.array(norm_factor) for k in state if k.endswith("norm_factor")})
    save_cramming(tmp_path / "rescaled", arch, state)
    assert main(["check", str(tmp_path / "rescaled"), "--seq-len", "8"]) == 2
    err = capsys.readouterr().err
    assert f"norm_factor is {float(norm_factor)!r}, not 1/sqrt(12): a rescaled attention" in err
    assert err.count("\n") == 1

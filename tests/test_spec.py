"""ModelSpec and Variant refuse values outside their types (FFF trees without a whole number of nodes, unknown
kinds, strings where a number is needed), and a checkpoint config carrying one is a one-line error."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mabert_hw import checkpoint
from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.fff import n_nodes
from mabert_hw.spec import PRESETS, Variant, real_number, whole_number

from .conftest import TINY_SPECS
from .test_crammed_costs import crammed_spec


@pytest.mark.parametrize("changes", [{"fff_depth": -2}, {"fff_depth": -1}, {"fff_trees": 0}, {"fff_depth": 1.5}])
def test_fff_settings_without_a_whole_tree_are_refused(changes):
    if "fff_depth" in changes:  # what the tree's node count would be: no whole, positive number
        nodes = n_nodes(changes["fff_depth"])
        assert nodes < 1 or nodes != int(nodes)
    with pytest.raises(UserError, match=next(iter(changes))):
        Variant(ffn="fff", **changes)
    with pytest.raises(UserError, match=next(iter(changes))):
        TINY_SPECS[0].with_variant(ffn="fff", **changes)


@pytest.mark.parametrize("changes", [
    {"softmax_hidden": -5}, {"softmax_hidden": 0}, {"softmax_input": 0}, {"softmax_input": -3},
    {"mask": "bogus"}, {"softmax": "sparse"}, {"norm": "rmsnorm"}, {"ffn": "moe"},
    {"norm_position": "sandwich"}, {"ffn_activation": "silu"},
])
def test_variant_refuses_values_outside_its_types(changes):
    with pytest.raises(UserError, match=next(iter(changes))):
        Variant(**changes)


def test_spec_refuses_an_unknown_position_kind():
    with pytest.raises(UserError, match="positions"):
        replace(PRESETS["minilm-l6"], positions="rotary")


def write_config(directory, config: dict):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_ma_checkpoint_with_negative_hidden_is_one_line(tmp_path, capsys):
    config = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64, "ffn_hidden_act": "relu", "norm_type": "Power",
              "use_softmax_approx": True, "share_softmax_nn": False, "softmax_input_size": 128,
              "softmax_hidden_layer_size": -5}
    directory = write_config(tmp_path / "ma", config)
    assert main(["profile", str(directory), "--seq-len", "16", "--by", "op"]) == 2
    err = capsys.readouterr().err
    assert "softmax_hidden must be a whole number >= 1, got -5" in err and err.count("\n") == 1


def test_strings_are_not_numbers():
    with pytest.raises(ValueError, match="must be a whole number"):
        whole_number("3", "num_hidden_layers")
    with pytest.raises(ValueError, match="must be a number"):
        real_number("1e-12", "layer_norm_eps")
    assert whole_number(3.0, "x") == 3 and real_number(1, "x") == 1.0
    config = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": "2",
              "num_attention_heads": 4, "intermediate_size": 64}
    with pytest.raises(UserError, match="num_hidden_layers must be a whole number, got '2'"):
        checkpoint.spec_from_config(config, "string-layers")
    with pytest.raises(UserError, match="arch.norm_eps must be a number, got '1e-12'"):
        crammed_spec(norm_eps="1e-12")
    with pytest.raises(UserError, match="layer norm eps"):
        replace(PRESETS["minilm-l6"], eps="1e-12")

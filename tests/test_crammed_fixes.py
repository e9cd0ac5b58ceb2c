"""Review of the crammed BERT / UltraFastBERT loader: state dicts saved from wrapped training models,
and arch configs the official code cannot build, which must be one-line errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.cli import main
from mabert_hw.crammed_checkpoint import parse_arch
from mabert_hw.errors import UserError
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.torch_ref.crammed import crammed_hidden_states, load_official
from tests.test_crammed import HIDDEN, arch_config, random_state, save_cramming
from tests.tolerances import REFERENCE_VS_TORCH_ATOL


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_state_saved_from_a_wrapped_model_loads(tmp_path, prefix):
    """cramming saves its engine's model.state_dict(): `module.` keys under DistributedDataParallel,
    `_orig_mod.` from a torch.compile'd module. The loaded model must be the torch crammed model
    loaded from the bare keys."""
    arch = arch_config()
    state = random_state(arch, seed=4)
    ck = checkpoint.load(save_cramming(tmp_path / "wrapped", arch, {prefix + k: v for k, v in state.items()}))
    batch = random_batch(ck.spec, batch=2, seq_len=11, seed=2)
    ours = forward(ck.spec, ck.weights, batch.input_ids, make_backend("reference"), batch.attention_mask,
                   batch.token_type_ids)
    theirs = crammed_hidden_states(load_official(parse_arch(arch), state), batch.input_ids, batch.attention_mask)
    for layer, (got, want) in enumerate(zip(ours.hidden_states, theirs, strict=True)):
        diff = np.abs(got - want).max()
        assert diff <= REFERENCE_VS_TORCH_ATOL, f"hidden state {layer}: maxdiff {diff:.3g}"


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

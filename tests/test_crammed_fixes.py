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


def save_half(directory, arch: dict, state: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    """A checkpoint saved after model.to(dtype), as cramming's save_final_model writes it (model_config.json
    + model.pth); returns the stored values, widened to float32."""
    half = {k: torch.from_numpy(v).to(dtype) if v.dtype == np.float32 else torch.from_numpy(v)
            for k, v in state.items()}
    directory.mkdir(parents=True)
    (directory / "model_config.json").write_text(json.dumps(arch))
    torch.save(half, directory / "model.pth")
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in half.items()}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoint_runs_its_stored_score_scale(tmp_path, dtype):
    """A half-precision model stores norm_factor = 1/sqrt(D) rounded to its dtype (1/sqrt(12) -> 0.2890625
    in bfloat16) and multiplies the scores by it. It was refused as a rescaled attention; the engines must
    now match the torch crammed model loaded from the stored values (its buffer holds the rounded scale;
    1/sqrt(D) itself would be off by ~1e-3 here)."""
    pytest.importorskip("numba")
    arch = arch_config(**{"attention.num_attention_heads": 2})  # D = 12: the scale rounds by 1e-4 to 1e-3
    stored = save_half(tmp_path / dtype, arch, random_state(arch, seed=4, std=0.4), getattr(torch, dtype))
    ck = checkpoint.load(tmp_path / dtype)
    model = load_official(parse_arch(arch), stored)
    want_scale = torch.tensor(12).rsqrt().to(getattr(torch, dtype)).item()
    assert model.encoder.layers[0].attn.self_attention.norm_factor.item() == want_scale != 12 ** -0.5
    batch = random_batch(ck.spec, batch=3, seq_len=17, seed=5)
    theirs = crammed_hidden_states(model, batch.input_ids, batch.attention_mask)
    for engine in ("reference", "fast"):
        ours = forward(ck.spec, ck.weights, batch.input_ids, make_backend(engine), batch.attention_mask,
                       batch.token_type_ids)
        for layer, (got, want) in enumerate(zip(ours.hidden_states, theirs, strict=True)):
            diff = np.abs(got - want).max()
            assert diff <= REFERENCE_VS_TORCH_ATOL, f"{engine}, hidden state {layer}: maxdiff {diff:.3g}"


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

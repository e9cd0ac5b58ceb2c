"""crammed BERT / UltraFastBERT checkpoints (tests/crammed_checkpoints.py writes them as the official code
saves them) loaded by mabert_hw and run by every backend against an independent torch module with the
official structure (torch_ref/crammed.py)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.cli import main
from mabert_hw.cost.counts import trace
from mabert_hw.crammed_checkpoint import parse_arch, sinusoidal_table
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.torch_ref.crammed import (
    ScriptableLMForPreTraining,
    SinusoidalPositional,
    crammed_hidden_states,
    load_official,
)
from mabert_hw.weights import FINAL_NORM, expected_shapes
from tests.crammed_checkpoints import (
    CASES,
    HIDDEN,
    LAYERS,
    POSITIONS,
    VOCAB,
    arch_config,
    load_case,
    official_key_shapes,
    random_state,
    save_cramming,
    save_half,
)
from tests.tolerances import (
    FAST_VS_REFERENCE_ATOL,
    FAST_VS_REFERENCE_RTOL,
    REFERENCE_VS_TORCH_ATOL,
    SINUSOID_TABLE_ATOL,
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_module_names_its_state_the_official_way(case):
    arch = arch_config(**CASES[case][0])
    module = ScriptableLMForPreTraining(parse_arch(arch), VOCAB)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == official_key_shapes(arch)


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_matches_the_torch_crammed_model(tmp_path, case):
    arch, state, ck = load_case(tmp_path, case)
    assert ck.spec.variant.norm_position == "pre" and not ck.spec.has_pooler
    assert ck.spec.variant.ffn == ("fff" if arch["intermed_type"] == "fff" else "dense")
    assert {k: v.shape for k, v in ck.weights.items()} == expected_shapes(ck.spec)
    batch = random_batch(ck.spec, batch=3, seq_len=17, seed=5)
    assert batch.attention_mask.min() == 0 and batch.token_type_ids.max() == 1  # padding; segment ids ignored
    ours = forward(ck.spec, ck.weights, batch.input_ids, make_backend("reference"), batch.attention_mask,
                   batch.token_type_ids)
    theirs = crammed_hidden_states(load_official(parse_arch(arch), state), batch.input_ids, batch.attention_mask)
    assert len(ours.hidden_states) == len(theirs) == LAYERS + 1
    for layer, (got, want) in enumerate(zip(ours.hidden_states, theirs)):
        diff = np.abs(got - want)
        assert diff.max() <= REFERENCE_VS_TORCH_ATOL, f"hidden state {layer}: maxdiff {diff.max():.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_and_trace_run_the_reference_ops(tmp_path, case):
    pytest.importorskip("numba")
    _, _, ck = load_case(tmp_path, case)
    batch = random_batch(ck.spec, batch=4, seq_len=POSITIONS - 3, seed=6)
    runs = {}
    for name in ("reference", "fast"):
        backend = make_backend(name, record=True)
        runs[name] = forward(ck.spec, ck.weights, batch.input_ids, backend, batch.attention_mask,
                             batch.token_type_ids), backend.ops
    (fast, fast_ops), (reference, reference_ops) = runs["fast"], runs["reference"]
    for layer, (got, want) in enumerate(zip(fast.hidden_states, reference.hidden_states)):
        bound = FAST_VS_REFERENCE_ATOL + FAST_VS_REFERENCE_RTOL * np.abs(want)
        assert (np.abs(got - want) <= bound).all(), f"hidden state {layer}: maxdiff {np.abs(got - want).max():.3g}"
    assert fast_ops == reference_ops == trace(ck.spec, *batch.shape)


def test_fast_pre_ln_runs_each_gemm_once(tmp_path, monkeypatch):
    """The pre-LN residual sums are read twice; `finished` forms each once, so the fast engine calls
    as many GEMM kernels as for the same model post-LN (otherwise a sum's GEMM reruns for its second reader)."""
    pytest.importorskip("numba")
    from mabert_hw.backends import fast

    _, _, ck = load_case(tmp_path, "ff-learned-biases")
    calls = Counter()
    gemm_kernels = ("linear_bias", "linear_bias_act", "linear_add_layernorm", "linear_bias_add")
    def counted(name, kernel):
        def run(*args):
            calls[name] += 1
            return kernel(*args)
        return run

    for name in gemm_kernels:
        monkeypatch.setattr(fast, name, counted(name, getattr(fast, name)))
    batch = random_batch(ck.spec, batch=2, seq_len=16, seed=1)
    post = ck.spec.with_variant(norm_position="post")
    gemms = {}
    for spec in (ck.spec, post):
        calls.clear()
        forward(spec, ck.weights, batch.input_ids, make_backend("fast"), batch.attention_mask, batch.token_type_ids)
        gemms[spec.variant.norm_position] = sum(calls.values())
    gemms_per_layer = 4  # the fused query/key/value, the attention output, the FFN's two
    assert gemms["pre"] == gemms["post"] == ck.spec.layers * gemms_per_layer


def test_pre_ln_trace_moves_the_layernorms_and_adds_the_final_one(tmp_path):
    _, _, ck = load_case(tmp_path, "fff-scaled-sinusoidal")
    pre = trace(ck.spec, 2, 16)
    post = trace(ck.spec.with_variant(norm_position="post"), 2, 16)
    final = [op for op in pre if op.name == FINAL_NORM]
    assert len(final) == 1 and final[0].kind == "layernorm"
    assert Counter(op for op in pre if op.name != FINAL_NORM) == Counter(post)
    norms_at = [[i for i, op in enumerate(ops) if op.kind == "layernorm"] for ops in (pre, post)]
    assert norms_at[0][:-1] != norms_at[1]  # the same ops, the norms sit elsewhere


def test_sinusoidal_table_is_the_official_formula():
    want = SinusoidalPositional(HIDDEN, POSITIONS).pe.numpy()
    assert np.abs(sinusoidal_table(POSITIONS, HIDDEN) - want).max() <= SINUSOID_TABLE_ATOL


def test_profile_counts_the_fff_walk(tmp_path, capsys):
    arch, _, _ = load_case(tmp_path, "fff-scaled-sinusoidal")
    tokens, trees, depth = 16, arch["intermed_size"], arch["intermed_depth"]
    assert main(["profile", str(tmp_path / "fff-scaled-sinusoidal"), "--seq-len", str(tokens), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert "norm_position=pre" in document["variant"] and not document["unknown_ops"]
    fff = [op for op in document["ops"] if op["kind"] == "fff"]
    visits = tokens * trees * (depth + 1)  # each token visits depth + 1 nodes of each tree
    assert [op["macs"] for op in fff] == [visits * 2 * HIDDEN] * LAYERS  # one dot and one axpy of C per visit
    assert [op["elementwise"]["cmp"] for op in fff] == [tokens * trees * depth] * LAYERS
    assert main(["profile", str(tmp_path / "fff-scaled-sinusoidal"), "--seq-len", str(tokens), "--by", "kind"]) == 0
    assert any(line.split()[:1] == ["fff"] for line in capsys.readouterr().out.splitlines())


def test_check_command_compares_with_the_torch_crammed_model(tmp_path, capsys):
    load_case(tmp_path, "ff-learned-biases")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"model_type": "crammedBERT", "arch": arch_config()}))
    for directory in (tmp_path / "ff-learned-biases", config_only):
        assert main(["check", str(directory), "--seq-len", "12", "--atol", str(REFERENCE_VS_TORCH_ATOL)]) == 0
        out = capsys.readouterr().out
        assert "torch_ref.crammed" in out and f"layer {LAYERS - 1}" in out and "OK" in out


# State dicts as training runs save them: from wrapped models, and in half precision.

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

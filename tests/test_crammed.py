"""crammed BERT / UltraFastBERT checkpoints: the official key set, written down here from the official
code, saved as the official code saves it, loaded by mabert_hw, and run by every backend against an
independent torch module with the official structure (torch_ref/crammed.py)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.numpy import save_file

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.cli import main
from mabert_hw.cost.counts import trace
from mabert_hw.crammed_checkpoint import parse_arch, sinusoidal_table
from mabert_hw.errors import UserError
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.torch_ref.crammed import (
    ScriptableLMForPreTraining,
    SinusoidalPositional,
    crammed_hidden_states,
    load_official,
)
from mabert_hw.weights import FINAL_NORM, expected_shapes
from tests.tolerances import (
    FAST_VS_REFERENCE_ATOL,
    FAST_VS_REFERENCE_RTOL,
    REFERENCE_VS_TORCH_ATOL,
    SINUSOID_TABLE_ATOL,
)

VOCAB, HIDDEN, HEADS, LAYERS, POSITIONS = 61, 24, 3, 2, 40


def arch_config(**changes) -> dict:
    """pbelcak/UltraFastBERT training/cramming/config/arch/crammed-bert-fff.yaml, resolved as
    OmegaConf.to_container(resolve=True) writes it, at tiny sizes; `changes` use dotted paths."""
    arch = {
        "architectures": ["ScriptableCrammedBERT"], "num_transformer_layers": LAYERS, "intermed_type": "fff",
        "hidden_size": HIDDEN, "intermed_size": 2, "intermed_depth": 3, "hidden_dropout_prob": 0.1,
        "norm": "LayerNorm", "norm_eps": 1e-12, "norm_scheme": "pre", "nonlin": "GELU", "tie_weights": True,
        "decoder_bias": False, "sparse_prediction": 0.25, "loss": "cross-entropy", "objective_layout": "MLM",
        "embedding": {"vocab_size": VOCAB, "pos_embedding": "scaled-sinusoidal", "dropout_prob": 0.1,
                      "pad_token_id": 0, "max_seq_length": POSITIONS, "embedding_dim": HIDDEN,
                      "normalization": True, "stable_low_precision": False},
        "attention": {"type": "self-attention", "causal_attention": False, "num_attention_heads": HEADS,
                      "dropout_prob": 0.1, "skip_output_projection": False, "qkv_bias": False,
                      "rotary_embedding": False, "seq_op_in_fp32": False, "sequence_op": "torch-softmax"},
        "init": {"type": "normal", "std": 0.02}, "ffn_layer_frequency": 1, "skip_head_transform": True,
        "use_bias": False, "final_norm": True, "num_labels": None,
        "classification_head": {"pooler": "avg", "include_ff_layer": True, "head_dim": 1024, "nonlin": "Tanh",
                                "classifier_dropout": 0.1},
    }
    for path, value in changes.items():
        node = arch
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return arch


def official_key_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """The state dict of ScriptableLMForPreTraining (pbelcak/UltraFastBERT training/cramming/
    architectures/crammed_bert.py), module by module, for the arch config above."""
    C = arch["hidden_size"]
    keys = {"encoder.embedding.word_embedding.weight": (VOCAB, C)}  # components.py EmbeddingComponent
    position = arch["embedding"]["pos_embedding"]  # cramming embeddings.py: SinusoidalPositional.pe is
    if position == "scaled-sinusoidal":  # registered persistent=False, so only the scale is saved
        keys["encoder.embedding.pos_embedding.scale_factor"] = (1,)  # ScaledSinosoidal
    elif position == "learned":  # LearnablePositional: nn.Embedding + a persistent position_ids buffer
        keys["encoder.embedding.pos_embedding.embedding.weight"] = (POSITIONS, C)
        keys["encoder.embedding.pos_embedding.position_ids"] = (1, POSITIONS)
    keys["encoder.embedding.norm.weight"] = keys["encoder.embedding.norm.bias"] = (C,)  # normalization: True
    for layer in range(arch["num_transformer_layers"]):
        p = f"encoder.layers.{layer}."  # crammed_bert.py TransformerLayer: norm1, norm2, attn, ffn
        for norm in ("norm1", "norm2"):
            keys[f"{p}{norm}.weight"] = keys[f"{p}{norm}.bias"] = (C,)
        # cramming attention.py SeqFirstSelfAttention ("self-attention"): a fused Linear(C, 3C, bias=qkv_bias)
        # and the buffer norm_factor = torch.tensor(D).rsqrt(); AttentionComponent.dense: Linear(C, C, bias=use_bias)
        keys[p + "attn.self_attention.query_key_value.weight"] = (3 * C, C)
        if arch["attention"]["qkv_bias"]:
            keys[p + "attn.self_attention.query_key_value.bias"] = (3 * C,)
        keys[p + "attn.self_attention.norm_factor"] = ()
        keys[p + "attn.dense.weight"] = (C, C)
        if arch["use_bias"]:
            keys[p + "attn.dense.bias"] = (C,)
        if arch["intermed_type"] == "fff":  # UltraFastBERT fff.py FFF(C, C, intermed_depth, intermed_size)
            width = arch["intermed_size"] * (2 ** (arch["intermed_depth"] + 1) - 1)
            keys.update({p + "ffn.linear_in.weight": (width, C), p + "ffn.linear_in.bias": (width,),
                         p + "ffn.linear_out.weight": (C, width)})
        else:  # crammed_bert.py FFNComponent: dense_in, nonlin, dense_out, bias=use_bias
            F = arch["intermed_size"]
            keys.update({p + "ffn.dense_in.weight": (F, C), p + "ffn.dense_out.weight": (C, F)})
            if arch["use_bias"]:
                keys.update({p + "ffn.dense_in.bias": (F,), p + "ffn.dense_out.bias": (C,)})
    keys["encoder.final_norm.weight"] = keys["encoder.final_norm.bias"] = (C,)  # ScriptableLM, final_norm: True
    keys["decoder.weight"] = (VOCAB, C)  # ScriptableLMForPreTraining: tied to word_embedding, decoder_bias False
    return keys


def random_state(arch: dict, seed: int, std: float = 0.2) -> dict[str, np.ndarray]:
    """Random values for the official key set; norm gains around 1, the tied decoder is the embedding,
    norm_factor is the buffer's value, 1/sqrt(D) in float32."""
    rng = np.random.default_rng(seed)
    D = arch["hidden_size"] // arch["attention"]["num_attention_heads"]
    state = {}
    for key, shape in official_key_shapes(arch).items():
        if key.endswith("norm_factor"):
            state[key] = np.array(1.0 / np.sqrt(D), np.float32)
        elif key.endswith("position_ids"):
            state[key] = np.arange(POSITIONS, dtype=np.int64)[None, :]
        elif key.endswith("scale_factor"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            offset = 1.0 if "norm" in key.split(".")[-2] and key.endswith("weight") else 0.0
            state[key] = (offset + rng.normal(0.0, std, shape)).astype(np.float32)
    state["decoder.weight"] = state["encoder.embedding.word_embedding.weight"]
    return state


def save_hf(directory, arch: dict, state: dict[str, np.ndarray]):
    """As UltraFastBERT publishes it: crammedBertConfig's config.json + model.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["ScriptableLMForPreTraining"], "model_type": "crammedBERT", "arch": arch,
              "torch_dtype": "float32"}
    (directory / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in state.items() if k != "decoder.weight"},  # one name of a tied pair is kept
              str(directory / "model.safetensors"))
    return directory


def save_cramming(directory, arch: dict, state: dict[str, np.ndarray]):
    """As cramming's backend/torch_default.py save_final_model: model_config.json + model.pth."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model_config.json").write_text(json.dumps(arch))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, directory / "model.pth")
    return directory


CASES = {
    # UltraFastBERT defaults: FFF (K = 2 trees of depth 3), scaled sinusoids, no biases outside the FFF
    "fff-scaled-sinusoidal": ({}, save_hf),
    # plain crammed BERT with every optional tensor present: dense GELU FFN, biases, learned positions
    "ff-learned-biases": ({"intermed_type": "ff", "intermed_size": 40, "use_bias": True, "attention.qkv_bias": True,
                           "embedding.pos_embedding": "learned"}, save_cramming),
    # a dense ReLU FFN without biases, fixed (unscaled) sinusoids
    "ff-relu-sinusoidal": ({"intermed_type": "ff", "intermed_size": 36, "nonlin": "ReLU",
                            "embedding.pos_embedding": "sinusoidal"}, save_hf),
}


def load_case(tmp_path, case: str, seed: int = 3):
    changes, save = CASES[case]
    arch = arch_config(**changes)
    state = random_state(arch, seed)
    ck = checkpoint.load(save(tmp_path / case, arch, state))
    return arch, state, ck


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


def test_fractional_sizes_are_refused():
    arch = arch_config()
    arch["intermed_depth"] = 3.5
    with pytest.raises(UserError, match=r"arch.intermed_depth must be a whole number, got 3.5"):
        parse_arch(arch)


# State dicts and arch configs as training runs save them: wrapped models, half precision, and configs the
# official code cannot build.

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

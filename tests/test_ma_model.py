"""MA-BERT: official checkpoint files, folded NumPy engines vs the unfolded torch module, op traces."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.cli import main
from mabert_hw.cost.counts import trace
from mabert_hw.errors import UserError
from mabert_hw.fold import fold_powernorm, read_hidden_states
from mabert_hw.inputs import random_batch
from mabert_hw.ma_checkpoint import raw_shapes, to_bert_keys
from mabert_hw.model import forward
from mabert_hw.spec import VARIANTS, ModelSpec
from mabert_hw.torch_ref.ma_bert import load_official
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .helpers import error_line
from .tolerances import FOLDED_VS_UNFOLDED_ATOL, REFERENCE_VS_TORCH_ATOL

MA = VARIANTS["ma"]
TINY = ModelSpec("tiny-ma", vocab_size=61, hidden=24, layers=2, heads=3, intermediate=40, max_positions=40)


def tiny_ma(share: bool, n: int = 16, h: int = 12, **changes) -> ModelSpec:
    return TINY.with_variant(**{**MA.__dict__, "softmax_input": n, "softmax_hidden": h, "share_softmax": share,
                                **changes})


def official_keys(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """MA_BertForMaskedLM's state-dict keys and shapes, written out from the official modules."""
    C, F, n, h = spec.hidden, spec.intermediate, spec.variant.softmax_input, spec.variant.softmax_hidden
    shapes = {"bert.embeddings.position_ids": (1, spec.max_positions)}
    for name, rows in (("word", spec.vocab_size), ("position", spec.max_positions),
                       ("token_type", spec.type_vocab_size)):
        shapes[f"bert.embeddings.{name}_embeddings.weight"] = (rows, C)

    def power_norm(p):
        shapes.update({p + "weight": (C,), p + "bias": (C,), p + "running_phi": (1, C, 1, 1),
                       p + "ema_gz": (1, C, 1, 1), p + "iters": (1,), p + "accumulated_var": (1, C, 1, 1)})

    def approximator(p):
        shapes.update({p + "0.weight": (h, n), p + "0.bias": (h,), p + "2.weight": (n, h), p + "2.bias": (n,)})

    power_norm("bert.embeddings.LayerNorm.")
    if spec.variant.share_softmax:
        approximator("bert.softmax.linear_relu_stack.")
    for i in range(spec.layers):
        p = f"bert.encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            shapes[f"{p}attention.self.{proj}.weight"], shapes[f"{p}attention.self.{proj}.bias"] = (C, C), (C,)
        approximator(f"{p}attention.self.softmax.linear_relu_stack.")  # shared: the same module again
        shapes[f"{p}attention.output.dense.weight"], shapes[f"{p}attention.output.dense.bias"] = (C, C), (C,)
        power_norm(f"{p}attention.output.LayerNorm.")
        shapes[f"{p}intermediate.dense.weight"], shapes[f"{p}intermediate.dense.bias"] = (F, C), (F,)
        shapes[f"{p}output.dense.weight"], shapes[f"{p}output.dense.bias"] = (C, F), (C,)
        power_norm(f"{p}output.LayerNorm.")
    shapes.update({"bert.pooler.dense.weight": (C, C), "bert.pooler.dense.bias": (C,)})
    for key, shape in (("transform.dense.weight", (C, C)), ("transform.dense.bias", (C,)),
                       ("transform.LayerNorm.weight", (C,)), ("transform.LayerNorm.bias", (C,)),
                       ("decoder.weight", (spec.vocab_size, C)), ("decoder.bias", (spec.vocab_size,)),
                       ("bias", (spec.vocab_size,))):
        shapes["cls.predictions." + key] = shape
    return shapes


def random_official_state(spec: ModelSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in official_keys(spec).items():
        if key.endswith(("position_ids", "iters")):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_phi"):
            state[key] = torch.from_numpy(rng.uniform(0.3, 3.0, shape).astype(np.float32))
        elif key.endswith("LayerNorm.weight"):
            state[key] = torch.from_numpy((1 + rng.normal(0, 0.2, shape)).astype(np.float32))
        else:
            state[key] = torch.from_numpy(rng.normal(0, 0.1, shape).astype(np.float32))
    if spec.variant.share_softmax:  # one module referenced by every layer: identical copies
        for key in [k for k in state if k.startswith("bert.softmax.")]:
            for i in range(spec.layers):
                state[key.replace("bert.", f"bert.encoder.layer.{i}.attention.self.", 1)] = state[key]
    return state


def save_official(tmp_path, spec, state):
    path = tmp_path / "ma_bert_mlm_ckpt.pt"
    torch.save(state, path)
    (tmp_path / "config.json").write_text(json.dumps({
        "num_attention_heads": spec.heads, "softmax_input_size": spec.variant.softmax_input,
        "softmax_hidden_layer_size": spec.variant.softmax_hidden, "share_softmax_nn": spec.variant.share_softmax}))
    return path


@pytest.mark.parametrize("share,backend", [(False, "reference"), (True, "reference"), (False, "fast"),
                                           (True, "fast")])
def test_official_file_loads_and_engines_match_torch(tmp_path, share, backend):
    spec = tiny_ma(share)
    state = random_official_state(spec)
    ck = checkpoint.load(save_official(tmp_path, spec, state))
    assert ck.spec.variant == spec.variant and ck.spec.heads == spec.heads
    torch_model = load_official(ck.spec, torch.load(tmp_path / "ma_bert_mlm_ckpt.pt"))
    for T in (spec.variant.softmax_input, 9):  # T = n and T < n, both with padded rows
        batch = random_batch(ck.spec, 4, T, seed=T)
        ours = forward(ck.spec, ck.weights, batch.input_ids, make_backend(backend),
                       batch.attention_mask, batch.token_type_ids)
        with torch.no_grad():
            theirs = torch_model(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask,
                                                                  batch.token_type_ids)))
        diff = np.abs(np.asarray(ours.last_hidden_state) - theirs["hidden_states"][-1].numpy()).max()
        assert diff <= REFERENCE_VS_TORCH_ATOL, f"{backend} T={T} maxdiff {diff:.3e}"
        assert np.abs(np.asarray(ours.pooled) - theirs["pooled"].numpy()).max() <= REFERENCE_VS_TORCH_ATOL


@pytest.mark.parametrize("share", [False, True])
def test_check_command_compares_ma_checkpoints_with_the_torch_ma_model(tmp_path, capsys, share):
    from mabert_hw.cli import main

    spec = tiny_ma(share)
    path = save_official(tmp_path, spec, random_official_state(spec))
    assert main(["check", str(path), "--batch", "3", "--seq-len", str(spec.variant.softmax_input)]) == 0
    out = capsys.readouterr().out
    assert "torch_ref.ma_bert" in out and "OK" in out
    assert out.count("layer ") == spec.layers


def raw_ma_state(spec, seed=3):
    state = to_bert_keys({k: v.numpy() for k, v in random_official_state(spec, seed=seed).items()})
    return {k: v.astype(np.float32) for k, v in state.items() if k in raw_shapes(spec)}


def test_underflowing_basis_mid_network_is_refused():
    spec = tiny_ma(False)
    raw = raw_ma_state(spec)
    for key in ("encoder.layer.0.attention.output.LayerNorm.weight", "encoder.layer.0.output.LayerNorm.weight"):
        raw[key][5] = 1e-20  # basis scale 1e-40 before layer 1 writes into channel 5
    with pytest.raises(UserError, match="underflowed"):
        fold_powernorm(spec, raw)


@pytest.mark.parametrize("dead_at_readout", [False, True])
def test_folded_equals_unfolded_layer_by_layer(dead_at_readout):
    spec = tiny_ma(False)
    raw = raw_ma_state(spec)
    if dead_at_readout:  # the converted MiniLM has such channels: read out as exactly A = 0
        for key in ("encoder.layer.1.attention.output.LayerNorm.weight", "encoder.layer.1.output.LayerNorm.weight"):
            raw[key][5] = 1e-20
    folded, bases = fold_powernorm(spec, raw)
    assert all(np.isfinite(v).all() for v in folded.values())
    batch = random_batch(spec, 3, 12, seed=1)
    ours = forward(spec, folded, batch.input_ids, make_backend("reference"), batch.attention_mask,
                   batch.token_type_ids)
    unfolded = load_official(spec, raw)
    with torch.no_grad():
        theirs = unfolded(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                          torch.from_numpy(batch.token_type_ids))
    for layer, (a, b) in enumerate(zip(read_hidden_states(bases, ours.hidden_states), theirs["hidden_states"])):
        diff = np.abs(a - b.numpy()).max()
        assert diff <= FOLDED_VS_UNFOLDED_ATOL, f"hidden state {layer}: maxdiff {diff:.3e}"


@pytest.mark.parametrize("share", [False, True])
def test_trace_ops_equal_reference_ops(share):
    spec = tiny_ma(share)
    weights = {k: np.asarray(v) for k, v in checkpoint_weights(spec).items()}
    batch = random_batch(spec, 2, 11, seed=0)
    backend = make_backend("reference", record=True)
    forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)
    assert backend.ops == trace(spec, 2, 11)


def checkpoint_weights(spec):
    from mabert_hw.weights import random_weights

    return random_weights(spec, seed=2)


def test_ma_encoder_trace_is_matrix_arithmetic_only():
    spec = tiny_ma(False)
    ops = trace(spec, 2, 16)
    encoder = {op.kind for op in ops if op.name.startswith("encoder.layer.")}
    assert encoder == {"linear", "matmul", "add", "relu", "mask"}
    assert all(op.attr("mode") == "multiplicative" for op in ops if op.kind == "mask")
    outside = {(op.name, op.kind) for op in ops if not op.name.startswith("encoder.layer.")}
    # what stays outside the layers: the gathers and their adds, the read-out affine, the tanh pooler
    assert {kind for _, kind in outside} == {"embedding", "add", "affine", "slice", "linear", "tanh"}
    forbidden = {"exp", "div", "sqrt", "rsqrt", "erf", "tanh"}
    from mabert_hw.cost.counts import count_ops

    counts = count_ops([op for op in ops if op.name.startswith("encoder.")])
    assert not counts.unknown and not forbidden & set(counts.elementwise())


def test_too_many_tokens_for_the_approximator_is_a_user_error():
    spec = tiny_ma(False, n=8)
    from mabert_hw.weights import random_weights

    batch = random_batch(spec, 1, 9)
    with pytest.raises(UserError, match="approximator"):
        forward(spec, random_weights(spec), batch.input_ids, make_backend("reference"))


def test_distilbert_names_map_onto_bert_names():
    spec = tiny_ma(False)
    bert = {k.removeprefix("bert."): v for k, v in random_official_state(spec).items()}
    distil_names = {"attention.self.query.": "attention.q_lin.", "attention.self.key.": "attention.k_lin.",
                    "attention.self.value.": "attention.v_lin.", "attention.output.dense.": "attention.out_lin.",
                    "attention.self.softmax.": "attention.softmax.",
                    "attention.output.LayerNorm.": "sa_layer_norm.", "intermediate.dense.": "ffn.lin1.",
                    "output.dense.": "ffn.lin2.", "output.LayerNorm.": "output_layer_norm."}
    distil = {}
    for key, value in bert.items():
        if key.startswith("encoder.layer."):
            _, _, i, rest = key.split(".", 3)
            for ours, theirs in distil_names.items():
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours):]
                    break
            distil[f"distilbert.transformer.layer.{i}.{rest}"] = value.numpy()
    mapped = to_bert_keys(distil)
    for key, value in mapped.items():
        assert np.array_equal(value, bert["encoder.layer." + key.split("encoder.layer.")[1]].numpy())


def test_plain_bert_state_file_is_not_taken_for_ma(tmp_path):
    from mabert_hw.weights import random_weights

    torch.save({k: torch.from_numpy(v) for k, v in random_weights(TINY).items()}, tmp_path / "plain.bin")
    with pytest.raises(UserError, match="no MA-BERT keys"):
        checkpoint.load(tmp_path / "plain.bin")


# Bad MA-BERT checkpoints: one-line errors, not tracebacks or silently truncated models.

@pytest.mark.parametrize("text,message", [("{not json", "not a readable JSON config"),
                                          ("[1, 2]", "config must be a JSON object")])
def test_official_file_with_a_malformed_config_beside_it_is_a_one_line_error(tmp_path, capsys, text, message):
    pytest.importorskip("torch")
    from .test_ma_model import random_official_state, save_official, tiny_ma

    spec = tiny_ma(share=False)
    path = save_official(tmp_path, spec, random_official_state(spec))
    (tmp_path / "config.json").write_text(text)
    assert main(["profile", str(path), "--seq-len", "8"]) == 2
    line = error_line(capsys)
    assert str(tmp_path / "config.json") in line and message in line


@pytest.mark.parametrize("missing", ["embeddings.word_embeddings.weight", "encoder.layer.0.intermediate.dense.weight",
                                     "embeddings.position_embeddings.weight"])
def test_ma_directory_missing_a_key_is_a_one_line_error(tmp_path, capsys, missing):
    pytest.importorskip("torch")
    from safetensors.numpy import save_file

    from .test_ma_model import random_official_state, tiny_ma

    spec = tiny_ma(share=False)
    state = {k.removeprefix("bert."): v.numpy() for k, v in random_official_state(spec).items()
             if not k.startswith("cls.") and k.removeprefix("bert.") != missing}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "num_attention_heads": spec.heads, "softmax_input_size": spec.variant.softmax_input,
        "softmax_hidden_layer_size": spec.variant.softmax_hidden, "share_softmax_nn": False}))
    assert main(["profile", str(tmp_path), "--seq-len", "8"]) == 2
    assert error_line(capsys) == f"mabert-hw: error: missing key {missing}"


def test_ma_weights_with_more_layers_than_the_config_are_refused():
    from mabert_hw.ma_checkpoint import ma_weights
    from mabert_hw.spec import Variant

    variant = Variant(softmax="mlp", ffn_activation="relu", norm="powernorm", mask="multiplicative", softmax_input=16,
                      softmax_hidden=8)
    spec = dataclasses.replace(TINY_SPECS[0], variant=variant)
    state = dict(random_weights(spec, 3))
    state["encoder.layer.5.output.dense.bias"] = np.zeros(spec.hidden, np.float32)  # layers 2-4 absent
    with pytest.raises(UserError, match="the weights hold encoder.layer.5, past the config's num_hidden_layers = 2"):
        ma_weights(spec, state)


def test_ma_weights_in_integers_are_refused():
    """Checked on every checkpoint path (check_shapes): an int8 tensor used to be widened and run as weights."""
    from mabert_hw.ma_checkpoint import ma_weights
    from mabert_hw.spec import Variant

    variant = Variant(softmax="mlp", ffn_activation="relu", norm="powernorm", mask="multiplicative", softmax_input=16,
                      softmax_hidden=8)
    spec = dataclasses.replace(TINY_SPECS[0], variant=variant)
    rng = np.random.default_rng(0)
    state = {key: rng.uniform(0.5, 1.5, shape).astype(np.float32) for key, shape in raw_shapes(spec).items()}
    assert ma_weights(spec, state)  # the float state loads
    key = "encoder.layer.0.attention.self.query.weight"
    state[key] = state[key].astype(np.int8)
    with pytest.raises(UserError, match=f"weight {key} is int8, not floating point"):
        ma_weights(spec, state)


def test_torch_model_refuses_ids_beyond_its_vocabulary():
    # this used to be torch's IndexError (index out of range in self) from convert and softmax-error
    spec = TINY_SPECS[0]
    model = load_official(spec, random_weights(spec, 1))
    ids = torch.tensor([[1, spec.vocab_size]])
    with pytest.raises(UserError, match=f"token id {spec.vocab_size} is outside the model's vocab_size"):
        model(ids)

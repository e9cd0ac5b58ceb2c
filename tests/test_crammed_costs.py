"""Costs of crammed BERT / UltraFastBERT checkpoints: parameters and FLOPs the official state dict has and no
more (no bias adds without biases, no token types), compare's bert and power rows on an FFF checkpoint, and
the label of a pre-LN encoder's final LayerNorm. Each figure is a closed form derived in the test."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

from mabert_hw import crammed_checkpoint
from mabert_hw.cli import compare as compare_cli
from mabert_hw.cost import hardware
from mabert_hw.cost.summary import profile_model
from mabert_hw.spec import ModelSpec

from .helpers import run_cli


# a crammed BERT at tiny sizes (pbelcak/UltraFastBERT crammed-bert-fff.yaml, resolved)
C, H, L, V, P = 24, 3, 2, 61, 40


def crammed_config(**changes) -> dict:
    """crammedBertConfig's config.json; `changes` are dotted arch paths."""
    arch = {
        "num_transformer_layers": L, "intermed_type": "fff", "hidden_size": C, "intermed_size": 2,
        "intermed_depth": 3, "norm": "LayerNorm", "norm_eps": 1e-12, "nonlin": "GELU", "use_bias": False,
        "final_norm": True,
        "embedding": {"vocab_size": V, "pos_embedding": "scaled-sinusoidal", "max_seq_length": P,
                      "embedding_dim": C, "normalization": True},
        "attention": {"type": "self-attention", "causal_attention": False, "num_attention_heads": H,
                      "skip_output_projection": False, "qkv_bias": False, "rotary_embedding": False,
                      "sequence_op": "torch-softmax"},
    }
    for path, value in changes.items():
        node = arch
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return {"model_type": "crammedBERT", "arch": arch}


def crammed_spec(**changes) -> ModelSpec:
    spec, _, _ = crammed_checkpoint.load(crammed_config(**changes), None, "crammed-tiny")
    return spec


def crammed_dense(**changes) -> ModelSpec:
    return crammed_spec(**{"intermed_type": "ff", "intermed_size": 36, **changes})


def test_power_keeping_every_token_prices_as_bert_on_an_fff_checkpoint():
    """UltraFastBERT-like checkpoint, K = 2 trees of depth 3: N = K * (2^4 - 1) = 30 nodes. The bert
    row is a dense GELU FFN of N neurons, so at B = 1, T tokens, no pooler, its MACs are
    L * (4*T*C^2 (q, k, v, out) + 2*T^2*C (QK^T, PV) + 2*T*C*N (FFN in, out)). A retention keeping
    all T tokens eliminates nothing: power costs exactly bert (speed-up 1.0; it was the FFF, 2.4x)."""
    spec, T, N = crammed_spec(), 16, 2 * 15
    outcomes = compare_cli.evaluate(spec, ["bert", "power", "fff"], 1, T, hardware.load("edge-32x32-int8"),
                                    retention=(T,) * L)
    bert, power, fff = outcomes
    assert bert.spec.variant.ffn == "dense" and bert.spec.intermediate == N
    assert compare_cli.model_macs(bert.estimate) == L * (4 * T * C * C + 2 * T * T * C + 2 * T * C * N)
    assert power.spec.variant == replace(bert.spec.variant, retention=(T,) * L)
    assert power.estimate.total("cycles") == bert.estimate.total("cycles")
    assert compare_cli.comparison_rows(outcomes)[1]["speedup"] == 1.0
    assert (fff.spec.variant.fff_depth, fff.spec.variant.fff_trees) == (3, 2)  # the checkpoint's own trees


def test_crammed_params_are_the_official_state_dicts():
    """ScriptableLMForPreTraining's encoder without the norm_factor buffers, dense FFN of F = 36:
    V*C (word) + 1 (scale_factor) + 2C (embedding norm) + L * (4C (norm1, norm2) + 3C^2 (qkv) + C^2
    (attn.dense) + 2*F*C (dense_in, dense_out)) + 2C (final norm); use_bias and qkv_bias add
    L * (3C + C + F + C); learned positions hold a (P, C) table, plain sinusoids none."""
    F, T = 36, 16
    official = V * C + 1 + 2 * C + L * (4 * C + 3 * C * C + C * C + 2 * F * C) + 2 * C
    assert profile_model(crammed_dense(), 1, T).total("params") == official
    biased = crammed_dense(use_bias=True, **{"attention.qkv_bias": True})
    assert profile_model(biased, 1, T).total("params") == official + L * (3 * C + C + F + C)
    learned = crammed_dense(**{"embedding.pos_embedding": "learned"})
    assert profile_model(learned, 1, T).total("params") == official - 1 + P * C
    plain = crammed_dense(**{"embedding.pos_embedding": "sinusoidal"})
    assert profile_model(plain, 1, T).total("params") == official - 1


def test_crammed_counts_no_bias_adds_and_no_token_types():
    """Biases add B*T*(3C + C + F + C) per layer (q, k, v, attention out, FFN in, FFN out), so the
    biased model has exactly L times that many more FLOPs; without biases every linear reads its
    weight alone (4 * C^2 bytes for the query at fp32). A crammed model has no token-type gather or add."""
    F, B, T = 36, 2, 16
    plain = profile_model(crammed_dense(), B, T)
    biased = profile_model(crammed_dense(use_bias=True, **{"attention.qkv_bias": True}), B, T)
    assert biased.total("flops") - plain.total("flops") == L * B * T * (3 * C + C + F + C)
    linears = [c for c in plain.counts if c.op.kind == "linear"]
    assert linears and all(not c.elementwise for c in linears)
    query = next(c for c in linears if c.op.name == "encoder.layer.0.attention.self.query")
    assert query.weight_bytes == 4 * C * C
    assert [c.op.name for c in plain.counts if c.op.name.startswith("embeddings.")] == [
        "embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.add_position",
        "embeddings.LayerNorm"]


CRAMMED_ARCH = {  # a crammedBERT arch config (see tests/test_crammed.py) at tiny sizes: dense FFN, no head
    "num_transformer_layers": 2, "hidden_size": 24, "intermed_type": "ff", "intermed_size": 48, "nonlin": "GELU",
    "norm": "LayerNorm", "norm_eps": 1e-12, "final_norm": True, "use_bias": True,
    "embedding": {"vocab_size": 61, "pos_embedding": "learned", "max_seq_length": 40, "embedding_dim": 24,
                  "normalization": True},
    "attention": {"type": "self-attention", "causal_attention": False, "num_attention_heads": 3, "qkv_bias": True,
                  "rotary_embedding": False, "sequence_op": "torch-softmax", "skip_output_projection": False},
}


def test_a_pre_ln_encoders_final_layernorm_is_labelled_final_not_head(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "crammedBERT", "arch": CRAMMED_ARCH}))
    code, out, _ = run_cli(capsys, "profile", str(path), "--seq-len", "8", "--retention", "6,3",
                           "--by", "layer", "--format", "csv")
    assert code == 0
    rows = {r["layer"]: r for r in csv.DictReader(io.StringIO(out))}
    assert list(rows) == ["embeddings", "0", "1", "final"]  # was "head": the model has none (no pooler)
    final = rows["final"]
    C = 24
    assert (final["ops"], final["macs"], final["params"]) == ("1", "0", str(2 * C))  # one LayerNorm: gain, bias
    assert final["tokens_out"] == "3"  # it normalises the last layer's kept tokens

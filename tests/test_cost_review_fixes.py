"""Review of the cost model: compare's variants, what a crammed checkpoint has, embedding and gather
bytes, Variant checks, the encoder read-out's label, a trace that allocates nothing of size B x T, a
subnormal DRAM rate and strings where a config needs numbers. Each figure is a closed form derived in
the test's comment, not the code's own output."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mabert_hw import checkpoint, crammed_checkpoint
from mabert_hw.cli import compare as compare_cli
from mabert_hw.cli import main
from mabert_hw.cost import hardware
from mabert_hw.cost.counts import trace
from mabert_hw.cost.cycles import estimate
from mabert_hw.cost.summary import layer_label, profile_model, rows
from mabert_hw.errors import UserError
from mabert_hw.spec import PRESETS, VARIANTS, ModelSpec, Variant, real_number, whole_number

# a crammed BERT at tiny sizes (pbelcak/UltraFastBERT crammed-bert-fff.yaml, resolved)
C, H, L, V, P = 24, 3, 2, 61, 40
EDGE_TOML = (hardware.HW_DIR / "edge-32x32-int8.toml").read_text()


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


def write_config(directory, config: dict):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# 1. compare: every row is its recipe on the checkpoint's architecture; power is bert + retention

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


def test_bert_and_power_use_bert_arithmetic_on_a_relu_checkpoint():
    """The checkpoint's own activation does not enter: bert and power are both GELU BERT (power kept
    ReLU while bert was reset to GELU)."""
    config = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "relu"}
    spec = checkpoint.spec_from_config(config, "relu-bert")
    assert spec.variant.ffn_activation == "relu"
    bert = compare_cli.variant_spec(spec, "bert", 16)
    power = compare_cli.variant_spec(spec, "power", 16, (16, 16))
    assert bert.variant == VARIANTS["bert"]
    assert power.variant == replace(VARIANTS["bert"], retention=(16, 16))


def test_ma_row_keeps_an_ma_checkpoints_approximator():
    spec = PRESETS["minilm-l6"].with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": 64,
                                                "softmax_hidden": 12})
    ma = compare_cli.variant_spec(spec, "ma", 32).variant
    assert (ma.softmax_input, ma.softmax_hidden) == (64, 12)
    assert compare_cli.variant_spec(spec, "ma", 100).variant.softmax_input == 100  # raised to T > n


# 2. crammed checkpoints: no parameters or work the model does not have

def crammed_dense(**changes) -> ModelSpec:
    return crammed_spec(**{"intermed_type": "ff", "intermed_size": 36, **changes})


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


# 3. embedding weight bytes: the distinct rows read, never more than the table

def test_embedding_bytes_are_distinct_rows_capped_at_the_table():
    """fp32, B*T ids: word rows min(B*T, V), token-type rows min(B*T, 2), position rows T (the same
    0..T-1 in every sequence), each C wide."""
    B, T, C_base = 32, 128, 768
    counts = {c.op.name: c for c in profile_model(PRESETS["bert-base-uncased"], B, T).counts}
    assert counts["embeddings.word_embeddings"].weight_bytes == 4 * min(B * T, 30522) * C_base
    assert counts["embeddings.token_type_embeddings"].weight_bytes == 4 * 2 * C_base
    assert counts["embeddings.position_embeddings"].weight_bytes == 4 * T * C_base
    tiny = ModelSpec("tiny", vocab_size=100, hidden=8, layers=1, heads=2, intermediate=16, max_positions=64)
    word = next(c for c in profile_model(tiny, 4, 64).counts if c.op.name == "embeddings.word_embeddings")
    assert word.weight_bytes == 4 * 100 * 8  # 256 ids, 100 rows


# 4. Variant values outside their types are refused, one line from a checkpoint

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


def test_ma_checkpoint_with_negative_hidden_is_one_line(tmp_path, capsys):
    config = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64, "ffn_hidden_act": "relu", "norm_type": "Power",
              "use_softmax_approx": True, "share_softmax_nn": False, "softmax_input_size": 128,
              "softmax_hidden_layer_size": -5}
    directory = write_config(tmp_path / "ma", config)
    assert main(["profile", str(directory), "--seq-len", "16", "--by", "op"]) == 2
    err = capsys.readouterr().err
    assert "softmax_hidden must be a whole number >= 1, got -5" in err and err.count("\n") == 1


# 5. PoWER-BERT's token gather reads the rows it keeps

def test_gather_reads_kept_rows_and_index():
    """select (B, T, C)[(B, K)]: reads B*K*C kept elements and B*K indices, writes B*K*C; the mask
    gather (B, T)[(B, K)] reads B*K and B*K, writes B*K. fp32, B = 2, K = 13 of T = 128."""
    B, K, C_base = 2, 13, 768
    spec = PRESETS["bert-base-uncased"].with_variant(retention=(K,) * 12)
    counts = {c.op.name: c for c in profile_model(spec, B, 128).counts}
    assert counts["encoder.layer.0.power.select"].activation_bytes == 4 * (2 * B * K * C_base + B * K)
    assert counts["encoder.layer.0.power.select_mask"].activation_bytes == 4 * (2 * B * K + B * K)


# 6. the folded PowerNorm read-out closes the encoder

def test_readout_is_labelled_final():
    spec = ModelSpec("ma-distil-like", 30522, 768, 6, 12, 3072, has_pooler=False, type_vocab_size=1,
                     variant=VARIANTS["ma"])
    profile = profile_model(spec, 1, 128)
    readout = next(c for c in profile.counts if c.op.name == "encoder.readout")
    assert layer_label(readout) == "final"
    assert "head" not in {row["layer"] for row in rows(profile, "layer")}


# 7. the trace allocates nothing of size B x T

def test_trace_of_a_huge_batch_allocates_no_inputs():
    """B = 10^12 sequences of 512 tokens: 4 PB of int64 ids, which the trace used to allocate. BERT-base
    MACs per sequence: L * (4*T*C^2 + 2*T^2*C + 2*T*C*F) + C^2 (pooler), times B."""
    B, T, C_base, F, layers = 10 ** 12, 512, 768, 3072, 12
    per_sequence = layers * (4 * T * C_base ** 2 + 2 * T * T * C_base + 2 * T * C_base * F) + C_base ** 2
    assert profile_model(PRESETS["bert-base-uncased"], B, T).total("macs") == B * per_sequence
    assert len(trace(PRESETS["bert-base-uncased"], B, T)) > 0


# 8. a DRAM rate too small to divide by

def test_subnormal_dram_rate_is_refused(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(EDGE_TOML.replace("dram_gb_per_s = 17.1", "dram_gb_per_s = 1e-320"))
    with pytest.raises(UserError, match="dram_gb_per_s must be at least 2.23e-308"):
        hardware.load(path)
    assert main(["profile", "minilm-l6", "--seq-len", "8", "--hw", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_dram_time_past_a_cycle_counter_is_refused(tmp_path):
    """1e-300 GB/s is a normal float, but the 2*T*C = 2*8*384 word-embedding bytes it moves at 1 GHz
    take 6144 / 1e-300 cycles, past 2^63 (and past a float: ceil raised OverflowError)."""
    path = tmp_path / "slow.toml"
    path.write_text(EDGE_TOML.replace("dram_gb_per_s = 17.1", "dram_gb_per_s = 1e-300"))
    with pytest.raises(UserError, match="more than 2\\^63 cycles"):
        estimate(trace(PRESETS["minilm-l6"], 1, 8), hardware.load(path))


# strings where a config needs numbers

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



def test_ma_distilbert_state_counts_no_token_type_table():
    # DistilBERT has no token types: to_bert_keys adds one zero row for the engines, which the counts
    # must not take for the model's parameters (before: H params and a gather + add per token counted)
    import numpy as np

    from mabert_hw.cost.counts import count_ops, model_ops
    from mabert_hw.ma_checkpoint import spec_from_ma, to_bert_keys

    C = 16  # the shapes spec_from_ma reads: vocab 50, 8 positions, 1 layer of FFN width 32
    state = {"distilbert.embeddings.word_embeddings.weight": np.ones((50, C), np.float32),
             "distilbert.embeddings.position_embeddings.weight": np.ones((8, C), np.float32),
             "distilbert.transformer.layer.0.ffn.lin1.weight": np.ones((32, C), np.float32)}
    config = {"num_attention_heads": 2, "softmax_input_size": 8, "softmax_hidden_layer_size": 4}
    spec = spec_from_ma(config, to_bert_keys(state), "distil")
    assert not spec.token_types
    params = count_ops(model_ops(spec, 1, 8)).total("params")
    assert count_ops(model_ops(replace(spec, token_types=True), 1, 8)).total("params") - params == C

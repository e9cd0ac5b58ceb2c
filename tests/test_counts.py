"""Op counts against torch's FlopCounterMode, closed forms, HF's parameter count and the executed ops."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections import Counter
from dataclasses import replace
from math import ceil, log2, prod

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.backends.base import Op
from mabert_hw.cost.counts import count_ops, trace
from mabert_hw.cost.summary import layer_label, profile_model, rows
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.spec import PRESETS, VARIANTS, ModelSpec
from mabert_hw.torch_ref.hf import hf_model
from mabert_hw.weights import expected_shapes, parameter_count, random_weights

from .conftest import TINY_SPECS
from .helpers import run_cli

SPECS = TINY_SPECS + [dataclasses.replace(TINY_SPECS[0], num_labels=2, name="tiny-a-cls")]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("batch,seq_len", [(1, 7), (3, 16)])
def test_gemm_flops_equal_torch_flop_counter(spec, batch, seq_len):
    model = hf_model(spec)
    ids = torch.zeros((batch, seq_len), dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    profile = count_ops(trace(spec, batch, seq_len))
    ours = sum(c.gemm_flops for c in profile.counts)
    assert ours == counter.get_total_flops()


@pytest.mark.parametrize("name", list(PRESETS))
def test_closed_forms_per_layer(name):
    spec = PRESETS[name]
    B, T, C, H, D, F = 2, 128, spec.hidden, spec.heads, spec.head_dim, spec.intermediate
    profile = count_ops(trace(spec, B, T))
    for layer, counts in profile.group(lambda c: c.op.layer).items():
        if layer is None:
            continue
        by_kind = {kind: sum(c.macs for c in counts if c.op.kind == kind) for kind in ("linear", "matmul")}
        assert by_kind["matmul"] == 2 * B * H * T * T * D  # QK^T and PV
        assert by_kind["linear"] == B * T * (4 * C * C + 2 * C * F)  # Q, K, V, O and the two FFN GEMMs
        softmax = [c for c in counts if c.op.kind == "softmax"]
        assert softmax[0].elementwise["exp"] == B * H * T * T


@pytest.mark.parametrize("name", ["bert-base-uncased", "minilm-l6"])  # large: closed form below
def test_parameter_count_equals_hf(name):
    spec = PRESETS[name]
    hf_params = sum(p.numel() for p in hf_model(spec).parameters())
    assert parameter_count(spec) == hf_params
    assert count_ops(trace(spec, 1, 8)).total("params") == hf_params


def test_bert_large_parameter_closed_form():
    spec = PRESETS["bert-large-uncased"]
    V, P, S, C, F, L = 30522, 512, 2, 1024, 4096, 24
    per_layer = 4 * (C * C + C) + 2 * C + (C * F + F) + (F * C + C) + 2 * C
    assert parameter_count(spec) == (V + P + S) * C + 2 * C + L * per_layer + C * C + C


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_trace_equals_ops_the_reference_executed(spec):
    weights = random_weights(spec, seed=0)
    batch = random_batch(spec, batch=2, seq_len=9, seed=1)
    backend = make_backend("reference", record=True)
    forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)
    traced = trace(spec, 2, 9)
    assert len(traced) == len(backend.ops)
    for executed, shaped in zip(backend.ops, traced):
        assert executed == shaped, f"first mismatch: executed {executed} traced {shaped}"


def test_unknown_kind_is_reported_not_zero():
    ops = trace(TINY_SPECS[0], 1, 4) + [Op("custom.thing", "fancy_op", ((1, 4),), (), (1, 4))]
    profile = count_ops(ops)
    assert [op.name for op in profile.unknown] == ["custom.thing"]
    assert all(c.op.kind != "fancy_op" for c in profile.counts)


def test_elementwise_primitives_by_name():
    spec = TINY_SPECS[0]
    B, T, C, F, H, L = 2, 5, spec.hidden, spec.intermediate, spec.heads, spec.layers
    totals = count_ops(trace(spec, B, T)).elementwise()
    assert totals["erf"] == L * B * T * F  # one erf per GELU input
    assert totals["exp"] == L * B * H * T * T
    assert totals["rsqrt"] == (2 * L + 1) * B * T  # one per LayerNorm row
    assert totals["tanh"] == B * C  # pooler
    rows, heads_rows = B * T, B * H * T  # token rows; attention-score rows
    norm_rows = (2 * L + 1) * rows  # LayerNorm: 4n - 1 adds and 3n + 2 muls a row (counts.py's formula)
    assert totals["max"] == L * heads_rows * (T - 1)  # the softmax row maximum
    assert totals["div"] == L * heads_rows * T
    assert totals["mul"] == L * (heads_rows * T + 3 * rows * F) + norm_rows * (3 * C + 2)  # scale, GELU, LN
    assert totals["add"] == (2 * rows * C  # token type and position embeddings
                             + L * (3 * rows * C + heads_rows * T + heads_rows * (2 * T - 1)  # QKV bias, mask, softmax
                                    + 2 * rows * C + rows * F + rows * F + 2 * rows * C)  # out bias+residual, FFN
                             + norm_rows * (4 * C - 1) + B * C)  # LayerNorms, pooler bias
    assert set(totals) == {"erf", "exp", "rsqrt", "tanh", "max", "div", "mul", "add"}


def test_power_bert_elimination_primitives_by_name():
    """PoWER-BERT on tiny-c (L = 3), B = 2, T = 11, retention (7, 7, 3): layer 1 keeps 7 of 11 tokens, layer 2
    keeps all 7 (no elimination ops), layer 3 keeps 3 of 7. Attention runs at the tokens a layer receives, its
    feed-forward at the tokens it keeps. Counting convention (counts.py's): a reduction over n values is n - 1
    adds, a subtraction is an add, masking padded queries and keys is a select (not counted).
    - Significance, s[k] = (1/H) sum_h sum_{q != k} A_h[q, k] (PoWER-BERT eq. 1; the official code sums every
      query row and subtracts the diagonal): per key, a sum of the H*T probabilities it receives (H*T - 1 adds),
      minus its H diagonal ones A_h[k, k] (H adds), times 1/H (1 mul): B*T keys.
    - Top tokens: CLS stays; the keep - 1 largest of the other T - 1 by a bounded heap, whose ceil(log2(keep))
      levels are one comparison each per value offered (at least one), then the keep indices sorted back into
      order, keep * ceil(log2(keep)) comparisons: B * ((T - 1) + keep) * ceil(log2(keep)) `cmp`."""
    spec = TINY_SPECS[2].with_variant(retention=(7, 7, 3))
    B, T, C, F, H = 2, 11, spec.hidden, spec.intermediate, spec.heads
    heap_levels = {7: 3, 3: 2}  # ceil(log2(keep)): 2^2 < 7 <= 2^3, 2^1 < 3 <= 2^2
    assert all(heap_levels[k] == ceil(log2(k)) for k in heap_levels)
    # (tokens in, tokens kept) per layer; an elimination where fewer are kept
    layers = [(11, 7), (7, 7), (7, 3)]
    profile = count_ops(trace(spec, B, T))
    power = Counter()
    for c in profile.counts:
        if ".power." in c.op.name:
            power.update(c.elementwise)
    significance = {"add": sum(B * t * (H * t - 1 + H) for t, kept in layers if kept < t),
                    "mul": sum(B * t for t, kept in layers if kept < t)}
    top_tokens = sum(B * ((t - 1) + kept) * heap_levels[kept] for t, kept in layers if kept < t)
    assert top_tokens == 2 * (10 + 7) * 3 + 2 * (6 + 3) * 2
    assert power == Counter(add=significance["add"], mul=significance["mul"], cmp=top_tokens)
    assert [c.op.kind for c in profile.counts if ".power." in c.op.name] == [
        "significance", "top_tokens", "gather", "gather"] * 2  # layers 1 and 3 only: the gathers are free

    # The whole model: every other op at the token count it sees (the layout of test_elementwise_primitives_by_name)
    norm_rows = B * T + sum(B * t + B * kept for t, kept in layers)  # embeddings; each layer's two LayerNorms
    totals = profile.elementwise()
    assert totals["cmp"] == top_tokens
    assert totals["max"] == sum(B * H * t * (t - 1) for t, _ in layers)  # softmax row maxima
    assert totals["mul"] == (sum(B * H * t * t for t, _ in layers)  # 1/sqrt(D) scale
                             + sum(3 * B * kept * F for _, kept in layers)  # GELU
                             + norm_rows * (3 * C + 2) + significance["mul"])
    assert totals["add"] == (2 * B * T * C  # token type and position embeddings
                             + sum(3 * B * t * C + B * H * t * t + B * H * t * (2 * t - 1)  # QKV bias, mask, softmax
                                   + 2 * B * t * C  # attention output bias, residual (before elimination)
                                   + 2 * B * kept * F  # FFN input bias, GELU's 1 + erf
                                   + 2 * B * kept * C  # FFN output bias, residual
                                   for t, kept in layers)
                             + norm_rows * (4 * C - 1) + B * C + significance["add"])  # LayerNorms, pooler bias
    assert set(totals) == {"erf", "exp", "rsqrt", "tanh", "max", "div", "mul", "add", "cmp"}


def test_ma_bert_elementwise_primitives_by_name():
    """MA-BERT on tiny-a (approximator n = 16, h = 6), B = 2, T = 9. Per MA-BERT: the 0/1 mask multiplies the
    scores (one mul each); the approximator is Linear(n->h) (bias: one add per hidden value), ReLU = max(0, x)
    (one `max` each), Linear(h->n) (one bias add per output); PowerNorm and the 1/sqrt(D) are folded into the
    linears (no norm op, no scale op), and one read-out affine x * scale + shift (one mul and one add per
    element) undoes the folded basis on the last hidden state; the FFN activation is ReLU (one max each)."""
    spec = TINY_SPECS[0].with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": 16, "softmax_hidden": 6})
    B, T, C, F, H, L, h = 2, 9, spec.hidden, spec.intermediate, spec.heads, spec.layers, 6
    rows, score_rows = B * T, B * H * T
    totals = count_ops(trace(spec, B, T)).elementwise()
    assert totals["mul"] == L * score_rows * T + rows * C  # the 0/1 mask; the read-out's scale
    assert totals["max"] == L * (score_rows * h + rows * F)  # the approximator's ReLU; the FFN's ReLU
    assert totals["add"] == (2 * rows * C  # token type and position embeddings
                             + L * (3 * rows * C  # QKV bias
                                    + score_rows * h + score_rows * T  # approximator biases
                                    + 2 * rows * C  # attention output bias, residual
                                    + rows * F + 2 * rows * C)  # FFN biases, residual
                             + rows * C + B * C)  # read-out shift, pooler bias
    assert totals["tanh"] == B * C  # pooler
    assert set(totals) == {"mul", "max", "add", "tanh"}  # no exp, div, rsqrt, erf: matrix arithmetic only


# Parameters and bytes the model really has: a shared approximator once, the embedding rows and gathered
# rows actually read, no token-type table where the model has none; labels and sizes of the trace.

def shared_ma_config(tmp_path):
    """An MA-BERT config (W6WM9M/MA-BERT keys) at MiniLM-L6 sizes, one approximator for all layers."""
    config = {"model_type": "bert", "hidden_size": 384, "num_attention_heads": 12, "num_hidden_layers": 6,
              "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512,
              "type_vocab_size": 2, "share_softmax_nn": True, "norm_type": "Power", "use_softmax_approx": True,
              "ffn_hidden_act": "relu", "softmax_input_size": 128, "softmax_hidden_layer_size": 128}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("seq_len", [128, 64])
def test_a_shared_approximator_counts_its_parameters_once(capsys, tmp_path, seq_len):
    V, P, S, C, F, L, n, h = 30522, 512, 2, 384, 1536, 6, 128, 128
    per_layer = 4 * (C * C + C) + (C * F + F) + (F * C + C)  # Q, K, V, O; FFN in, out (PowerNorm folded)
    approximator = h * n + h + n * h + n  # Linear(n->h), Linear(h->n): once, not once per layer, and whole
    # at T < n, which reads only the first T inputs and writes the first T outputs (weight bytes, not params)
    readout, pooler = 2 * C, C * C + C  # the folded basis' read-out affine; the pooler
    expected = (V + P + S) * C + L * per_layer + approximator + readout + pooler
    code, out, _ = run_cli(capsys, "profile", str(shared_ma_config(tmp_path)), "--seq-len", str(seq_len),
                           "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["totals"]["params"] == expected
    assert sum(op["params"] for op in doc["ops"]) == expected
    code, out, _ = run_cli(capsys, "profile", str(shared_ma_config(tmp_path)), "--seq-len", str(seq_len),
                           "--by", "layer", "--format", "csv")
    assert sum(int(row["params"]) for row in csv.DictReader(io.StringIO(out))) == expected


def test_params_are_the_checkpoints_at_any_length_and_schedule(capsys, tmp_path):
    """A per-layer approximator read at T_l < n tokens still holds n inputs' weights: params stay the
    checkpoint's (the sum of its tensors' elements), while its weight bytes shrink with T_l."""
    config = json.loads(shared_ma_config(tmp_path).read_text())
    path = tmp_path / "per_layer" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**config, "share_softmax_nn": False}))
    spec = checkpoint.load(str(path)).spec
    tensors = sum(prod(shape) for shape in expected_shapes(spec).values())
    totals = []
    for flags in (["--seq-len", "128"], ["--seq-len", "64"], ["--retention", "100,80,60,40,20,10"]):
        code, out, _ = run_cli(capsys, "profile", str(path), *flags, "--format", "json")
        assert code == 0
        totals.append(json.loads(out)["totals"])
    assert [t["params"] for t in totals] == [tensors] * 3
    ops = {}
    for seq_len in (128, 64):
        code, out, _ = run_cli(capsys, "profile", str(path), "--seq-len", str(seq_len), "--format", "json")
        ops[seq_len] = {op["name"]: op for op in json.loads(out)["ops"]}
    first, second = (f"encoder.layer.0.attention.self.softmax.linear_relu_stack.{i}" for i in (0, 2))
    n, h = 128, 128  # the config's approximator: Linear(n->h), Linear(h->n); read at T of its n
    for T in (128, 64):
        assert ops[T][first]["weight_bytes"] == 4 * (h * T + h) and ops[T][first]["params"] == h * n + h
        assert ops[T][second]["weight_bytes"] == 4 * (T * h + T) and ops[T][second]["params"] == n * h + n


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


def test_gather_reads_kept_rows_and_index():
    """select (B, T, C)[(B, K)]: reads B*K*C kept elements and B*K indices, writes B*K*C; the mask
    gather (B, T)[(B, K)] reads B*K and B*K, writes B*K. fp32, B = 2, K = 13 of T = 128."""
    B, K, C_base = 2, 13, 768
    spec = PRESETS["bert-base-uncased"].with_variant(retention=(K,) * 12)
    counts = {c.op.name: c for c in profile_model(spec, B, 128).counts}
    assert counts["encoder.layer.0.power.select"].activation_bytes == 4 * (2 * B * K * C_base + B * K)
    assert counts["encoder.layer.0.power.select_mask"].activation_bytes == 4 * (2 * B * K + B * K)


def test_ma_distilbert_state_counts_no_token_type_table():
    # DistilBERT has no token types: to_bert_keys adds one zero row for the engines, which the counts
    # must not take for the model's parameters (H params and a gather + add per token used to be counted)
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


def test_readout_is_labelled_final():
    spec = ModelSpec("ma-distil-like", 30522, 768, 6, 12, 3072, has_pooler=False, type_vocab_size=1,
                     variant=VARIANTS["ma"])
    profile = profile_model(spec, 1, 128)
    readout = next(c for c in profile.counts if c.op.name == "encoder.readout")
    assert layer_label(readout) == "final"
    assert "head" not in {row["layer"] for row in rows(profile, "layer")}


def test_trace_of_a_huge_batch_allocates_no_inputs():
    """B = 10^12 sequences of 512 tokens: 4 PB of int64 ids, which the trace used to allocate. BERT-base
    MACs per sequence: L * (4*T*C^2 + 2*T^2*C + 2*T*C*F) + C^2 (pooler), times B."""
    B, T, C_base, F, layers = 10 ** 12, 512, 768, 3072, 12
    per_sequence = layers * (4 * T * C_base ** 2 + 2 * T * T * C_base + 2 * T * C_base * F) + C_base ** 2
    assert profile_model(PRESETS["bert-base-uncased"], B, T).total("macs") == B * per_sequence
    assert len(trace(PRESETS["bert-base-uncased"], B, T)) > 0

"""Op counts against torch's FlopCounterMode, closed forms, HF's parameter count and the executed ops."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mabert_hw.backends import make_backend
from mabert_hw.backends.base import Op
from mabert_hw.cost.counts import count_ops, trace
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.spec import PRESETS
from mabert_hw.torch_ref.hf import hf_model
from mabert_hw.weights import parameter_count, random_weights

from .conftest import TINY_SPECS

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

"""PoWER-BERT elimination: every backend against the torch PoWER model on HF modules (and, on MA-BERT,
against the torch MA module with the same extraction), and the trace's shrinking T_l against
closed-form counts."""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import numpy as np
import pytest
import torch

from mabert_hw.backends import make_backend
from mabert_hw.backends.reference import ReferenceBackend
from mabert_hw.cost.counts import count_ops, trace
from mabert_hw.fold import fold_powernorm, read_hidden_states
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.power import geometric_retention, kept_tokens, parse_retention
from mabert_hw.torch_ref import power_bert
from mabert_hw.torch_ref.hf import hf_forward, hf_model
from mabert_hw.torch_ref.ma_bert import load_official
from mabert_hw.torch_ref.power_bert import PowerBert, train
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .test_ma_model import raw_ma_state, tiny_ma
from .tolerances import (
    FAST_VS_REFERENCE_ATOL,
    FAST_VS_REFERENCE_RTOL,
    FOLDED_VS_UNFOLDED_ATOL,
    REFERENCE_VS_TORCH_ATOL,
    SIGNIFICANCE_CUT_MARGIN,
)

# Peaked attention (weights std 0.3, not BERT's 0.02) so no two tokens tie in significance to within
# float32 rounding, where numpy and torch could legitimately keep different tokens.
PEAKED_STD = 0.3
SEQ_LEN = 14


def index_spy(backend_class):
    """`backend_class` remembering the significance and indices of each elimination."""

    @dataclasses.dataclass
    class Spy(backend_class):
        picked: list = dataclasses.field(default_factory=list)
        significances: list = dataclasses.field(default_factory=list)

        def _significance(self, probs, token_mask):
            significance = super()._significance(probs, token_mask)
            self.significances.append(np.asarray(significance))
            return significance

        def _top_tokens(self, significance, keep):
            index = super()._top_tokens(significance, keep)
            self.picked.append(np.asarray(index))
            return index

    return Spy


IndexSpy = index_spy(ReferenceBackend)


def retention_for(spec) -> tuple[int, ...]:
    return tuple(max(2, SEQ_LEN - 4 * (j + 1)) for j in range(spec.layers))  # 10, 6, 2, ...


def torch_power(spec, weights, batch, retention):
    model = PowerBert(hf_model(spec, weights), retention).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                    torch.from_numpy(batch.token_type_ids), output_kept=True)
    return out


@pytest.mark.parametrize("spec", TINY_SPECS, ids=lambda s: s.name)
def test_reference_keeps_the_same_tokens_as_torch_and_matches_it(spec):
    spec = dataclasses.replace(spec, num_labels=2)
    retention = retention_for(spec)
    weights = random_weights(spec, seed=11, std=PEAKED_STD)
    batch = random_batch(spec, batch=4, seq_len=SEQ_LEN, seed=12)
    assert batch.attention_mask.min() == 0, "the batch must contain padding"
    spy = IndexSpy()
    ours = forward(spec.with_variant(retention=retention), weights, batch.input_ids, spy,
                   batch.attention_mask, batch.token_type_ids)
    theirs = torch_power(spec, weights, batch, retention)

    positions = np.broadcast_to(np.arange(SEQ_LEN), batch.shape)
    picks = iter(spy.picked)
    for j, keep in enumerate(retention):
        if keep < positions.shape[1]:
            positions = np.take_along_axis(positions, next(picks), axis=1)
        np.testing.assert_array_equal(positions, theirs["kept"][j].numpy(), err_msg=f"layer {j}")
    diffs = [float(np.abs(a - b.numpy()).max()) for a, b in zip(ours.hidden_states, theirs["hidden_states"],
                                                                 strict=True)]
    assert max(diffs) <= REFERENCE_VS_TORCH_ATOL, f"max |diff| per hidden state: {diffs}"
    assert np.abs(ours.logits - theirs["logits"].numpy()).max() <= REFERENCE_VS_TORCH_ATOL
    assert [h.shape[1] for h in ours.hidden_states[1:]] == kept_tokens(SEQ_LEN, retention)


def test_padding_never_beats_a_real_token():
    """At every cut each row keeps min(keep, its real tokens) real tokens: in torch PoWER-BERT and in the
    reference backend (its picks mapped back to original positions)."""
    spec = TINY_SPECS[0]
    weights = random_weights(spec, seed=13, std=PEAKED_STD)
    batch = random_batch(spec, batch=6, seq_len=SEQ_LEN, seed=14)
    real = batch.attention_mask.sum(1)
    assert np.all(batch.attention_mask == (np.arange(SEQ_LEN) < real[:, None])), "padding sits at the end"
    retention = (9, 5)
    assert any(n < keep for n in real for keep in retention), "some row must have fewer real tokens than kept"
    assert any(n > keep for n in real for keep in retention), "some row must drop real tokens"

    def check(kept, j, keep, engine):  # kept: (B, l_j) original positions
        assert kept.shape == (len(real), keep), (engine, j, kept.shape)
        for row, n_real in enumerate(real):
            assert len(set(kept[row].tolist())) == keep and kept[row][0] == 0, (engine, j, row, kept[row])
            assert (kept[row] < n_real).sum() == min(keep, n_real), (engine, j, row, kept[row], n_real)

    out = torch_power(spec, weights, batch, retention)
    for j, keep in enumerate(retention):
        check(out["kept"][j].numpy(), j, keep, "torch")
    spy = IndexSpy()
    result = forward(spec.with_variant(retention=retention), weights, batch.input_ids, spy,
                     batch.attention_mask, batch.token_type_ids)
    assert result.hidden_states[-1].shape[1] == retention[-1]
    assert len(spy.picked) == len(retention)  # both layers cut (9 < 14, 5 < 9)
    positions = np.broadcast_to(np.arange(SEQ_LEN), batch.shape)
    for j, (keep, picked) in enumerate(zip(retention, spy.picked, strict=True)):
        positions = np.take_along_axis(positions, picked, axis=1)
        check(positions, j, keep, "reference")


def test_significance_is_attention_received_from_other_real_queries():
    rng = np.random.default_rng(15)
    probs = rng.dirichlet(np.ones(5), size=(2, 3, 5)).astype(np.float32)  # (B, H, T, T)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    s = ReferenceBackend()._significance(probs, mask)
    for b in range(2):
        for k in range(5):
            if not mask[b, k]:
                assert s[b, k] == -np.inf
                continue
            expected = sum(probs[b, h, q, k] for h in range(3) for q in range(5) if q != k and mask[b, q]) / 3
            assert s[b, k] == pytest.approx(expected, rel=1e-6)


def test_no_retention_torch_wrapper_is_hf_itself():
    spec = TINY_SPECS[1]
    weights = random_weights(spec, seed=16)
    batch = random_batch(spec, batch=3, seq_len=12, seed=17)
    ours = torch_power(spec, weights, batch, None)
    theirs = hf_forward(hf_model(spec, weights), batch)
    for a, b in zip(ours["hidden_states"], theirs["hidden_states"], strict=True):
        np.testing.assert_allclose(a.numpy(), b, atol=REFERENCE_VS_TORCH_ATOL)


def test_fast_backend_eliminates_like_reference():
    pytest.importorskip("numba")
    fast = make_backend("fast")
    spec = TINY_SPECS[2]
    retention = retention_for(spec)
    weights = random_weights(spec, seed=18, std=PEAKED_STD)
    batch = random_batch(spec, batch=3, seq_len=SEQ_LEN, seed=19)
    theirs = torch_power(spec, weights, batch, retention)
    ours = forward(spec.with_variant(retention=retention), weights, batch.input_ids, fast,
                   batch.attention_mask, batch.token_type_ids)
    for a, b in zip(ours.hidden_states, theirs["hidden_states"], strict=True):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=REFERENCE_VS_TORCH_ATOL)


def closed_form_macs(spec, batch: int, seq_len: int, retention) -> int:
    """Per layer j with T_in tokens in and T_j out: Q, K, V, O projections 4 * T_in * C^2, scores and
    context 2 * H * T_in^2 * D, FFN 2 * T_j * C * F; then pooler C^2 (and classifier)."""
    C, F, H, D = spec.hidden, spec.intermediate, spec.heads, spec.head_dim
    total, t_in = 0, seq_len
    for t_out in kept_tokens(seq_len, retention):
        total += 4 * t_in * C * C + 2 * H * t_in * t_in * D + 2 * t_out * C * F
        t_in = t_out
    return batch * (total + C * C + C * spec.num_labels)


@pytest.mark.parametrize("retention", [(10, 6, 2), (20, 20, 20), (14, 3, 3)])
def test_trace_counts_fall_as_the_closed_form(retention):
    spec = dataclasses.replace(TINY_SPECS[2], num_labels=2, max_positions=32).with_variant(retention=retention)
    ops = trace(spec, 3, SEQ_LEN)
    profile = count_ops(ops)
    assert not profile.unknown
    assert profile.total("macs") == closed_form_macs(spec, 3, SEQ_LEN, retention)
    eliminating = sum(keep < t for keep, t in zip(retention, [SEQ_LEN, *kept_tokens(SEQ_LEN, retention)]))
    assert sum(op.kind == "top_tokens" for op in ops) == eliminating


def test_retention_helpers():
    assert parse_retention("8, 8,5", 3) == (8, 8, 5)
    assert kept_tokens(6, (8, 5, 5, 2)) == [6, 5, 5, 2]
    schedule = geometric_retention(64, 6, 0.7)
    assert schedule[0] == round(64 * 0.7) and all(b <= a for a, b in pairwise(schedule))


def test_soft_extract_with_full_masks_is_the_plain_model_and_penalty_is_closed_form():
    spec = TINY_SPECS[0]
    weights = random_weights(spec, seed=20)
    batch = random_batch(spec, batch=2, seq_len=10, seed=21)
    soft = PowerBert(hf_model(spec, weights), mode="soft", max_len=16).eval()
    plain = torch_power(spec, weights, batch, None)
    with torch.no_grad():
        out = soft(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                   torch.from_numpy(batch.token_type_ids))
        penalty = float(soft.soft_penalty())
    np.testing.assert_allclose(out["hidden_states"][-1].numpy(), plain["hidden_states"][-1].numpy(), atol=1e-6)
    L = spec.layers
    assert penalty == 16 * L * (L + 1) / 2  # r = 1 everywhere: sum_j j * 16
    with torch.no_grad():
        soft.soft.copy_(torch.tensor([[1.0] * 7 + [0.0] * 9, [0.5] * 16]))
    assert soft.soft_retention() == (7, 7)


def test_soft_extract_training_shrinks_late_layers_most_and_hard_retraining_lowers_the_loss():
    spec = dataclasses.replace(TINY_SPECS[2], num_labels=2)
    batch = random_batch(spec, batch=4, seq_len=12, seed=22)
    inputs = {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": torch.from_numpy(batch.attention_mask),
              "token_type_ids": torch.from_numpy(batch.token_type_ids), "labels": torch.tensor([0, 1, 0, 1])}
    torch.manual_seed(0)
    soft = PowerBert(hf_model(spec, random_weights(spec, seed=23)), mode="soft", max_len=12)
    losses = train(soft, iter([inputs] * 5), steps=5, lr=1e-4, soft_lr=0.05, lam=1.0)
    mass = soft.soft.detach().sum(1)  # (L,): every step moves each r by about soft_lr, deeper ones no less
    assert losses[-1] < losses[0] and bool((mass[1:] <= mass[:-1] + 1e-6).all()) and float(mass[0]) < 12
    retention = soft.soft_retention()
    assert list(retention) == sorted(retention, reverse=True) and retention[0] == int(mass[0])
    hard = PowerBert(soft.hf, retention).eval()
    with torch.no_grad():  # the loss before any step, computed here
        logits = hard(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])["logits"]
        before = float(torch.nn.functional.cross_entropy(logits, inputs["labels"]))
    hard_losses = train(hard, iter([inputs] * 3), steps=3, lr=1e-4)
    assert len(hard_losses) == 3 and all(np.isfinite(hard_losses))
    assert hard_losses[0] == pytest.approx(before, rel=1e-6)
    # one batch again and again, no dropout: each step lowers its loss (by ~8e-4 at lr 1e-4, float32 noise ~1e-7)
    assert all(b < a for a, b in pairwise(hard_losses)), hard_losses


def test_hardware_cycles_price_every_elimination_op_and_each_layer_gemm_at_its_kept_tokens():
    from mabert_hw.cost import hardware
    from mabert_hw.cost.cycles import estimate

    hw = hardware.load(hardware.preset_names()[0])
    spec = dataclasses.replace(TINY_SPECS[2], max_positions=64)
    retention = (40, 20, 10)
    full = estimate(trace(spec, 2, 64), hw)
    power = estimate(trace(spec.with_variant(retention=retention), 2, 64), hw)
    assert not power.unknown and power.total("cycles") < full.total("cycles")
    ffn_in = {c.op.layer: c.op.inputs[0] for c in power.costs if c.op.name.endswith("intermediate.dense")}
    assert {layer: shape[1] for layer, shape in ffn_in.items()} == dict(enumerate(retention))


# --- PoWER-BERT on MA-BERT: significance from the softmax approximator's output rows (power.py) -----

MA_RETENTION = (9, 4)  # tiny_ma has 2 layers; the batch below has sentences of 2 to 14 real tokens


def ma_model(share: bool):
    """(spec with retention, unfolded raw weights, folded weights, fold bases) of a random MA-BERT."""
    spec = tiny_ma(share).with_variant(retention=MA_RETENTION)
    raw = raw_ma_state(spec)  # HF key names: PowerNorm running_phi, approximator linear_relu_stack
    folded, bases = fold_powernorm(spec, raw)
    return spec, raw, folded, bases


def assert_cuts_are_clear(spy):
    """At every cut the last kept token's significance clears the first dropped one's."""
    for significance, index in zip(spy.significances, spy.picked, strict=True):
        keep = index.shape[1]
        for row in significance:
            others = np.sort(row[1:][np.isfinite(row[1:])])[::-1]  # real non-CLS tokens, most significant first
            if keep >= 2 and len(others) >= keep:
                assert others[keep - 2] - others[keep - 1] > SIGNIFICANCE_CUT_MARGIN, (keep, others)


def torch_ma_power(model, batch, retention):
    """The torch MA-BERT module's layers with hard extraction between the attention block and the
    FFN, ranked by torch_ref.power_bert.significance of the approximator's outputs: hidden states
    (L + 1) and each layer's kept ORIGINAL positions."""
    ids, mask, types = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))
    with torch.no_grad():
        x = model.embeddings(ids, types, mask)  # (B, T, C)
        positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)  # (B, T)
        hidden_states, kept = [x.numpy()], []
        for keep, layer in zip(retention, model.encoder.layer, strict=True):
            context, approximated, _ = layer.attention.self(x, mask)  # (B, T, C), (B, H, T, T)
            out = layer.attention.output
            x = out.LayerNorm(x + out.dense(context), mask)
            if keep < x.shape[1]:
                index = power_bert.kept_index(power_bert.significance(approximated, mask), keep)  # (B, l_j)
                x = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                mask, positions = torch.gather(mask, 1, index), torch.gather(positions, 1, index)
            x = layer.output.LayerNorm(x + layer.output.dense(layer.activation(layer.intermediate.dense(x))), mask)
            hidden_states.append(x.numpy())
            kept.append(positions.numpy())
    return hidden_states, kept


@pytest.mark.parametrize("share", [False, True], ids=["per-layer", "shared"])
def test_ma_reference_keeps_the_same_tokens_as_the_torch_ma_model(share):
    spec, raw, folded, bases = ma_model(share)
    batch = random_batch(spec, batch=4, seq_len=SEQ_LEN, seed=12)
    assert batch.attention_mask.min() == 0 and SEQ_LEN <= spec.variant.softmax_input
    spy = IndexSpy()
    ours = forward(spec, folded, batch.input_ids, spy, batch.attention_mask, batch.token_type_ids)
    assert_cuts_are_clear(spy)
    theirs, kept = torch_ma_power(load_official(spec, raw), batch, MA_RETENTION)

    positions, picks = np.broadcast_to(np.arange(SEQ_LEN), batch.shape), iter(spy.picked)
    for j, keep in enumerate(MA_RETENTION):
        if keep < positions.shape[1]:
            positions = np.take_along_axis(positions, next(picks), axis=1)
        np.testing.assert_array_equal(positions, kept[j], err_msg=f"layer {j}")
    diffs = [float(np.abs(a - b).max()) for a, b in zip(read_hidden_states(bases, ours.hidden_states), theirs,
                                                       strict=True)]
    assert max(diffs) <= FOLDED_VS_UNFOLDED_ATOL, f"max |diff| per hidden state: {diffs}"
    real_kept = ours.token_mask.sum(1)
    assert list(real_kept) == [min(MA_RETENTION[-1], n) for n in batch.attention_mask.sum(1)]


@pytest.mark.parametrize("share", [False, True], ids=["per-layer", "shared"])
def test_ma_fast_keeps_the_same_tokens_as_reference_within_tolerance(share):
    pytest.importorskip("numba")
    from mabert_hw.backends.fast import FastBackend

    from .test_fast import assert_outputs_close

    spec, _, folded, _ = ma_model(share)
    batch = random_batch(spec, batch=4, seq_len=SEQ_LEN, seed=13)
    args = (spec, folded, batch.input_ids)
    reference, fast = IndexSpy(record=True), index_spy(FastBackend)(record=True)
    theirs = forward(*args, reference, batch.attention_mask, batch.token_type_ids)
    ours = forward(*args, fast, batch.attention_mask, batch.token_type_ids)
    assert_cuts_are_clear(reference)
    assert len(fast.picked) == len(reference.picked) > 0
    for layer, (a, b) in enumerate(zip(fast.picked, reference.picked, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"elimination {layer}")
    np.testing.assert_array_equal(ours.token_mask, theirs.token_mask)
    assert_outputs_close(ours, theirs, atol=FAST_VS_REFERENCE_ATOL, rtol=FAST_VS_REFERENCE_RTOL)
    assert fast.ops == reference.ops == trace(spec, *batch.shape)


@pytest.mark.parametrize("variant", ["bert", "ma"])
def test_fast_significance_comes_from_the_attention_kernel_and_equals_the_reference(monkeypatch, variant):
    """The fast engine must not recompute probabilities to rank tokens: its significance is the
    per-head attention received that its attention kernels write, equal to the reference's formula."""
    pytest.importorskip("numba")
    from mabert_hw.backends.fast import FastBackend

    if variant == "ma":
        spec, _, weights, _ = ma_model(False)
        retention = MA_RETENTION
    else:
        spec = TINY_SPECS[2]
        weights = random_weights(spec, seed=18, std=PEAKED_STD)
        retention = retention_for(spec)
    spec = spec.with_variant(retention=retention)
    batch = random_batch(spec, batch=3, seq_len=SEQ_LEN, seed=21)
    formula, recomputed = ReferenceBackend._significance, []
    monkeypatch.setattr(ReferenceBackend, "_significance",
                        lambda self, probs, mask: recomputed.append(1) or formula(self, probs, mask))
    seen = []

    class Recording(FastBackend):
        def significance(self, name, probs, token_mask):
            out = super().significance(name, probs, token_mask)
            seen.append((out, probs, token_mask))
            return out

    forward(spec, weights, batch.input_ids, Recording(), batch.attention_mask, batch.token_type_ids)
    assert recomputed == [] and seen
    for ours, probs, token_mask in seen:
        theirs = formula(ReferenceBackend(), probs.ready(), token_mask)  # the probabilities, formed only here
        real = np.isfinite(theirs)
        np.testing.assert_array_equal(np.isfinite(ours), real)
        np.testing.assert_allclose(ours[real], theirs[real], rtol=FAST_VS_REFERENCE_RTOL, atol=FAST_VS_REFERENCE_ATOL)

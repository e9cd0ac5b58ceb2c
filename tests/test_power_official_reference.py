"""PoWER-BERT against an independent NumPy transcription of the official code (IBM/PoWER-BERT, Goyal et al.,
ICML 2020), written here from a reading of:
- model/model.py: `_wrap_layer` (the extract layer sits after the attention block's residual + LayerNorm and
  before the feed-forward; Hard_Extract also truncates the 0/1 mask to its first l_j entries), `Hard_Extract`
  and `Soft_Extract` (`calc_avg_atten`: mean over heads; `atten_col`: sum over the query axis less the
  diagonal; Hard_Extract keeps position 0 plus tf.math.top_k(scores[1:], l_j - 1), sorted back into order;
  Soft_Extract ranks every position, CLS included, and scales the token of rank t by W[t] in [0, 1], with a
  keras l1(LAMBDA * j) regulariser on W of layer j);
- scaled_dot_attention.py: the probabilities the score reads, exp(e - max) * key_mask / sum (the official
  adds K.epsilon() = 1e-7 to the sum, left out here: a keras guard, not PoWER's; as its max is taken over the
  padded keys too, the sum can be far below 1, and kept it moved the 3-token row of the padding test below by
  up to 4e-4);
- training.py `get_configuration`: l_j = int(sum W_j), 0 -> 1, then clipped to stay non-increasing;
- utils/retention_parser.py: counts non-increasing and <= the padded length N.
tf.math.top_k puts the lower index first among equal values; the transcription sorts by (-score, index).

The project departs on purpose in three places (power.py and torch_ref/power_bert.py docstrings), so the
transcription takes them as switches: `real_queries` (padded query rows left out of the sum: the official sums
every row, so its choice depends on how much padding the batch has), `cls_first` (soft extract ranks CLS
first: the official ranks it like any token) and the mask, which the project gathers and the official
truncates (the same mask when padding sits at the end, as it does in every batch here).
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise
from math import ceil, erf, log2, sqrt

import numpy as np
import pytest
import torch

from mabert_hw.backends import make_backend
from mabert_hw.backends.reference import ReferenceBackend
from mabert_hw.cost.counts import count_ops, trace
from mabert_hw.model import forward
from mabert_hw.power import kept_tokens
from mabert_hw.torch_ref.hf import hf_model
from mabert_hw.torch_ref.power_bert import PowerBert
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS

CUT_MARGIN = 1e-4  # every compared cut clears this, so float32 rounding cannot legitimately swap a token
PEAKED_STD = 0.3  # random weights peaked enough that significance scores rarely come within CUT_MARGIN
T = 12
SPEC = dataclasses.replace(TINY_SPECS[2], num_labels=2)  # 3 layers, 7 heads of 6, F = 64
RETENTION = (9, 9, 4)  # layer 2 keeps what it gets (no cut), layer 3 cuts 9 -> 4
gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + erf(v / sqrt(2.0))))


# --- the transcription --------------------------------------------------------------------------------------

def layernorm(x, gain, bias, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * gain + bias


def attention(x, w, p, key_mask, heads):
    """keras MultiHeadAttention + ScaledDotProductAttention: context (B, T, C), probabilities (B, H, T, T)."""
    B, n, C = x.shape

    def split(name):
        return (x @ w[p + name + ".weight"].T + w[p + name + ".bias"]).reshape(B, n, heads, -1).transpose(0, 2, 1, 3)

    q, k, v = split("query"), split("key"), split("value")
    e = q @ k.transpose(0, 1, 3, 2) / sqrt(C // heads)
    e = np.exp(e - e.max(-1, keepdims=True)) * key_mask[:, None, None, :]  # padded keys: exactly 0
    a = e / e.sum(-1, keepdims=True)
    return (a @ v).transpose(0, 2, 1, 3).reshape(B, n, C), a


def significance(a, query_mask=None):
    """calc_avg_atten + atten_col: (B, T) head-mean attention summed over queries, less the diagonal.
    query_mask: the project's departure, padded query rows left out (None: every row, as the official)."""
    avg = a.mean(axis=1)  # (B, Tq, Tk)
    if query_mask is not None:
        avg = avg * query_mask[:, :, None]
    return avg.sum(axis=1) - np.diagonal(avg, axis1=1, axis2=2)


def by_rank(scores):
    """Positions, most significant first; equal scores lower position first (tf.math.top_k)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def hard_extract_index(sig, keep):
    """Hard_Extract: (B, keep) positions, CLS plus the keep - 1 top others, ascending."""
    return np.array([sorted([0] + [i + 1 for i in by_rank(row[1:])[:keep - 1]]) for row in sig])


def soft_extract_factors(sig, r, cls_first):
    """Soft_Extract: (B, T) factor of each position, r[rank of the position]."""
    factors = np.empty(sig.shape)
    for b, row in enumerate(sig):
        order = by_rank(row)
        if cls_first:
            order = [0] + [i for i in order if i != 0]
        factors[b, order] = r[:len(order)]
    return factors


def cut_margin(sig, token_mask, keep):
    """The smallest gap, over rows, between the last kept and the first dropped real non-CLS token."""
    gaps = [np.inf]
    for row, real in zip(sig, token_mask, strict=True):
        others = np.sort(row[1:][real[1:] > 0])[::-1]
        if 2 <= keep <= len(others):
            gaps.append(others[keep - 2] - others[keep - 1])
    return min(gaps)


def official_forward(spec, weights, ids, mask, types, retention=None, soft=None, real_queries=False,
                     cls_first=False):
    """The official encoder in float64 with hard extraction (retention) or soft extraction (soft: (L, T) W).
    -> hidden states (L + 1), logits, kept original positions per layer, final 0/1 mask, smallest cut margin."""
    w = {key: value.astype(np.float64) for key, value in weights.items()}
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][positions]
    x = layernorm(x + w["embeddings.token_type_embeddings.weight"][types], w["embeddings.LayerNorm.weight"],
                  w["embeddings.LayerNorm.bias"], spec.eps)
    mask = mask.astype(np.float64)
    hidden, kept, margin = [x], [], np.inf
    for j in range(spec.layers):
        p = f"encoder.layer.{j}."
        context, a = attention(x, w, p + "attention.self.", mask, spec.heads)
        x = layernorm(x + context @ w[p + "attention.output.dense.weight"].T + w[p + "attention.output.dense.bias"],
                      w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], spec.eps)
        sig = significance(a, mask if real_queries else None)
        if soft is not None:
            x = x * soft_extract_factors(sig, soft[j], cls_first)[..., None]
        elif retention is not None:
            keep = min(retention[j], x.shape[1])  # l_j >= the tokens present: top_k of them all, every one kept
            margin = min(margin, cut_margin(sig, mask, keep))
            index = hard_extract_index(sig, keep)
            x = np.take_along_axis(x, index[..., None], axis=1)
            positions = np.take_along_axis(positions, index, axis=1)
            mask = mask[:, :keep]  # the official truncates the mask
        h = gelu(x @ w[p + "intermediate.dense.weight"].T + w[p + "intermediate.dense.bias"])
        x = layernorm(x + h @ w[p + "output.dense.weight"].T + w[p + "output.dense.bias"],
                      w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], spec.eps)
        hidden.append(x)
        kept.append(positions)
    pooled = np.tanh(x[:, 0] @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])
    logits = pooled @ w["classifier.weight"].T + w["classifier.bias"]
    return hidden, logits, kept, mask, margin


def official_configuration(masses):
    """get_configuration: int(mass), 0 -> 1, each layer at most the one before."""
    out = []
    for mass in masses:
        count = int(mass) or 1
        out.append(count if not out or count < out[-1] else out[-1])
    return tuple(out)


# --- helpers ------------------------------------------------------------------------------------------------

def inputs(spec, lengths, n, seed):
    """ids, 0/1 mask, token types of rows of the given real lengths, padded at the end to n."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(n)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(1, spec.vocab_size, (len(lengths), n)) * mask
    types = rng.integers(0, spec.type_vocab_size, (len(lengths), n)) * mask
    return ids, mask, types


def recorded_picks(backend):
    """Make backend remember the index of each top_tokens call; returns the list it appends to."""
    picks, top_tokens = [], backend.top_tokens

    def recording(name, sig, keep):
        index = top_tokens(name, sig, keep)
        picks.append(np.asarray(index))
        return index

    backend.top_tokens = recording
    return picks


def project_forward(backend, spec, weights, ids, mask, types, retention):
    """The project's forward: (hidden states, logits, final token mask, kept original positions per layer)."""
    picks = iter(recorded_picks(backend))
    out = forward(spec.with_variant(retention=retention), weights, ids, backend, mask, types)
    positions, kept = np.broadcast_to(np.arange(ids.shape[1]), ids.shape), []
    for h in out.hidden_states[1:]:
        if h.shape[1] < positions.shape[1]:
            positions = np.take_along_axis(positions, next(picks), axis=1)
        kept.append(positions)
    assert next(picks, None) is None, "an elimination that shrank nothing"
    return [np.asarray(h) for h in out.hidden_states], np.asarray(out.logits), np.asarray(out.token_mask), kept


def assert_same(ours, theirs, atol):
    hidden, logits, token_mask, kept = ours
    their_hidden, their_logits, their_kept, their_mask, margin = theirs
    assert margin > CUT_MARGIN, f"a cut within {margin:.2g}: pick other seeds"
    for j, (a, b) in enumerate(zip(kept, their_kept, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"kept positions after layer {j + 1}")
    np.testing.assert_array_equal(token_mask, their_mask)
    for j, (a, b) in enumerate(zip(hidden, their_hidden, strict=True)):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=f"hidden state {j}")
    np.testing.assert_allclose(logits, their_logits, atol=atol, rtol=0)


# --- significance and selection ------------------------------------------------------------------------------

def test_significance_equals_the_official_without_padding_and_drops_only_padded_query_rows():
    rng = np.random.default_rng(1)
    _, mask, _ = inputs(SPEC, [7, 4, 7], 7, seed=2)
    scores = rng.normal(size=(3, 5, 7, 7)) * 3
    e = np.exp(scores - scores.max(-1, keepdims=True)) * mask[:, None, None, :]
    probs = e / e.sum(-1, keepdims=True)  # masked attention probabilities, padded keys exactly 0
    ours = ReferenceBackend(dtype=np.float64).significance("s", probs, mask)
    official = significance(probs)
    np.testing.assert_allclose(ours[[0, 2]], official[[0, 2]], rtol=1e-12)  # rows without padding: identical
    real = mask[1] > 0
    assert np.all(ours[1, ~real] == -np.inf)  # padded keys (0 in the official) lose to every real token
    padded_rows = probs[1][:, ~real].mean(axis=0).sum(axis=0)  # the head mean the padded queries give each key
    assert padded_rows[real].min() > 0.1  # large enough to tell the two sums apart
    np.testing.assert_allclose(ours[1, real], official[1, real] - padded_rows[real], rtol=1e-12)
    np.testing.assert_allclose(ours[1, real], significance(probs, mask)[1, real], rtol=1e-12)
    float32 = ReferenceBackend().significance("s", probs.astype(np.float32), mask)
    np.testing.assert_allclose(float32[[0, 2]], official[[0, 2]], rtol=1e-5)


@pytest.mark.parametrize("case", ["ties", "cls-lowest", "cls-highest", "zero-beats-padding"])
def test_top_tokens_keeps_what_hard_extract_keeps(case):
    keep = 4
    sig = {
        "ties": [0.5, 2.0, 1.0, 3.0, 1.0, 1.0, 0.2],  # three-way tie at the cut: the lower positions win
        "cls-lowest": [0.0, 0.4, 0.9, 0.1, 0.8, 0.7, 0.3],  # CLS kept although least significant
        "cls-highest": [9.0, 0.4, 0.9, 0.1, 0.8, 0.7, 0.3],  # CLS not counted twice among the keep - 1
        "zero-beats-padding": [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],  # real zeros (2, 3) tie padding (4, 5, 6)
    }[case]
    mask = np.array([[1, 1, 1, 1, 0, 0, 0] if case == "zero-beats-padding" else [1] * 7])
    official = hard_extract_index(np.array([sig]), keep)  # the official scores padding 0, not -inf
    project_sig = np.where(mask > 0, np.array([sig]), -np.inf)  # what the project's significance returns
    np.testing.assert_array_equal(ReferenceBackend().top_tokens("t", project_sig, keep), official)
    expected = {"ties": [0, 1, 2, 3], "cls-lowest": [0, 2, 4, 5], "cls-highest": [0, 2, 4, 5],
                "zero-beats-padding": [0, 1, 2, 3]}[case]
    assert official.tolist() == [expected]  # the transcription itself, worked by hand


# --- whole forward passes -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights():
    return random_weights(SPEC, seed=3, std=PEAKED_STD)


@pytest.mark.parametrize("engine", ["reference-f64", "reference", "fast"])
def test_forward_without_padding_is_the_official_hard_extract(weights, engine):
    backend = {"reference-f64": lambda: ReferenceBackend(dtype=np.float64), "reference": ReferenceBackend,
               "fast": lambda: make_backend("fast")}[engine]()
    ids, mask, types = inputs(SPEC, [T] * 3, T, seed=4)
    theirs = official_forward(SPEC, weights, ids, mask, types, RETENTION)
    assert [k.shape[1] for k in theirs[2]] == [9, 9, 4]
    assert_same(project_forward(backend, SPEC, weights, ids, mask, types, RETENTION), theirs,
                atol=1e-5 if engine == "reference-f64" else 1e-4)


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_forward_with_padding_is_the_official_hard_extract_over_real_queries(weights, engine):
    backend = ReferenceBackend() if engine == "reference" else make_backend("fast")
    ids, mask, types = inputs(SPEC, [T, 10, 7, 3], T, seed=12)  # rows shorter than l_1 = 9 and than l_3 = 4
    ours = project_forward(backend, SPEC, weights, ids, mask, types, RETENTION)
    theirs = official_forward(SPEC, weights, ids, mask, types, RETENTION, real_queries=True)
    assert_same(ours, theirs, atol=1e-4)
    # the padded query rows, which the official counts, would change the choice in this batch
    every_row = official_forward(SPEC, weights, ids, mask, types, RETENTION)[2]
    assert not np.array_equal(every_row[0], theirs[2][0])
    # a row keeps min(l_j, its real tokens) real tokens; the rest of its l_j slots are padding, masked
    assert ours[2].sum(1).tolist() == [4, 4, 4, 3]


def test_torch_power_model_is_the_official_hard_extract(weights):
    ids, mask, types = inputs(SPEC, [T, 11, 5], T, seed=6)
    model = PowerBert(hf_model(SPEC, weights), RETENTION).eval()
    with torch.no_grad():
        out = model(*(torch.from_numpy(a) for a in (ids, mask, types)), output_kept=True)
    hidden, logits, kept, _, margin = official_forward(SPEC, weights, ids, mask, types, RETENTION, real_queries=True)
    assert margin > CUT_MARGIN
    for a, b in zip(out["kept"], kept, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    for a, b in zip(out["hidden_states"], hidden, strict=True):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["logits"].numpy(), logits, atol=1e-4, rtol=0)


def test_a_rows_choice_does_not_depend_on_the_batch_padding_unlike_the_official(weights):
    """The reason for the real-queries departure: the same sentence alone and padded with 4 more slots keeps
    the same tokens in the project, while the official score's padded query rows change its choice."""
    retention = (5, 3, 2)
    alone = inputs(SPEC, [8], 8, seed=8)
    padded = tuple(np.pad(a, ((0, 0), (0, 4))) for a in alone)

    def real_kept(kept):
        return [[int(p) for p in k[0] if p < 8] for k in kept]

    project = ReferenceBackend(dtype=np.float64)
    assert real_kept(project_forward(project, SPEC, weights, *alone, retention)[3]) == \
        real_kept(project_forward(project, SPEC, weights, *padded, retention)[3])
    official_alone = official_forward(SPEC, weights, *alone, retention)
    official_padded = official_forward(SPEC, weights, *padded, retention)
    assert min(official_alone[4], official_padded[4]) > CUT_MARGIN  # each choice clear, not a rounding tie
    assert real_kept(official_alone[2]) != real_kept(official_padded[2])


# --- soft extract and the configuration search ----------------------------------------------------------------

def test_soft_extract_forward_is_the_official_with_cls_ranked_first(weights):
    ids, mask, types = inputs(SPEC, [T, 8], T, seed=8)
    r = np.random.default_rng(9).uniform(0.2, 1.0, (SPEC.layers, T))
    model = PowerBert(hf_model(SPEC, weights), mode="soft", max_len=T).eval()
    with torch.no_grad():
        model.soft.copy_(torch.from_numpy(r))
        out = model(*(torch.from_numpy(a) for a in (ids, mask, types)))
    hidden, logits, *_ = official_forward(SPEC, weights, ids, mask, types, soft=r, real_queries=True, cls_first=True)
    for j, (a, b) in enumerate(zip(out["hidden_states"], hidden, strict=True)):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-4, rtol=0, err_msg=f"hidden state {j}")
    np.testing.assert_allclose(out["logits"].numpy(), logits, atol=1e-4, rtol=0)
    # the departure matters: ranked as the official does, CLS would take another factor
    official = official_forward(SPEC, weights, ids, mask, types, soft=r, real_queries=True)[0]
    assert np.abs(official[-1] - hidden[-1]).max() > 1e-3


def test_soft_penalty_and_configuration_are_the_official_regulariser_and_get_configuration():
    rng = np.random.default_rng(10)
    r = rng.uniform(0.01, 0.99, (4, 16))
    r[1] *= 0.3  # mass below layer 3's: the running minimum must hold layer 3 down
    r[2, :8] = 1.0  # mass of whole entries plus a fraction
    r[3] = 0.03  # mass 0.48: int() gives 0, the official makes it 1
    spec = dataclasses.replace(SPEC, layers=4)
    model = PowerBert(hf_model(spec, random_weights(spec, seed=11)), mode="soft", max_len=16)
    with torch.no_grad():
        model.soft.copy_(torch.from_numpy(r).float())
    penalty = model.soft_penalty()
    penalty.backward()
    # keras l1(LAMBDA * j) on W_j in [0, 1], over LAMBDA: value sum_j j * sum_t W_j[t], gradient j
    assert float(penalty.detach()) == pytest.approx(sum((j + 1) * r[j].sum() for j in range(4)), rel=1e-6)
    np.testing.assert_array_equal(model.soft.grad.numpy(), np.repeat(np.arange(1.0, 5.0)[:, None], 16, axis=1))
    masses = model.soft.detach().double().sum(1).numpy()
    expected = official_configuration(masses)
    assert expected[3] == 1 and expected[2] == expected[1] < int(masses[2])
    assert model.soft_retention() == expected


# --- op counts of a schedule ----------------------------------------------------------------------------------

def layer_flops(B, t, u, C, F, H):
    """FLOPs of one post-LN layer taking t tokens in and passing u on, under the conventions cost/counts.py
    states: a GEMM 2 per MAC, a bias or residual add 1 per element, a reduction of n values n - 1; per softmax
    row of n, n - 1 max, n subtract, n exp, n - 1 add, n div; per LayerNorm row of C, 4C - 1 adds (sum,
    subtract, sum of squares, + eps, + bias), 3C + 2 muls (two 1/C, square, rsqrt factor, gain), one rsqrt;
    GELU 0.5 * x * (1 + erf(x / sqrt 2)): 3 muls, an add and an erf per element."""
    D = C // H

    def layernorm_rows(rows):
        return rows * (7 * C + 2)

    attention = (3 * (2 * t * C * C + t * C) + 2 * 2 * H * t * t * D  # Q, K, V with biases; QK^T and PV
                 + 2 * H * t * t + H * t * (5 * t - 2)  # scale, additive mask; softmax rows of t
                 + 2 * t * C * C + t * C + t * C + layernorm_rows(t))  # output dense + bias, residual, LayerNorm
    power = 0
    if u < t:
        # each key sums its H * t probabilities and subtracts its H diagonal ones, then one 1/H scaling;
        # top_tokens: the stated convention, (t - 1 + u) * ceil(log2 u) comparisons (bounded heap, re-sort)
        power = t * (H * t - 1 + H) + t + (t - 1 + u) * max(1, ceil(log2(max(u, 2))))
    ffn = 2 * u * C * F + u * F + 5 * u * F + 2 * u * F * C + u * C + u * C + layernorm_rows(u)
    return B * (attention + power + ffn)


@pytest.mark.parametrize("retention", [(9, 9, 4), (12, 3, 1), (20, 20, 20), (11, 10, 9)])
def test_trace_flops_per_layer_are_the_closed_form(retention):
    B, C, F, H = 2, SPEC.hidden, SPEC.intermediate, SPEC.heads
    spec = SPEC.with_variant(retention=retention)
    profile = count_ops(trace(spec, B, T))
    assert not profile.unknown
    per_layer = [0] * spec.layers
    for c in profile.counts:
        if c.op.layer is not None:
            per_layer[c.op.layer] += c.flops
    tokens = [T, *kept_tokens(T, retention)]
    assert per_layer == [layer_flops(B, t, u, C, F, H) for t, u in pairwise(tokens)]
    # everything outside the layers is the baseline's: the whole saving is in the layers
    baseline = count_ops(trace(SPEC, B, T)).total("flops")
    assert baseline - profile.total("flops") == spec.layers * layer_flops(B, T, T, C, F, H) - sum(per_layer)
    gemm = sum(2 * B * (4 * t * C * C + 2 * t * t * C + 2 * u * C * F) for t, u in pairwise(tokens))
    assert gemm == sum(c.gemm_flops for c in profile.counts if c.op.layer is not None)

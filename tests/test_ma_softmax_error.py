"""softmax-error metrics against closed forms on HF attention rows: a uniform approximator, and one whose
outputs follow HF's own scores, go negative and leave the simplex, with every metric written out in NumPy."""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy

from mabert_hw.inputs import random_batch
from mabert_hw.spec import VARIANTS, ModelSpec
from mabert_hw.torch_ref.hf import hf_forward, hf_model
from mabert_hw.torch_ref.ma_bert import load_official
from mabert_hw.torch_ref.softmax_error import CLIP_FLOOR, METRICS, SUM_TOLERANCE, TOP_K, row_errors
from mabert_hw.weights import random_weights

from .tolerances import REFERENCE_VS_TORCH_ATOL

BASE = ModelSpec("tiny", vocab_size=50, hidden=16, layers=2, heads=2, intermediate=24, max_positions=32)


def test_uniform_approximator_gives_closed_form_errors():
    T, n = 10, 16
    weights = random_weights(BASE, seed=3)
    ma = BASE.with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": n, "softmax_hidden": 4})
    uniform = {k: np.zeros(s, np.float32) for k, s in {"0.weight": (4, n), "0.bias": (4,), "2.weight": (n, 4)}.items()}
    uniform["2.bias"] = np.full(n, 1.0 / T, np.float32)  # q = 1/T on every one of the T columns
    ma_weights = {f"encoder.layer.{i}.attention.self.softmax.linear_relu_stack.{k}": v
                  for i in range(BASE.layers) for k, v in uniform.items()}
    batch = random_batch(BASE, 3, T, seed=2)
    errors = row_errors(load_official(BASE, weights), ma, ma_weights, batch)
    probs = hf_forward(hf_model(BASE, weights), batch)["attentions"]  # L x (B, H, T, T)
    real = batch.attention_mask.astype(bool)
    for layer, p in enumerate(probs):
        rows = p.transpose(1, 0, 2, 3)[:, real]  # (H, rows, T)
        kl = entropy(rows, np.full_like(rows, 1.0 / T), axis=-1)  # scipy: sum p log(p / q)
        assert np.abs(errors["kl"][layer] - kl).max() <= REFERENCE_VS_TORCH_ATOL
        assert np.abs(errors["mean_abs"][layer] - np.abs(rows - 1.0 / T).mean(-1)).max() <= REFERENCE_VS_TORCH_ATOL
    assert errors["negative"].sum() == 0 and errors["sum_off"].sum() == 0  # uniform q sums to 1
    assert np.array_equal(errors["length"], np.repeat(real.sum(1), real.sum(1)))


def hf_scores_and_probs(spec, weights, batch):
    """Per layer, HF's scaled scores q k^T / sqrt(d) (B, H, T, T), read from its query/key projections by
    hooks, and its eager attention probabilities."""
    model = hf_model(spec, weights)
    projections = {}
    hooks = [getattr(layer.attention.self, name).register_forward_hook(
        lambda module, args, out, key=(i, name): projections.__setitem__(key, out.detach().numpy()))
        for i, layer in enumerate(model.encoder.layer) for name in ("query", "key")]
    try:
        probs = hf_forward(model, batch)["attentions"]
    finally:
        for hook in hooks:
            hook.remove()
    B, T = batch.shape
    d = spec.hidden // spec.heads

    def heads(x):
        return x.reshape(B, T, spec.heads, d).transpose(0, 2, 1, 3).astype(np.float64)

    scores = [heads(projections[i, "query"]) @ heads(projections[i, "key"]).transpose(0, 1, 3, 2) / np.sqrt(d)
              for i in range(spec.layers)]
    return scores, probs


def closed_forms(p, q):
    """The seven metrics of one (rows, T) block, as softmax_error's docstring defines them."""
    err = np.abs(p - q)
    clipped = np.maximum(q, CLIP_FLOOR)
    k = min(TOP_K, p.shape[-1])
    top_q = np.argsort(-q, axis=-1, kind="stable")[:, :k]
    return {"max_abs": err.max(-1), "mean_abs": err.mean(-1), "negative": (q < 0).any(-1),
            "sum_off": np.abs(q.sum(-1) - 1) > SUM_TOLERANCE,
            "kl": entropy(p, clipped / clipped.sum(-1, keepdims=True), axis=-1),  # sum p log(p / q~)
            "argmax_agree": p.argmax(-1) == q.argmax(-1),
            "topk_overlap": np.take_along_axis(p, top_q, -1).sum(-1) / np.sort(p, axis=-1)[:, -k:].sum(-1)}


def test_score_following_approximator_gives_closed_form_errors():
    """q_j = c_j + a * (s_j m_j) over the T columns (an identity first layer, ReLU inactive: its bias
    exceeds every |score|): c_0 is small, so q_0 goes negative where s_0 < -c_0 / a; row sums are
    1 + a * sum(s m), off by more than 1 % on some rows only; padded keys get q = c_j > 0 = p."""
    T, n, a, lift = 10, 16, 0.005, 10.0
    spec = BASE
    weights = random_weights(spec, seed=3, std=0.3)  # scores spread over about +-5
    ma = spec.with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": n, "softmax_hidden": n})
    c = np.full(n, 0.997 / (T - 1))
    c[0] = 0.003
    approximator = {"0.weight": np.eye(n), "0.bias": np.full(n, lift), "2.weight": a * np.eye(n),
                    "2.bias": c - a * lift}
    ma_weights = {f"encoder.layer.{i}.attention.self.softmax.linear_relu_stack.{k}": v.astype(np.float32)
                  for i in range(spec.layers) for k, v in approximator.items()}
    batch = random_batch(spec, 3, T, seed=2)
    errors = row_errors(load_official(spec, weights), ma, ma_weights, batch)
    assert set(errors) == set(METRICS) | {"length"}

    scores, probs = hf_scores_and_probs(spec, weights, batch)
    real = batch.attention_mask.astype(bool)
    additive = np.where(real, 0.0, -np.inf)[:, None, None, :]
    m = real[:, None, None, :].astype(np.float64)
    W0, b0, W2, b2 = (approximator[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    expected = {name: [] for name in METRICS}
    for s, p in zip(scores, probs):
        softmax = np.exp(s + additive - (s + additive).max(-1, keepdims=True))
        np.testing.assert_allclose(softmax / softmax.sum(-1, keepdims=True), p, atol=REFERENCE_VS_TORCH_ATOL)
        x = np.pad(s * m, [(0, 0)] * 3 + [(0, n - T)])  # zero-padded to the approximator's n inputs
        q = (np.maximum(x @ W0.T + b0, 0) @ W2.T + b2)[..., :T]  # (B, H, T, T)
        rows = closed_forms(*(x.transpose(1, 0, 2, 3)[:, real].reshape(-1, T) for x in (p, q)))
        for name, v in rows.items():
            expected[name].append(v.reshape(spec.heads, -1))  # (H, real rows), rows in batch order
    for name in METRICS:
        want = np.stack(expected[name]).astype(np.float64)
        assert errors[name].shape == want.shape, name
        np.testing.assert_allclose(errors[name], want, atol=REFERENCE_VS_TORCH_ATOL, rtol=0, err_msg=name)
    # Every flag metric takes both values and the continuous ones vary: constants cannot pass the above.
    for name in ("negative", "sum_off", "argmax_agree"):
        assert 0 < errors[name].mean() < 1, (name, errors[name].mean())
    assert errors["topk_overlap"].min() < 1 and np.ptp(errors["max_abs"]) > 0 and np.ptp(errors["kl"]) > 0

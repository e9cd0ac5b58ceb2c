"""softmax-error metrics against closed forms on HF attention rows (approximator fixed to uniform)."""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy

from mabert_hw.inputs import random_batch
from mabert_hw.spec import VARIANTS, ModelSpec
from mabert_hw.torch_ref.hf import hf_forward, hf_model
from mabert_hw.torch_ref.ma_bert import load_official
from mabert_hw.torch_ref.softmax_error import row_errors
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

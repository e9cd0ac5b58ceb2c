"""quant-error's choice of real-token entries (quant/error.py real_positions) follows what an op's axes
mean, not only its shape: a per-head context (B, H, T, D), an approximator hidden layer (B, H, T, h) or
a pooler (B, C) whose width equals T keeps every column of its real rows. Before, a last axis equal to T
was read as the keys' and its columns at padding positions were dropped (14 % of MiniLM's context
entries at T = 32 with one row padded after 20 tokens, which moved its SQNR by 0.03 dB).

Each expected figure is computed here from the captured tensors with the entries picked by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.backends.reference import ReferenceBackend
from mabert_hw.model import forward, indexes_keys
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import calibrate
from mabert_hw.quant.error import capture, compare, tensor_errors
from mabert_hw.spec import Variant
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS

SPEC = TINY_SPECS[0]  # hidden 24, 3 heads: D = 8
B, REAL = 2, 5  # the second sequence has REAL real tokens


def _run(spec, T: int):
    weights = random_weights(spec, 11)
    ids = np.random.default_rng(11).integers(1, spec.vocab_size, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, REAL:] = 0

    def run(backend):
        return forward(spec, weights, ids, backend, mask).last_hidden_state

    return run, mask


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return round(float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))), 2)


def _errors(spec, T: int):
    run, mask = _run(spec, T)
    calibration = calibrate(run)
    config = qconfig.from_dict({"act_bits": 6})
    rows = {r["tensor"]: r for r in tensor_errors(run, config, calibration, mask)}
    ref, fixed = ReferenceBackend(), FixedBackend(config=config, calibration=calibration)
    ref_out, fixed_out = capture(ref), capture(fixed)
    run(ref)
    run(fixed)
    return rows, ref_out, fixed_out, mask > 0


@pytest.mark.parametrize("T", [SPEC.head_dim, SPEC.hidden])  # D == T, then C == T
def test_every_column_of_a_real_row_counts_when_a_width_equals_t(T):
    rows, ref, fixed, real = _errors(SPEC, T)
    context = "encoder.layer.0.attention.self.context"  # (B, H, T, D): the real query rows, all D columns
    picked = [(ref[context][b, :, t], fixed[context][b, :, t]) for b in range(B) for t in range(T) if real[b, t]]
    assert rows[context]["sqnr_db"] == _sqnr(*(np.concatenate([p[i] for p in picked]) for i in (0, 1)))
    hidden = "encoder.layer.0.output.LayerNorm"  # (B, T, C): the real token rows
    assert rows[hidden]["sqnr_db"] == _sqnr(ref[hidden][real], fixed[hidden][real])
    pooler = "pooler.dense"  # (B, C): no token axis, every entry
    assert rows[pooler]["sqnr_db"] == _sqnr(ref[pooler], fixed[pooler])


def test_scores_and_probabilities_drop_padding_keys_too():
    T = SPEC.head_dim
    rows, ref, fixed, real = _errors(SPEC, T)
    pairs = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, T, T): real query and key
    for op in ("scores", "scale", "mask", "softmax"):
        name = f"encoder.layer.0.attention.self.{op}"
        assert indexes_keys(name)
        keep = np.broadcast_to(pairs, ref[name].shape)
        assert rows[name]["sqnr_db"] == _sqnr(ref[name][keep], fixed[name][keep])


def test_ma_approximator_hidden_layer_as_wide_as_t_keeps_its_columns():
    T = 8
    spec = dataclasses.replace(SPEC, variant=Variant(softmax="mlp", ffn_activation="relu", norm="powernorm",
                                                     mask="multiplicative", softmax_input=16, softmax_hidden=T))
    rows, ref, fixed, real = _errors(spec, T)
    hidden = "encoder.layer.0.attention.self.softmax.linear_relu_stack.0"  # (B, H, T, h), h == T
    keep = np.broadcast_to(real[:, None, :, None], ref[hidden].shape)
    assert rows[hidden]["sqnr_db"] == _sqnr(ref[hidden][keep], fixed[hidden][keep])
    probs = "encoder.layer.0.attention.self.softmax.linear_relu_stack.2"  # (B, H, T, T) over the keys
    keep = np.broadcast_to(real[:, None, :, None] & real[:, None, None, :], ref[probs].shape)
    assert indexes_keys(probs) and rows[probs]["sqnr_db"] == _sqnr(ref[probs][keep], fixed[probs][keep])


def test_compare_reads_the_last_axis_as_keys_only_when_told():
    token_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    pad = token_mask == 0
    scores = np.random.default_rng(3).normal(0, 1, (2, 3, 4, 4))
    noisy = scores + np.where(pad[:, None, None, :], 100.0, 0.0)  # errors at padding keys of real queries
    assert compare(scores, noisy, token_mask, keys=True)["sqnr_db"] == np.inf
    assert compare(scores, noisy, token_mask)["sqnr_db"] < 0  # a (B, H, T, D) tensor with D == T: real columns

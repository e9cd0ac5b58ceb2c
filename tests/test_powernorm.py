"""PowerNorm's training-mode statistic, checked against NumPy written from the definition in
torch_ref/ma_bert.py's docstring: the batch statistic is mean(x^2) per channel over the real tokens
only, and in iteration i of the warm-up running_phi <- phi (i - 1) / i + statistic / i, then
running_phi <- 0.9 running_phi + 0.1 statistic (the official MaskPowerNorm update at accumulation_step = 1;
test_ma_official_reference.py checks it against a transcription of that code). (The conversion tests cannot
see this: the engine and the torch module both read the same saved running_phi.)"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch

from mabert_hw.inputs import Batch
from mabert_hw.spec import Variant
from mabert_hw.torch_ref.ma_bert import MABertModel, PowerNorm
from mabert_hw.torch_ref.train import calibrate_powernorm

from .conftest import TINY_SPECS

ALPHA = 0.9  # the MaskPowerNorm default alpha_fwd (MA-BERT); written here, not read from the module


def updated(phi: np.ndarray, stat: np.ndarray, step: int) -> np.ndarray:
    """running_phi after warm-up iteration `step` (counted from 1) saw the statistic `stat`."""
    return ALPHA * (phi * (step - 1) / step + stat / step) + (1 - ALPHA) * stat


B, T, C = 3, 7, 5
LENGTHS = (7, 4, 2)  # real tokens per row: rows 1 and 2 are padded


def padded_batch(seed: int = 0, pad_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x (B, T, C) float32 with channel-dependent scales and mask (B, T) int64; padding holds pad_value."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(B, T, C)) * np.array([0.5, 1.0, 2.0, 3.0, 0.1]) + 0.7).astype(np.float32)
    mask = np.zeros((B, T), np.int64)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = 1
        x[row, n:] = pad_value
    return x, mask


def masked_phi(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(C,) mean of x^2 over the real tokens, by an explicit loop in float64."""
    total, count = np.zeros(x.shape[-1]), 0
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if mask[b, t]:
                total += x[b, t].astype(np.float64) ** 2
                count += 1
    return total / count


def fresh_norm(phi0: np.ndarray, eps: float = 1e-5) -> PowerNorm:
    norm = PowerNorm(C, eps)
    with torch.no_grad():
        norm.running_phi.copy_(torch.from_numpy(phi0.astype(np.float32)).view(1, C, 1, 1))
        norm.weight.copy_(torch.tensor([1.0, 2.0, -0.5, 1.5, 0.3]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3, 0.4]))
    return norm


def test_training_forward_updates_running_phi_with_the_masked_statistic():
    phi0 = np.array([0.5, 1.5, 2.0, 4.0, 0.25])
    x, mask = padded_batch(pad_value=0.0)
    norm = fresh_norm(phi0).train()
    out = norm(torch.from_numpy(x), torch.from_numpy(mask))

    phi = masked_phi(x, mask)
    expected = updated(phi0, phi, step=1)
    got = norm.running_phi.detach().numpy().reshape(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert norm.running_phi.shape == (1, C, 1, 1)
    assert int(norm.iters.item()) == 1
    # the training output is normalised by the batch statistic (not by running_phi)
    w, b = norm.weight.detach().numpy(), norm.bias.detach().numpy()
    want = w * (x / np.sqrt(phi + norm.eps)) + b
    real = mask.astype(bool)
    np.testing.assert_allclose(out.detach().numpy()[real], want[real], rtol=1e-5, atol=1e-5)
    # this batch tells the masked statistic apart from the every-token one
    assert not np.allclose(phi, (x.astype(np.float64) ** 2).mean(axis=(0, 1)), rtol=1e-3)


def test_padding_values_do_not_change_the_statistic():
    phi0 = np.ones(C)
    got = []
    for pad in (0.0, 50.0, -7.0):
        x, mask = padded_batch(pad_value=pad)
        norm = fresh_norm(phi0).train()
        out = norm(torch.from_numpy(x), torch.from_numpy(mask))
        got.append((norm.running_phi.detach().numpy().reshape(-1), out.detach().numpy()[mask.astype(bool)]))
    x, mask = padded_batch(pad_value=0.0)
    np.testing.assert_allclose(got[0][0], updated(phi0, masked_phi(x, mask), step=1), rtol=1e-5)
    for phi, real_out in got[1:]:
        np.testing.assert_allclose(phi, got[0][0], rtol=1e-6)
        np.testing.assert_allclose(real_out, got[0][1], rtol=1e-5, atol=1e-6)


def test_two_training_forwards_compound_the_moving_average():
    phi0 = np.array([2.0, 0.5, 1.0, 3.0, 1.0])
    norm = fresh_norm(phi0).train()
    expected = phi0.copy()
    for step in (1, 2):
        x, mask = padded_batch(seed=step)
        norm(torch.from_numpy(x), torch.from_numpy(mask))
        expected = updated(expected, masked_phi(x, mask), step)
    np.testing.assert_allclose(norm.running_phi.numpy().reshape(-1), expected, rtol=1e-5)
    assert int(norm.iters.item()) == 2


def test_eval_forward_uses_running_phi_and_leaves_it_alone():
    phi0 = np.array([0.5, 1.5, 2.0, 4.0, 0.25])
    x, mask = padded_batch()
    norm = fresh_norm(phi0).eval()
    out = norm(torch.from_numpy(x), torch.from_numpy(mask)).detach().numpy()
    np.testing.assert_allclose(norm.running_phi.numpy().reshape(-1), phi0, rtol=0)
    w, b = norm.weight.detach().numpy(), norm.bias.detach().numpy()
    np.testing.assert_allclose(out, w * x / np.sqrt(phi0 + norm.eps) + b, rtol=1e-5, atol=1e-6)


def test_calibrate_powernorm_feeds_every_norm_its_masked_statistic():
    """calibrate_powernorm on a padded batch: each PowerNorm's running_phi moves by the masked statistic of
    the input it saw (captured by a hook; the statistic itself is computed here in NumPy)."""
    variant = Variant(softmax="mlp", ffn_activation="relu", norm="powernorm", mask="multiplicative",
                      softmax_input=16, softmax_hidden=8)
    spec = dataclasses.replace(TINY_SPECS[0], variant=variant)
    torch.manual_seed(0)
    model = MABertModel(spec)
    norms = [m for m in model.modules() if isinstance(m, PowerNorm)]
    assert len(norms) == 1 + 2 * spec.layers  # embeddings + two per layer
    seen: dict[int, list] = {id(n): [] for n in norms}

    def hook(module, args):  # the input x only: which tokens are real comes from the batch below
        before = module.running_phi.detach().numpy().reshape(-1).copy()
        seen[id(module)].append((args[0].detach().numpy().copy(), before))

    handles = [n.register_forward_pre_hook(hook) for n in norms]
    rng = np.random.default_rng(4)
    ids = rng.integers(1, spec.vocab_size, size=(3, 9))
    mask = np.array([[1] * 9, [1] * 5 + [0] * 4, [1] * 3 + [0] * 6])
    ids[mask == 0] = 0
    batch = Batch(ids.astype(np.int64), mask.astype(np.int64), np.zeros_like(ids, dtype=np.int64))
    calibrate_powernorm(model, itertools.repeat(batch), steps=2)
    for h in handles:
        h.remove()
    for norm in norms:
        calls = seen[id(norm)]
        assert len(calls) == 2
        expected = calls[0][1]
        for step, (x, before) in enumerate(calls, start=1):
            np.testing.assert_allclose(before, expected, rtol=1e-6)
            expected = updated(expected, masked_phi(x, mask), step)
        np.testing.assert_allclose(norm.running_phi.numpy().reshape(-1), expected, rtol=1e-5, atol=1e-7)

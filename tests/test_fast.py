"""Fast (Numba) backend == reference backend, layer by layer, and fusion leaves the recorded ops alone; a
fast backend's thread count holds during its own forwards only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("numba")

from mabert_hw.backends import make_backend  # noqa: E402
from mabert_hw.cost.counts import trace  # noqa: E402
from mabert_hw.inputs import SAMPLE_TEXTS, random_batch, tokenize  # noqa: E402
from mabert_hw.model import forward  # noqa: E402
from mabert_hw.spec import VARIANTS  # noqa: E402
from mabert_hw.weights import random_weights  # noqa: E402

from .conftest import TINY_SPECS  # noqa: E402
from .tolerances import FAST_VS_REFERENCE_ATOL, FAST_VS_REFERENCE_DEEP_ATOL, FAST_VS_REFERENCE_RTOL  # noqa: E402


def run_both(spec, weights, batch, **fast_options):
    fast = make_backend("fast", record=True, **fast_options)
    reference = make_backend("reference", record=True)
    args = (batch.input_ids,)
    kwargs = {"attention_mask": batch.attention_mask, "token_type_ids": batch.token_type_ids}
    return (forward(spec, weights, *args, fast, **kwargs), fast.ops,
            forward(spec, weights, *args, reference, **kwargs), reference.ops)


def assert_close(label, ours, theirs, atol=FAST_VS_REFERENCE_ATOL, rtol=FAST_VS_REFERENCE_RTOL):
    diff = np.abs(ours - theirs)
    bound = atol + rtol * np.abs(theirs)
    if not (diff <= bound).all():
        worst = np.unravel_index(np.argmax(diff - bound), diff.shape)
        pytest.fail(f"{label}: maxdiff {diff.max():.3g}; first worst at {worst}: "
                    f"fast {ours[worst]!r} vs reference {theirs[worst]!r}")


def assert_outputs_close(ours, theirs, **tolerance):
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    for layer, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == b.shape
        assert_close(f"hidden state {layer}", a, b, **tolerance)
    for label in ("pooled", "logits"):
        a, b = getattr(ours, label), getattr(theirs, label)
        assert (a is None) == (b is None)
        if a is not None:
            assert isinstance(a, np.ndarray)
            assert_close(label, a, b, **tolerance)


@pytest.mark.parametrize("spec", TINY_SPECS, ids=lambda s: s.name)
def test_fast_equals_reference_on_padded_random_batches(spec):
    # std 0.2 (10x BERT's init): peaked attention and large activations, yet float32 rounding noise
    # (reference f32 vs f64) stays ~1e-6; at std 0.5 it reaches 1.2e-5, past the tolerance for both.
    weights = random_weights(spec, seed=3, std=0.2)
    batch = random_batch(spec, batch=4, seq_len=spec.max_positions - 3, seed=5)
    assert batch.attention_mask.min() == 0  # padding is exercised
    ours, fast_ops, theirs, reference_ops = run_both(spec, weights, batch)
    assert_outputs_close(ours, theirs)
    assert fast_ops == reference_ops == trace(spec, *batch.shape)


def test_fast_equals_reference_with_a_classifier_head_and_one_thread():
    spec = replace(TINY_SPECS[0], name="tiny-cls", num_labels=3)
    weights = random_weights(spec, seed=4)
    batch = random_batch(spec, batch=3, seq_len=9, seed=6)
    ours, fast_ops, theirs, reference_ops = run_both(spec, weights, batch, threads=1)
    assert_outputs_close(ours, theirs)
    assert fast_ops == reference_ops


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"bert"}))
def test_fast_runs_other_variants_through_the_reference_ops(variant):
    spec = TINY_SPECS[0].with_variant(**VARIANTS[variant].__dict__)
    weights = random_weights(spec, seed=7)
    batch = random_batch(spec, batch=3, seq_len=12, seed=8)
    ours, fast_ops, theirs, reference_ops = run_both(spec, weights, batch)
    assert_outputs_close(ours, theirs)
    assert fast_ops == reference_ops


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("seq_len", [16, 11])  # T = the approximator's n, and T < n (truncated)
def test_ma_attention_runs_reassociated_and_equals_reference(monkeypatch, share, seq_len):
    import mabert_hw.backends.fast as fast_module

    spec = TINY_SPECS[0].with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": 16, "softmax_hidden": 12,
                                         "share_softmax": share})
    weights = random_weights(spec, seed=9)
    batch = random_batch(spec, batch=3, seq_len=seq_len, seed=10)
    assert batch.attention_mask.min() == 0
    calls = []
    kernel = fast_module.ma_attention
    monkeypatch.setattr(fast_module, "ma_attention", lambda *args: calls.append(1) or kernel(*args))
    ours, fast_ops, theirs, reference_ops = run_both(spec, weights, batch)
    assert len(calls) == spec.layers  # every layer's attention took the fused kernel
    assert_outputs_close(ours, theirs)
    assert fast_ops == reference_ops


def test_fast_equals_reference_on_minilm_with_real_sentences(minilm):
    batch = tokenize(minilm.tokenizer_dir, SAMPLE_TEXTS)
    assert batch.attention_mask.min() == 0  # sentences of different lengths: padded
    ours, fast_ops, theirs, reference_ops = run_both(minilm.spec, minilm.weights, batch)
    assert_close("embeddings", ours.hidden_states[0], theirs.hidden_states[0])
    assert_outputs_close(ours, theirs, atol=FAST_VS_REFERENCE_DEEP_ATOL, rtol=0.0)
    assert fast_ops == reference_ops


def test_fast_rejects_float64():
    with pytest.raises(ValueError, match="float32"):
        make_backend("fast", dtype=np.float64)


def test_vectorisable_erf_and_exp_against_scipy_and_numpy_float64():
    from numba import njit
    from scipy.special import erf

    from mabert_hw.kernels.approx import erf32, exp32_parts

    from .tolerances import FAST_ERF_ATOL, FAST_EXP_RTOL

    @njit
    def evaluate(x, erf_out, exp_out):
        for i in range(x.shape[0]):
            erf_out[i] = erf32(x[i])
            part, n = exp32_parts(x[i])
            exp_out[i] = part * np.float32(2.0) ** n

    x = np.linspace(-12.0, 12.0, 200_001, dtype=np.float32)  # past the erf clamp at |x| = 4
    erf_out, exp_out = np.empty_like(x), np.empty_like(x)
    evaluate(x, erf_out, exp_out)
    exact = x.astype(np.float64)
    assert np.abs(erf_out - erf(exact)).max() <= FAST_ERF_ATOL
    assert (np.abs(exp_out / np.exp(exact) - 1.0)).max() <= FAST_EXP_RTOL


def test_written_out_erf_coefficients_are_what_the_fit_returns():
    from mabert_hw.kernels.approx import ERF_P, ERF_Q, fit_erf

    from .tolerances import FAST_ERF_COEFFICIENT_RTOL

    p, q = fit_erf()
    np.testing.assert_allclose(ERF_P, p, rtol=FAST_ERF_COEFFICIENT_RTOL)
    np.testing.assert_allclose(ERF_Q, q, rtol=FAST_ERF_COEFFICIENT_RTOL)


def test_attention_of_head_arrays_that_no_linear_made_equals_reference():
    # q, k, v that are not the heads of three pending linears of one input take the unfused path
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal((2, 3, 5, 4), dtype=np.float32) for _ in range(3))  # (B, H, T, D)
    attention_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    outputs = []
    for name in ("fast", "reference"):
        bk = make_backend(name)
        scores = bk.matmul("scores", q, k, transpose_b=True)  # (B, H, T, T)
        scores = bk.mask_scores("mask", bk.scale("scale", scores, 0.5), bk.mask_bias(attention_mask, "additive"),
                                "additive")
        context = bk.matmul("context", bk.softmax("softmax", scores), v)  # (B, H, T, D)
        outputs.append(bk.finished(bk.merge_heads(context)))  # (B, T, C)
    assert_close("context", *outputs)


def test_openmp_start_settings_are_set_only_while_launching_and_never_over_the_users(monkeypatch):
    import os

    from mabert_hw.kernels import threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    with threads._launching_threads():
        assert (os.environ["OMP_WAIT_POLICY"], os.environ["GOMP_SPINCOUNT"]) == (threads.WAIT_POLICY, threads.SPIN_COUNT)
    assert "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ  # torch's OpenMP keeps its defaults
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's policy stands, with GNU OpenMP's spin count for it
    with threads._launching_threads():
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")  # the user's spin count stands
    with threads._launching_threads():
        assert (os.environ["OMP_WAIT_POLICY"], os.environ["GOMP_SPINCOUNT"]) == (threads.WAIT_POLICY, "500")
    assert os.environ["GOMP_SPINCOUNT"] == "500" and "OMP_WAIT_POLICY" not in os.environ


def test_masked_scores_get_exactly_zero_probability():
    """A masked key (score + finfo.min) must get probability 0, not a subnormal: subnormal products take
    microcode assists on Intel cores (MiniLM's padded attention ran ~10x slower with them)."""
    from mabert_hw.kernels.rows import softmax_rows

    rng = np.random.default_rng(4)
    scores = rng.normal(0, 3, (64, 40)).astype(np.float32)
    scores[:, 25:] += np.finfo(np.float32).min  # padded keys
    scores[0, :] = np.linspace(-120, 0, 40, dtype=np.float32)  # exp underflows below -87
    scores[0, 1] = np.float32(-87.0001)  # the largest flushed value: e^x = 1.65e-38 becomes 0
    probs = np.empty_like(scores)
    softmax_rows(scores, probs)
    assert np.all(probs[1:, 25:] == 0)  # row 0 is the unmasked ramp
    assert not np.any((probs != 0) & (np.abs(probs) < np.finfo(np.float32).tiny))  # no subnormal anywhere
    reference = np.exp(scores.astype(np.float64) - scores.max(axis=1, keepdims=True))
    reference /= reference.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, reference, rtol=1e-5, atol=1.7e-38)


@pytest.mark.parametrize("user_setting", [None, "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX"])
def test_kernels_ask_llvm_for_512_bit_vectors_on_avx512_hosts(user_setting):
    """In a fresh process (Numba reads its features once): importing the kernels adds -prefer-256-bit
    on an AVX-512 host, and leaves alone features the user set, or AVX the user turned off."""
    import json
    import os
    import subprocess
    import sys

    import llvmlite.binding as llvm

    host = llvm.get_host_cpu_features()
    env = dict(os.environ)
    for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX"):
        env.pop(name, None)
    if user_setting == "NUMBA_CPU_FEATURES":
        env["NUMBA_CPU_FEATURES"] = host.flatten()
    elif user_setting == "NUMBA_ENABLE_AVX":
        env["NUMBA_ENABLE_AVX"] = "0"
    code = "import json, mabert_hw.kernels; from numba.core import config; print(json.dumps(config.CPU_FEATURES))"
    features = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                         check=True).stdout)
    if user_setting == "NUMBA_CPU_FEATURES":
        assert features == host.flatten()
    elif user_setting == "NUMBA_ENABLE_AVX":
        assert features is None
    elif host.get("avx512f"):
        assert features == host.flatten() + ",-prefer-256-bit"
    else:
        assert features is None


# A fast backend's thread count holds during its own forwards only, for Numba and numpy's BLAS alike.

def numpy_blas_threads() -> list[int]:
    """Threads of the BLAS numpy calls, as threadpoolctl reads them from the library."""
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info()
            if info["user_api"] == "blas" and "numpy" in info["filepath"]]


def test_fast_backends_keep_their_own_thread_counts(monkeypatch):
    numba = pytest.importorskip("numba")
    pytest.importorskip("threadpoolctl")
    cores = numba.config.NUMBA_NUM_THREADS
    if cores < 2:
        pytest.skip("one core: every count is 1")
    import mabert_hw.backends.fast as fast

    seen = []  # (Numba threads, numpy's BLAS threads) inside each GEMM + activation kernel call
    kernel = fast.linear_bias_act

    def spying(*args):
        seen.append((numba.get_num_threads(), numpy_blas_threads()))
        return kernel(*args)

    monkeypatch.setattr(fast, "linear_bias_act", spying)
    spec = TINY_SPECS[0]
    weights, batch = random_weights(spec, seed=1), random_batch(spec, 2, 8, seed=0)
    outside = numpy_blas_threads()
    if not outside:
        pytest.skip("numpy's BLAS is not one threadpoolctl can see")

    one = make_backend("fast", threads=1)
    assert numpy_blas_threads() == outside  # building it changed nothing (it left numpy's BLAS on 1)
    every = make_backend("fast")
    for backend, wanted in ((one, 1), (every, cores), (one, 1)):
        seen.clear()
        forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)
        assert seen and set(n for n, _ in seen) == {wanted}  # the threads=1 backend used to run on 2
        assert all(blas == [wanted] * len(outside) for _, blas in seen)
        assert numpy_blas_threads() == outside  # restored after the forward

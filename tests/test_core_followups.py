"""Follow-ups of a review of the core: thread counts held per fast backend, forward's input checks,
hidden_act "gelu_python", FFF tree settings, and `infer` / `bench` refusing what they used to ignore or
refuse late. Each expected value comes from outside the code under test: HF transformers, threadpoolctl
and Numba's own thread counts, or the configuration the test wrote."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertModel
from transformers.activations import ACT2FN

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.bench import engines as bench_engines
from mabert_hw.bench import onnx_export
from mabert_hw.bench.engines import EngineUnavailable
from mabert_hw.errors import UserError
from mabert_hw.fff import n_nodes
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.spec import Variant
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .test_check_infer_inputs import TEXTS, run_cli, save_model
from .test_ma_model import random_official_state, save_official, tiny_ma
from .tolerances import REFERENCE_VS_TORCH_ATOL


def numpy_blas_threads() -> list[int]:
    """Threads of the BLAS numpy calls, as threadpoolctl reads them from the library."""
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info()
            if info["user_api"] == "blas" and "numpy" in info["filepath"]]


# --- 1. a fast backend's thread count holds during its own forwards only ---------------------------

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


# --- 2. infer --pooling on a classifier ------------------------------------------------------------

def test_infer_pooling_on_a_classifier_is_refused_in_one_line(tmp_path, capsys):
    from transformers import BertForSequenceClassification

    save_model(BertForSequenceClassification, tmp_path, num_labels=3)
    capsys.readouterr()  # transformers' "Writing model shards" bar
    code, out, err = run_cli(capsys, "infer", tmp_path, "--text", TEXTS[0], "--pooling", "cls")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--pooling" in err and "classifier" in err


# --- 3. and 4. bench on an MA-BERT checkpoint -----------------------------------------------------

@pytest.fixture
def ma_file(tmp_path):
    spec = tiny_ma(False)  # approximator input n = 16
    return save_official(tmp_path, spec, random_official_state(spec)), spec.variant.softmax_input


def test_bench_seq_len_above_the_approximator_input_is_refused_before_any_engine(ma_file, capsys, monkeypatch):
    path, n = ma_file
    prepared = []
    monkeypatch.setattr("mabert_hw.bench.timing.prepare", lambda *args: prepared.append(args))
    code, _, err = run_cli(capsys, "bench", path, "--seq-len", n + 4, "--batch", 2, "--repeat", 1,
                           "--engines", "reference")
    assert code == 2 and prepared == []
    assert err.strip().splitlines()[-1] == (f"mabert-hw: error: --seq-len {n + 4} exceeds the MA-BERT softmax "
                                            f"approximator's {n} inputs: use --seq-len {n} or less")


def test_bench_ort_on_an_ma_checkpoint_gives_the_torch_engines_reason(ma_file, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(onnx_export, "CACHE_DIR", tmp_path / "onnx")
    ck = checkpoint.load(ma_file[0])
    batch = random_batch(ck.spec, 2, 8, seed=0)
    reasons = []
    for engine in ("torch", "ort"):
        with pytest.raises(EngineUnavailable) as caught:
            bench_engines.prepare(engine, ck.spec, ck.weights, batch, 1)
        reasons.append(str(caught.value))
    assert reasons[0] == reasons[1] == f"HF BertModel cannot run this variant ({ck.spec.variant.describe()})"


# --- 5. forward's input shapes and dtypes -----------------------------------------------------------

def _wrong_inputs():
    spec = TINY_SPECS[0]
    batch = random_batch(spec, 3, 8, seed=0)
    ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids
    return spec, [
        ("attention_mask", ids, mask[:, :1], types),  # (B, 1): broadcast over tokens, masked nothing per token
        ("attention_mask", ids, mask[:1], types),  # (1, T): row 0's padding for every row
        ("attention_mask", ids, mask[:, :-1], types),
        ("token_type_ids", ids, mask, types[:1]),
        ("token_type_ids", ids, mask, types[:, :-1]),
        ("token_type_ids", ids, mask, types.astype(np.float32)),
        ("input_ids", ids.astype(np.float32), mask, types),
        ("input_ids", ids > 5, mask, types),  # booleans would index the table as a mask
        ("attention_mask", ids, mask * 2, types),  # not 0/1
    ]


@pytest.mark.parametrize("case", range(len(_wrong_inputs()[1])))
@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_forward_refuses_inputs_of_the_wrong_shape_or_type(case, backend):
    if backend == "fast":
        pytest.importorskip("numba")
    spec, cases = _wrong_inputs()
    name, ids, mask, types = cases[case]
    with pytest.raises(UserError, match=name) as caught:
        forward(spec, random_weights(spec), ids, make_backend(backend), mask, types)
    assert "\n" not in str(caught.value)


# --- 6. hidden_act gelu_python is HF's exact GELU; gelu_accurate is the tanh form -------------------

def test_gelu_python_is_read_as_the_exact_gelu_and_matches_hf(tmp_path):
    x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    torch.testing.assert_close(ACT2FN["gelu_python"](x), torch.nn.functional.gelu(x), rtol=0, atol=1e-15)
    model = save_model(BertModel, tmp_path, vocab=False, hidden_act="gelu_python").eval()
    ck = checkpoint.load(tmp_path)
    assert model.config.hidden_act == "gelu_python"
    ids = torch.from_numpy(random_batch(ck.spec, 2, 9, seed=4).input_ids)
    with torch.no_grad():
        theirs = BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()(ids).last_hidden_state
    ours = forward(ck.spec, ck.weights, ids.numpy(), make_backend("reference")).last_hidden_state
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=REFERENCE_VS_TORCH_ATOL)


def test_gelu_accurate_is_still_refused(tmp_path):
    x = torch.tensor([1.0], dtype=torch.float64)
    assert (ACT2FN["gelu_accurate"](x) - torch.nn.functional.gelu(x)).abs().item() > 1e-6  # another function
    save_model(BertModel, tmp_path, vocab=False, hidden_act="gelu_accurate")
    with pytest.raises(UserError, match="unsupported hidden_act 'gelu_accurate'"):
        checkpoint.load(tmp_path)


# --- 7. FFF tree settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes", [{"fff_depth": -2}, {"fff_depth": -1}, {"fff_trees": 0}, {"fff_depth": 1.5}])
def test_fff_settings_without_a_whole_tree_are_refused(changes):
    if "fff_depth" in changes:  # what the tree's node count would be: no whole, positive number
        nodes = n_nodes(changes["fff_depth"])
        assert nodes < 1 or nodes != int(nodes)
    with pytest.raises(UserError, match=next(iter(changes))):
        Variant(ffn="fff", **changes)
    with pytest.raises(UserError, match=next(iter(changes))):
        TINY_SPECS[0].with_variant(ffn="fff", **changes)

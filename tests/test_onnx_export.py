"""ONNX export for the ort engine, against HF torch: a sequence classifier exports its logits (so ort runs on
it), and the export cache is keyed by the whole config, not only name, shapes and weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mabert_hw.bench.timing import bench
from mabert_hw.spec import Variant
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .tolerances import REFERENCE_VS_TORCH_ATOL


@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    from mabert_hw.bench import onnx_export

    monkeypatch.setattr(onnx_export, "CACHE_DIR", tmp_path / "onnx")
    return onnx_export


def ort_outputs(path, batch) -> list:
    ort = pytest.importorskip("onnxruntime")
    from mabert_hw.bench.onnx_export import INPUT_NAMES

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: getattr(batch, name) for name in INPUT_NAMES})


def torch_outputs(spec, weights, batch) -> dict:
    from mabert_hw.torch_ref.hf import hf_forward, hf_model

    return hf_forward(hf_model(spec, weights), batch)


def test_onnx_export_of_a_classifier_gives_the_torch_logits(onnx_cache):
    pytest.importorskip("onnxruntime")
    from mabert_hw.inputs import random_batch

    spec = replace(TINY_SPECS[0], num_labels=3)
    weights = random_weights(spec, seed=1, std=0.2)
    batch = random_batch(spec, batch=2, seq_len=9, seed=2)
    (logits,) = ort_outputs(onnx_cache.export_onnx(spec, weights, *batch.shape), batch)
    expected = torch_outputs(spec, weights, batch)["logits"]
    np.testing.assert_allclose(logits, expected, atol=REFERENCE_VS_TORCH_ATOL, rtol=0)


def test_bench_times_ort_on_a_classifier(onnx_cache):
    pytest.importorskip("onnxruntime")
    spec = replace(TINY_SPECS[1], num_labels=2)
    document = bench(spec, random_weights(spec), batch=1, seq_len=6, engines=["ort"], repeat=1, threads=1, pause=0)
    assert "skipped" not in document["engines"]["ort"], document["engines"]["ort"]


def test_onnx_cache_tells_apart_configs_with_the_same_weights(onnx_cache):
    pytest.importorskip("onnxruntime")
    from mabert_hw.inputs import random_batch

    first = replace(TINY_SPECS[0], heads=2)
    second = replace(first, heads=4, variant=Variant(ffn_activation="relu"))  # same name, same weight shapes
    weights = random_weights(first, seed=1, std=0.2)
    batch = random_batch(first, batch=1, seq_len=8, seed=2)
    onnx_cache.export_onnx(first, weights, *batch.shape)
    path = onnx_cache.export_onnx(second, weights, *batch.shape)
    hidden = ort_outputs(path, batch)[0]
    expected = torch_outputs(second, weights, batch)["hidden_states"][-1]
    np.testing.assert_allclose(hidden, expected, atol=REFERENCE_VS_TORCH_ATOL, rtol=0)

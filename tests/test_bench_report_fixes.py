"""Review fixes in bench and report: ONNX export of classifiers and its cache key, table columns over
all rows, the engines study's "after" GEMM at its thread count, --threads above the cores, compare
--plots checked before the work."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mabert_hw.bench.timing import bench, machine_threads, table_rows
from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.report.tables import render
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


# --- 2: a sequence classifier exports its logits, so the ort engine runs on it


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


# --- 3: the ONNX cache key covers the config, not only name, shape and weights


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


# --- 4: columns are the union of every row's keys, whatever the first row holds

SKIPPED_FIRST = [{"variant": "ma", "status": "skipped: no trace"}, {"variant": "bert", "status": "ok", "cycles": 7}]


@pytest.mark.parametrize("fmt", ["table", "csv", "md"])
def test_a_skipped_first_row_keeps_every_column(fmt):
    lines = render(SKIPPED_FIRST, fmt).splitlines()
    assert re.findall(r"\w+", lines[0]) == ["variant", "status", "cycles"]
    assert "7" in lines[-1]


def test_bench_table_keeps_timing_columns_when_the_first_engine_is_skipped():
    timing = {"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0, "tokens_per_s": 8.0, "gflops_per_s": 0.5,
              "ratio_vs_torch": 1.0}
    rows = table_rows({"engines": {"ort": {"skipped": "needs onnxruntime"}, "torch": timing}})
    header = render(rows, "table").splitlines()[0].split()
    assert header == ["engine", "median_ms", "min_ms", "max_ms", "tokens_per_s", "gflops_per_s", "ratio_vs_torch",
                      "note"]


# --- 5: the engines study measures its "after" GEMM and BLAS record at the threads it names


def load_bench_engines():
    script = Path(__file__).resolve().parents[1] / "analysis" / "bench_engines.py"
    spec = importlib.util.spec_from_file_location("bench_engines", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_engines_study_after_gemm_runs_at_the_recorded_threads(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if machine_threads() < 2:
        pytest.skip("needs 2 cores to tell 1 BLAS thread from the run's count")
    study = load_bench_engines()

    def one_thread_profile(*args, threads=None, **kwargs):
        if threads == 1:  # as FastBackend(threads=1) does: every BLAS left on 1 thread
            threadpoolctl.threadpool_limits(limits=1, user_api="blas")
        return []

    def blas_threads_now():
        return float(min(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"))

    spec = replace(TINY_SPECS[0], max_positions=128)
    monkeypatch.setattr(study, "machine_threads", lambda: 2)
    monkeypatch.setattr(study, "first_call", dict)
    monkeypatch.setattr(study, "models", lambda: [(spec, random_weights(spec), [], ())])
    monkeypatch.setattr(study, "time_by_call", one_thread_profile)
    monkeypatch.setattr(study, "numpy_gemm_gflops", blas_threads_now)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # restores this process's BLAS after
        record = study.run(repeat=1, base_repeat=1, shapes=())
    assert record["gemm_gflops_after"] == 2.0
    assert record["gemm_gflops_1_thread"] == 1.0
    assert {b["threads"] for b in record["blas"]} == {2}


# --- 6: --threads above the cores is refused, so every engine runs at the count the report names


def test_bench_refuses_more_threads_than_cores():
    spec = TINY_SPECS[1]
    with pytest.raises(UserError, match="cores"):
        bench(spec, random_weights(spec), batch=1, seq_len=4, engines=["reference"], repeat=1,
              threads=machine_threads() + 1, pause=0)


def test_cli_bench_too_many_threads_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("transformers")
    from mabert_hw.torch_ref.hf import hf_config

    hf_config(TINY_SPECS[1]).save_pretrained(tmp_path)
    code = main(["bench", str(tmp_path / "config.json"), "--engines", "reference", "--batch", "1", "--seq-len", "4",
                 "--repeat", "1", "--pause", "0", "--threads", str(machine_threads() + 1)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mabert-hw: error:") and err.count("\n") == 1, err


# --- 7: compare --plots: the folder is checked before the work, write errors are one line


def test_compare_plots_on_a_file_fails_before_printing(tmp_path, capsys):
    file = tmp_path / "afile"
    file.write_text("")
    code = main(["compare", "bert-base-uncased", "--seq-len", "16", "--plots", str(file)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "is not a directory" in err and err.count("\n") == 1, err


def test_compare_plots_write_error_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from mabert_hw.report import plots

    def unwritable(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(plots, "stacked_cycles", unwritable)
    code = main(["compare", "bert-base-uncased", "--seq-len", "16", "--plots", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot write plots" in err and "Permission denied" in err and err.count("\n") == 1, err

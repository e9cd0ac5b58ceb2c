"""`mabert-hw bench`: engines prepared on one batch, interleaved timing, the JSON document, skips."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

pytest.importorskip("numba")
torch = pytest.importorskip("torch")

from mabert_hw import checkpoint  # noqa: E402
from mabert_hw.bench import engines as bench_engines  # noqa: E402
from mabert_hw.bench import engines as engines_module  # noqa: E402
from mabert_hw.bench import onnx_export  # noqa: E402
from mabert_hw.bench import timing  # noqa: E402
from mabert_hw.bench.engines import EngineUnavailable  # noqa: E402
from mabert_hw.bench.timing import bench, machine_threads, time_calls  # noqa: E402
from mabert_hw.cli import main  # noqa: E402
from mabert_hw.cost.counts import count_ops, trace  # noqa: E402
from mabert_hw.inputs import random_batch  # noqa: E402
from mabert_hw.torch_ref.hf import hf_config, hf_forward, hf_model  # noqa: E402
from mabert_hw.weights import random_weights  # noqa: E402

from .conftest import TINY_SPECS  # noqa: E402
from .helpers import run_cli  # noqa: E402
from .test_ma_model import random_official_state, save_official, tiny_ma  # noqa: E402
from .tolerances import REFERENCE_VS_TORCH_ATOL  # noqa: E402

ENGINE_KEYS = {"median_ms", "min_ms", "max_ms", "tokens_per_s", "gflops_per_s", "ratio_vs_torch"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """ONNX files in a temporary cache; thread settings the tests change are restored after."""
    from mabert_hw.kernels.threads import set_threads

    monkeypatch.setattr(onnx_export, "CACHE_DIR", tmp_path / "onnx")
    torch_threads = torch.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    set_threads(None)


def importable(*names: str) -> bool:
    try:
        for name in names:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


# The ort engine's one legitimate reason to be absent: onnxruntime, or onnx (what torch.onnx's TorchScript
# exporter writes the file with: "Module onnx is not installed!" without it), cannot be imported. Where both
# import, an export or session error is a failure, not a skip.
ORT_IMPORTABLE = importable("onnxruntime", "onnx")
needs_ort = pytest.mark.skipif(not ORT_IMPORTABLE, reason="onnxruntime or onnx is not importable")


@needs_ort
def test_onnx_export_matches_hf_torch_on_padded_inputs():
    import onnxruntime as ort

    spec = TINY_SPECS[0]
    weights = random_weights(spec, seed=1, std=0.2)
    batch = random_batch(spec, batch=3, seq_len=11, seed=2)
    assert batch.attention_mask.min() == 0
    path = onnx_export.export_onnx(spec, weights, *batch.shape)
    assert onnx_export.export_onnx(spec, weights, *batch.shape) == path  # cached, keyed by model and shape
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden, pooled = session.run(None, {name: getattr(batch, name) for name in onnx_export.INPUT_NAMES})
    theirs = hf_forward(hf_model(spec, weights), batch)
    np.testing.assert_allclose(hidden, theirs["hidden_states"][-1], atol=REFERENCE_VS_TORCH_ATOL, rtol=0)
    np.testing.assert_allclose(pooled, theirs["pooled"], atol=REFERENCE_VS_TORCH_ATOL, rtol=0)


def test_bench_document_has_every_engine_in_the_issue_schema():
    spec = TINY_SPECS[1]
    weights = random_weights(spec, seed=3)
    document = bench(spec, weights, batch=2, seq_len=8, engines=["fast", "reference", "torch", "ort"],
                     repeat=2, threads=1)
    assert {k: document[k] for k in ("batch", "seq_len", "threads", "model")} == {
        "batch": 2, "seq_len": 8, "threads": 1, "model": spec.name}
    assert list(document["engines"]) == ["fast", "reference", "torch", "ort"]
    counted = count_ops(trace(spec, 2, 8))  # the benched shape: batch 2, 8 tokens
    assert not counted.unknown
    forward_gflops = counted.total("flops") / 1e9
    for name, result in document["engines"].items():
        if name == "ort" and not ORT_IMPORTABLE:
            assert set(result) == {"skipped"}, result
            continue
        assert set(result) == ENGINE_KEYS, name
        assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
        assert result["tokens_per_s"] * result["median_ms"] / 1e3 == pytest.approx(2 * 8)
        # GFLOP/s x seconds = the forward's counted GFLOPs (cost.counts: 2 x MACs + elementwise primitives)
        assert result["gflops_per_s"] * result["median_ms"] / 1e3 == pytest.approx(forward_gflops, rel=1e-12)
    torch_result = document["engines"]["torch"]
    assert torch_result["ratio_vs_torch"] == 1.0
    fast = document["engines"]["fast"]
    assert fast["ratio_vs_torch"] == pytest.approx(fast["median_ms"] / torch_result["median_ms"])
    # numpy's OpenBLAS (what the fast engine's GEMMs call) is named with the kernel it runs
    assert any(b["library"] == "openblas" and b["architecture"] for b in document["blas"]), document["blas"]


def test_ort_without_onnx_says_it_needs_onnx(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError, as when not installed
    spec = TINY_SPECS[0]
    document = bench(spec, random_weights(spec), batch=1, seq_len=4, engines=["reference", "ort"], repeat=1)
    assert document["engines"]["ort"]["skipped"].startswith("needs onnx ("), document["engines"]["ort"]


def test_bench_without_numba_skips_the_fast_engine(monkeypatch):
    """Starting the kernel threads imported numba unguarded (a traceback), and a backend make_backend could not
    load stopped the whole benchmark with its UserError, where the fast engine should be reported skipped."""
    import sys

    import mabert_hw.backends as backends

    with monkeypatch.context() as patch:  # undone before the fixture's teardown resets the threads (with numba)
        patch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError, as when not installed
        timing._start_kernel_threads(1)

    def without_numba(name, **options):
        if name == "fast":
            raise backends.MissingPackage("the fast backend needs numba, which is not installed")
        return make_backend(name, **options)

    make_backend = backends.make_backend
    monkeypatch.setattr(backends, "make_backend", without_numba)
    spec = TINY_SPECS[0]
    document = bench(spec, random_weights(spec), batch=1, seq_len=4, engines=["reference", "fast"], repeat=1,
                     threads=1)
    assert document["engines"]["reference"]["median_ms"] > 0
    assert document["engines"]["fast"] == {"skipped": "the fast backend needs numba, which is not installed"}


def test_a_package_that_refuses_to_load_is_named_with_its_reason(monkeypatch, capsys):
    """Numba's NumPy-version check raises ImportError without a module name: the message said "needs None"."""
    import mabert_hw.backends as backends

    def refusing(name):
        raise ImportError("Numba needs NumPy 2.2 or less. Got NumPy 2.4.")

    monkeypatch.setattr(backends, "import_module", refusing)
    with pytest.raises(backends.MissingPackage, match="the fast backend cannot load a package it needs: Numba needs"):
        backends.make_backend("fast")


def test_an_import_error_of_this_package_is_not_a_missing_package(monkeypatch):
    """A broken import inside mabert_hw was reported as "needs mabert_hw.kernels.fff, which is not installed",
    and bench skipped the engine: it is raised as the bug it is."""
    import mabert_hw.backends as backends

    def broken(name):
        raise ModuleNotFoundError("No module named 'mabert_hw.kernels.fffx'", name="mabert_hw.kernels.fffx")

    monkeypatch.setattr(backends, "import_module", broken)
    with pytest.raises(ModuleNotFoundError):
        backends.make_backend("fast")


def test_unavailable_engine_is_skipped_with_its_reason(monkeypatch):
    def unavailable(*args):
        raise EngineUnavailable("no accelerator here")

    real_prepare = engines_module.prepare
    monkeypatch.setattr("mabert_hw.bench.timing.prepare",
                        lambda engine, *args: unavailable() if engine == "ort" else real_prepare(engine, *args))
    spec = TINY_SPECS[0]
    document = bench(spec, random_weights(spec), batch=1, seq_len=4, engines=["reference", "ort"], repeat=2)
    assert document["engines"]["ort"] == {"skipped": "no accelerator here"}
    assert document["engines"]["reference"]["ratio_vs_torch"] is None  # torch not run: no ratio


def test_engines_run_interleaved_after_warmup():
    calls = []
    samples = time_calls({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rounds in rotated order
    assert {k: len(v) for k, v in samples.wall.items()} == {"a": 3, "b": 3}
    assert {k: len(v) for k, v in samples.cpu.items()} == {"a": 3, "b": 3}


def test_unrotated_rounds_keep_the_given_order():
    calls = []
    time_calls({"dense": lambda: calls.append("dense"), "walk": lambda: calls.append("walk")}, repeat=3, warmup=0,
               rotate=False)
    assert calls == ["dense", "walk"] * 3  # bench-ffn: the dense FFs always run before the walk


def test_cpu_seconds_count_work_and_not_sleep():
    import time

    def busy():  # 0.02 s of this thread's CPU: at least 0.02 s of wall time, whatever other threads of the
        end = time.thread_time() + 0.02  # process burn (process_time counts them too, and ended the loop early)
        while time.thread_time() < end:
            pass

    samples = time_calls({"sleep": lambda: time.sleep(0.02), "busy": busy}, repeat=2, warmup=0)
    assert all(s >= 0.02 for s in samples.wall["sleep"] + samples.wall["busy"])
    assert max(samples.cpu["sleep"]) < 0.01 <= min(samples.cpu["busy"])


def test_settle_calls_run_untimed_before_each_timed_call():
    calls = []
    samples = time_calls({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=2, warmup=0,
                         settle=1)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a"]  # each turn: one untimed, then one timed call
    assert {k: len(v) for k, v in samples.wall.items()} == {"a": 2, "b": 2}


def test_cli_bench_json_on_a_weightless_config(tmp_path, capsys):
    hf_config(TINY_SPECS[2]).save_pretrained(tmp_path)  # config.json only: random weights
    code = main(["bench", str(tmp_path / "config.json"), "--batch", "2", "--seq-len", "6", "--repeat", "2",
                 "--engines", "fast,reference", "--threads", "1", "--format", "json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"engines", "batch", "seq_len", "threads", "model", "blas"}
    assert set(document["engines"]) == {"fast", "reference"}
    assert all(set(r) == ENGINE_KEYS for r in document["engines"].values())


@pytest.mark.parametrize("engines, message", [
    ("fast,tpu", "unknown engine 'tpu'; engines: fast, reference, torch, ort"),
    (" , ", "no engine named in ' , '; engines: fast, reference, torch, ort"),
    ("fast, torch,fast", "'fast' named twice"),  # it was dropped silently; compare --variants refuses one
])
def test_cli_bench_unknown_engine_gets_the_usage(capsys, engines, message):
    """Checked as the flag is parsed, as --engine's choices are: the usage line, then the error (it was a
    one-line error without the usage, after the flags were parsed)."""
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "minilm-l6", "--engines", engines])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: mabert-hw bench [-h]")
    assert err.rstrip().endswith(f"mabert-hw bench: error: argument --engines: {message}")


def test_cli_bench_engines_parse_to_a_list():
    from mabert_hw.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["bench", "minilm-l6"]).engines == list(bench_engines.ENGINES)  # the string default, parsed
    assert parse(["bench", "minilm-l6", "--engines", "fast, torch"]).engines == ["fast", "torch"]


# an MA-BERT checkpoint: a length above the approximator's n is refused before any engine is prepared, and
# ort gives the torch engine's reason

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


# threads: --threads above the cores is refused (every engine runs at the count the report names); the
# default follows NUMBA_NUM_THREADS

def test_cli_bench_too_many_threads_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("transformers")
    from mabert_hw.torch_ref.hf import hf_config

    hf_config(TINY_SPECS[1]).save_pretrained(tmp_path)
    code = main(["bench", str(tmp_path / "config.json"), "--engines", "reference", "--batch", "1", "--seq-len", "4",
                 "--repeat", "1", "--pause", "0", "--threads", str(machine_threads() + 1)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mabert-hw: error:") and err.count("\n") == 1, err


def test_bench_default_threads_follow_numba_num_threads(monkeypatch):
    # the default used to be one per core, which the fast engine then refused when NUMBA_NUM_THREADS was less
    import numba

    monkeypatch.setattr(timing, "machine_threads", lambda: 4)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert timing.default_threads(["fast", "torch"]) == 1
    assert timing.default_threads(["torch"]) == 4


# bench-ffn's header: the machine, threads and BLAS as `key value` text (the json output keeps the objects)

FFN_FACTS = {"problem": {"hidden": 16, "depth": 3, "trees": 1, "tokens": 64, "dense_width": 32}, "rounds": 2,
             "machine": {"cpu": "Some CPU", "cores": 2, "l1_bytes": 49152, "l2_bytes": None},
             "threads": {"numba_threads": 2, "blas_threads": 2, "kernel_blas_pinned": True},
             "blas": [{"library": "openblas", "architecture": "SkylakeX", "threads": 2, "file": "a.so"},
                      {"library": "openblas", "architecture": "Haswell", "threads": 1, "file": "b.so"}]}


def test_bench_ffn_header_reads_as_key_value_text():
    """It printed the records as Python reprs: {'cpu': ...}, [{'library': 'openblas', ...}]."""
    from mabert_hw.cli.bench_ffn import header

    assert header(FFN_FACTS) == [
        "FFN layer: C=16 d=3 K=1 M=64 tokens vs dense F=32; 2 interleaved rounds",
        "machine: cpu Some CPU, cores 2, l1_bytes 49152, l2_bytes unknown",
        "threads: numba_threads 2, blas_threads 2, kernel_blas_pinned True",
        "BLAS: library openblas, architecture SkylakeX, threads 2, file a.so; "
        "library openblas, architecture Haswell, threads 1, file b.so"]
    assert header({**FFN_FACTS, "blas": []})[-1] == "BLAS: unknown"  # no threadpoolctl: nothing to name


@pytest.mark.parametrize("fmt", ["table", "md"])
def test_bench_ffn_prints_no_python_reprs(capsys, fmt):
    pytest.importorskip("numba")
    assert main(["bench-ffn", "--hidden", "16", "--depth", "2", "--tokens", "32", "--dense-width", "32",
                 "--rounds", "1", "--no-torch", "--format", fmt]) == 0
    out = capsys.readouterr().out
    above_table = out.split("impl")[0]
    assert "{" not in above_table and "[" not in above_table, above_table
    assert above_table.startswith("FFN layer: C=16 d=2 K=1 M=32 tokens vs dense F=32; 1 interleaved rounds")
    for line in ("machine: cpu ", "threads: numba_threads ", "BLAS: "):
        assert f"\n{line}" in above_table

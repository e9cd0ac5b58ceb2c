"""Pieces of `mabert-hw bench` and its studies that need neither torch nor numba (test_bench.py skips
without them): the thread-count guard, analysis/bench_engines.py's thread record and first-call snippet,
and bench.profile's per-call timing of a variant's ops."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mabert_hw.bench.timing import bench, machine_threads
from mabert_hw.errors import UserError
from mabert_hw.inputs import random_batch
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .helpers import analysis_script


def test_bench_refuses_more_threads_than_cores():
    spec = TINY_SPECS[1]
    with pytest.raises(UserError, match="cores"):
        bench(spec, random_weights(spec), batch=1, seq_len=4, engines=["reference"], repeat=1,
              threads=machine_threads() + 1, pause=0)


# analysis/bench_engines.py measures its "after" GEMM and BLAS record at the threads it names

def load_bench_engines():
    return analysis_script("bench_engines")


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


def test_time_by_call_times_the_variants_ops_not_as_overhead():
    from mabert_hw.bench.profile import time_by_call

    spec = TINY_SPECS[0].with_variant(ffn="fff", fff_depth=2, fff_trees=1, retention=(5, 3))  # 2 layers, T = 9
    rows = time_by_call("reference", spec, random_weights(spec, seed=0), random_batch(spec, 2, 9, seed=1), repeat=1)
    calls = {row["call"] for row in rows}
    assert {"fff", "significance", "top_tokens", "select_tokens"} <= calls


def test_bench_engines_first_call_snippet_is_valid_python():
    """analysis/bench_engines.py runs FIRST_CALL in a fresh interpreter; a bad indent there stops the study."""
    compile(load_bench_engines().FIRST_CALL, "FIRST_CALL", "exec")


BLOCK_NUMBA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "numba":
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from mabert_hw.backends import make_backend
from mabert_hw.errors import UserError
try:
    make_backend("fast")
except UserError as error:
    print(error)
"""


def test_the_fast_backend_without_numba_says_what_to_install():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", BLOCK_NUMBA], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the fast backend needs numba, which is not installed (pip install 'mabert-hw[fast]')"

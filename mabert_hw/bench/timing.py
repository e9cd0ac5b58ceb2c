"""Interleaved timing: every engine runs on the same batch, in turns, after a warm-up call each.

Round r runs the engines in an order rotated by r, so no engine always follows the same neighbour
(caches, turbo state and other processes' load then fall on all of them alike). Each turn starts
with a pause (THREADS_IDLE_S of sleep) so that the previous engine's spinning workers are asleep (on
MiniLM B=1, 2 threads, quiet machine: the fast engine took 16.3 ms alone, 22.7 ms interleaved with
onnxruntime and no pause; with the pause and the fast kernels' short spin before sleeping, see
kernels.threads, 15.9 ms interleaved), then the engine makes `settle` untimed calls: the previous engine's thread pool may still be spinning
(onnxruntime's and OpenMP's workers spin after a run before they sleep) and would take the cores
from the first call after it, and the engine's own pool may have gone to sleep during the others'
turns; the timed call then runs as in a process that uses one engine (measured on MiniLM B=1 before
this: the fast engine 66 ms right after onnxruntime, 56 ms after a pause). Achieved GFLOP/s
divides the counted FLOPs of the forward (cost.counts: GEMM MACs x 2 plus every elementwise
primitive) by the median time; ratio_vs_torch is the engine's median over torch eager's.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from ..cost.summary import profile_model
from ..errors import UserError
from ..inputs import random_batch
from ..spec import ModelSpec
from ..weights import Weights
from .engines import EngineUnavailable, prepare

BASELINE = "torch"
TIMING_KEYS = ("median_ms", "min_ms", "max_ms", "tokens_per_s", "gflops_per_s", "ratio_vs_torch")
THREADS_IDLE_S = 0.15  # OpenBLAS blas_server.c: idle workers spin 2^THREAD_TIMEOUT = 2^28 TSC ticks before
# they sleep (0.10-0.11 s at the 2.45-2.6 GHz TSCs of the machines used here)


def machine_threads() -> int:
    return len(os.sched_getaffinity(0))


def default_threads(engines: list[str]) -> int:
    """One thread per core, or fewer where NUMBA_NUM_THREADS caps the fast engine: every engine runs at
    the one count the report names."""
    cores = machine_threads()
    if "fast" not in engines:
        return cores
    try:
        import numba
    except ImportError:  # the fast engine is reported as skipped
        return cores
    return min(cores, numba.config.NUMBA_NUM_THREADS)


def check_threads(threads: int) -> None:
    """Refuse more threads than this process may run on: the fast engine would be capped at the cores
    while torch, onnxruntime and BLAS took the number as given, and the report names only one count."""
    cores = machine_threads()
    if threads > cores:
        raise UserError(f"{threads} threads asked for, but this process may run on {cores} cores "
                        "(every engine must run at the thread count the report names)")


def blas_kernels() -> list[dict]:
    """The BLAS libraries loaded in this process and the kernel each runs (threadpoolctl's
    `architecture`, e.g. Haswell = AVX2, SkylakeX = AVX-512), with the environment variables that
    force an OpenBLAS kernel: OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU halves the fast engine's
    GEMM rate, so every timing record says which kernel ran."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    forced = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return [{"library": info.get("internal_api"), "architecture": info.get("architecture"),
             "threads": info.get("num_threads"), "file": os.path.basename(info.get("filepath", "")), **forced}
            for info in threadpool_info() if info.get("user_api") == "blas"]


@dataclass
class Samples:
    """Seconds per timed call, by name: wall clock, and this process's CPU time (all threads summed: on a
    machine shared with other processes it leaves out the time spent waiting for a core, wall does not)."""
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def time_calls(calls: dict[str, Callable[[], object]], repeat: int, warmup: int = 1, settle: int = 0,
               progress: bool = False, pause: float = 0.0, rotate: bool = True, desc: str = "bench") -> Samples:
    """`repeat` interleaved rounds after `warmup` calls each; in a round each call's turn starts with
    `pause` seconds of sleep (the previous call's spinning threads go to sleep), then `settle` untimed
    calls, then the timed one. rotate: round r starts at the r-th call; without it every round keeps
    the given order (bench-ffn: the dense FFs evict the FFF tree before the walk, as a model's other
    layers would)."""
    from tqdm import tqdm

    names = list(calls)
    bar = tqdm(total=len(names) * (warmup + repeat * (1 + settle)), desc=desc, unit="call",
               disable=not progress, leave=False)
    for name in names:
        for _ in range(warmup):
            calls[name]()
            bar.update()
    samples = Samples({name: [] for name in names}, {name: [] for name in names})
    for round_ in range(repeat):
        shift = round_ % len(names) if names and rotate else 0
        for name in names[shift:] + names[:shift]:
            time.sleep(pause)
            for _ in range(settle):
                calls[name]()
                bar.update()
            start, start_cpu = time.perf_counter(), time.process_time()
            calls[name]()
            samples.wall[name].append(time.perf_counter() - start)
            samples.cpu[name].append(time.process_time() - start_cpu)
            bar.update()
    bar.close()
    return samples


def summarise(samples: dict[str, list[float]], flops: int, tokens: int) -> dict[str, dict]:
    baseline = statistics.median(samples[BASELINE]) if BASELINE in samples else None
    out = {}
    for name, seconds in samples.items():
        median = statistics.median(seconds)
        out[name] = {
            "median_ms": 1e3 * median,
            "min_ms": 1e3 * min(seconds),
            "max_ms": 1e3 * max(seconds),
            "tokens_per_s": tokens / median,
            "gflops_per_s": flops / median / 1e9,
            "ratio_vs_torch": median / baseline if baseline else None,
        }
    return out


def bench(spec: ModelSpec, weights: Weights, batch: int, seq_len: int, engines: list[str], repeat: int,
          threads: int | None = None, warmup: int = 1, settle: int = 1, progress: bool = False,
          pause: float = THREADS_IDLE_S) -> dict:
    """The `mabert-hw bench` JSON document: per engine timings, or {"skipped": reason}."""
    threads = threads or default_threads(engines)
    check_threads(threads)
    inputs = random_batch(spec, batch, seq_len, seed=0)
    if "fast" in engines:  # start Numba's OpenMP runtime first, whatever the engine order
        _start_kernel_threads(threads)
    calls, skipped = {}, {}
    for engine in engines:
        try:
            calls[engine] = prepare(engine, spec, weights, inputs, threads)
        except EngineUnavailable as reason:
            skipped[engine] = {"skipped": str(reason)}
    samples = time_calls(calls, repeat, warmup, settle, progress, pause).wall
    timings = summarise(samples, profile_model(spec, batch, seq_len).total("flops"), batch * seq_len)
    return {
        "engines": {engine: timings.get(engine) or skipped[engine] for engine in engines},
        "batch": batch,
        "seq_len": seq_len,
        "threads": threads,
        "model": spec.name,
        "blas": blas_kernels(),
    }


def _start_kernel_threads(threads: int) -> None:
    """GNU OpenMP is one library per process (torch's copy and the system's share a soname): the first
    engine to load it fixes its wait policy for both. kernels.threads starts it with OMP_WAIT_POLICY
    PASSIVE (idle threads sleep; spinning ones starve a loaded machine), so starting it here, before
    torch loads, gives torch eager and the fast engine the same policy in every engine order. Numba
    caps its threads at NUMBA_NUM_THREADS; a count above that is refused, as in check_threads."""
    try:
        import_module("numba")  # set_threads imports it when called: its absence is found here
        from ..kernels.threads import set_threads
    except ImportError:  # no numba: the fast engine is reported as skipped
        return
    held = set_threads(threads)["numba_threads"]
    if held != threads:
        raise UserError(f"the fast engine can run on {held} threads here (NUMBA_NUM_THREADS), not {threads}")


def table_rows(document: dict) -> list[dict]:
    """One row per engine with every column; a skipped engine's timings are None and its note says why."""
    return [{"engine": engine, **{k: result.get(k) for k in TIMING_KEYS},
             "note": "skipped: " + result["skipped"] if "skipped" in result else ""}
            for engine, result in document["engines"].items()]

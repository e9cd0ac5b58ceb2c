"""Where the FFF walk's time goes: its loops timed with the memory traffic taken away, against the
78x budget (the dense FF's time / 78, the paper's CPU claim).

Probes (Numba, the walk kernel's own inlined pieces: kernels.fff._dot, _child, _accumulate and
cache_hints.stream_rows; GROUP tokens in lockstep, tokens split over the threads as the kernel does):
- dots-independent: `levels` dots per token whose rows do not depend on the previous logit: what
  the core does when nothing waits (x and rows in L1);
- dots-walk-<set>: the walk's dots as the kernel runs them (each level's row picked by the previous
  logit), x held in L1 (the group's own GROUP rows) and rows drawn from a set of L1 / L2 / the whole
  tree size. The token's index enters the row choice so that tokens do not share paths;
- sums-<set>: each token's output as the kernel builds it (_accumulate: `levels` w_out rows, four
  per pass, into an L1 row), rows drawn at random from a set of L1 / L2 / whole-tree size;
- l2-read: the bytes of the rows that cannot stay in L1 (both rows of every visit below the top
  L1_LEVELS levels), read as plain sequential float32 sums from a half-L2 buffer per thread: the
  fastest way the core can take those bytes from L2, with no walk, no dependence and no DRAM;
- stream: x read once and y written once (stream_rows, the kernel's non-temporal stores): the DRAM
  traffic any walk of these tokens pays at the least;
- walk: the kernel itself (kernels.fff.fff_apply, weights warm: back-to-back calls);
- dense: the faster of bench-ffn's two dense FFs (bench/ffn.py DENSE_FFS), which sets the budget.
Rounds are interleaved (every probe once per round), medians reported, per thread count.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python analysis/fff_floor.py    # -> reports/fff/floor.*
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from mabert_hw.atomic import write_text_whole
from mabert_hw.bench.timing import THREADS_IDLE_S, blas_kernels, machine_threads, time_calls
from mabert_hw.cli.bench_ffn import MAX_DEPTH, PAPER_CPU_SPEEDUP
from mabert_hw.cli.common import (interruptible, non_negative_int, positive_int, run_script, script_description,
                                  script_output_dir)
from mabert_hw.fff import aligned_empty, n_nodes, walk_layout
from mabert_hw.bench.ffn import DENSE_FFS, Problem, implementations, random_fff
from mabert_hw.kernels.cache_hints import LINE_FLOATS, line_aligned_row, stream_rows
from mabert_hw.kernels.fff import FASTMATH, GROUP, L2_BYTES, ZERO, _accumulate, _child, _dot, fff_apply
from mabert_hw.kernels.threads import set_threads
from mabert_hw.machine import describe, memory_bytes
from mabert_hw.report.tables import csv_table, figure

OUT = Path(__file__).resolve().parents[1] / "reports" / "fff"
L1_ROWS = 7  # 7 rows of 3 KiB (21 KiB) beside the group's 4 x rows (12 KiB) in the 48 KiB L1
L1_LEVELS = 2  # levels whose rows (3 nodes x 6 KiB) fit in L1 beside the group's x and y rows
HUGE_PAGE = 2 * 1024 * 1024
TOKEN_STRIDE = 7919  # a prime: token t's rows are shifted by t * 7919 in the set, so tokens do not share
# paths (with x held to the group's own rows, tokens would otherwise repeat the same few paths)
TREE_COPIES = 5  # the tree's (N, C) float32 weights held at once while bench.ffn.implementations builds the dense
# forms' data: w_in, w_out, walk_layout's rows_in and rows_out, and the gather form's w_out rows


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def dots_independent(x, rows, bias, levels, sink):
    """sink[t] <- sum of `levels` dots of x[t % GROUP] with rows chosen without their logits."""
    M = sink.shape[0]
    for block in prange((M + GROUP - 1) // GROUP):
        for level in range(levels):
            for t in range(block * GROUP, min(block * GROUP + GROUP, M)):
                n = (t + level) % rows.shape[0]
                sink[t] += _dot(x[t % GROUP], rows[n]) + bias[n]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def dots_walk(x, rows, bias, levels, row_set, nodes):
    """The walk's dependent dots: nodes[t] <- token t's node after `levels` levels, each level's row
    rows[(node + t * TOKEN_STRIDE) % row_set] (x[t % GROUP], in L1)."""
    M = nodes.shape[0]
    for block in prange((M + GROUP - 1) // GROUP):
        first, last = block * GROUP, min(block * GROUP + GROUP, M)
        for t in range(first, last):
            nodes[t] = 0
        for level in range(levels):
            for t in range(first, last):
                n = (nodes[t] + t * TOKEN_STRIDE) % row_set
                nodes[t] = _child(nodes[t], _dot(x[t % GROUP], rows[n]) + bias[n])


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def sums(rows_out, paths, acts, tasks, sink):
    """Each token's sum of its rows_out[paths[t]] weighted by acts[t], into an L1 row (one per task:
    `tasks` contiguous token ranges, one per thread)."""
    M = paths.shape[0]
    per_task = (M + tasks - 1) // tasks
    for task in prange(tasks):
        y = line_aligned_row(rows_out.shape[1])
        for t in range(task * per_task, min(task * per_task + per_task, M)):
            _accumulate(rows_out, paths[t], acts[t], y, True)
            sink[t] = y[0]


@njit(inline="always", fastmath=FASTMATH)
def _sum(values):
    total = ZERO
    for c in range(values.shape[0]):
        total += values[c]
    return total


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def l2_read(pages, size, floats_per_token, sink):
    """Per token, floats_per_token floats read from its thread's buffer (pages[task, :size]) in a
    rolling sequential sweep; sink[t] <- their sum."""
    M, tasks = sink.shape[0], pages.shape[0]
    per_task = (M + tasks - 1) // tasks
    for task in prange(tasks):
        buffer, position = pages[task, :size], 0
        for t in range(task * per_task, min(task * per_task + per_task, M)):
            total, remaining = ZERO, floats_per_token
            while remaining > 0:
                end = min(position + remaining, size)
                total += _sum(buffer[position:end])
                remaining -= end - position
                position = end % size
            sink[t] = total


def huge_pages(count: int) -> np.ndarray:
    """(count, 2 MiB / 4) float32, C-contiguous, each row one 2 MiB-aligned page. NumPy asks the
    kernel for transparent huge pages on large arrays; a buffer inside one huge page is physically
    contiguous, so half an L2 of it fills L2 evenly (with 4 KiB pages the physical pages land on L2
    sets at random, and runs of this probe moved 2x with the allocation)."""
    buffer = np.empty((count + 1) * HUGE_PAGE, np.uint8)
    start = -buffer.ctypes.data % HUGE_PAGE
    return buffer[start:start + count * HUGE_PAGE].view(np.float32).reshape(count, HUGE_PAGE // 4)


def row_sets(row_bytes: int, nodes: int) -> dict[str, int]:
    """Row-set sizes (rows) that live in L1, in half of L2 (the kernel's subtree share), the whole tree;
    none larger than the tree (the probes index rows[0:size])."""
    return {"L1": min(L1_ROWS, nodes), "L2": min(L2_BYTES // 2 // row_bytes, nodes), "tree": nodes}


def probes(problem: Problem, seed: int) -> dict[str, callable]:
    rng = np.random.default_rng(seed)
    x, w_in, b_in, w_out = random_fff(problem, rng)
    layout = walk_layout(w_in, b_in, w_out, problem.depth, problem.trees)
    rows_in, rows_out, bias = layout.rows_in[0], layout.rows_out[0], layout.bias[0]  # tree 0: (N, C)
    M, levels = problem.tokens, problem.depth + 1
    x_stream = aligned_empty(x.shape)
    x_stream[:] = x
    out = aligned_empty((M, layout.out_width))
    sink = np.zeros(M, np.float32)
    nodes = np.zeros(M, np.int64)
    acts = rng.normal(size=(M, levels)).astype(np.float32)
    sets = row_sets(rows_in.shape[1] * rows_in.itemsize, rows_in.shape[0])
    paths = {name: rng.integers(0, size, (M, levels)) for name, size in sets.items()}
    threads = numba.get_num_threads()
    found = {"dots-independent": lambda: dots_independent(x, rows_in[:L1_ROWS], bias, levels, sink)}
    found.update({f"dots-walk-{name}": (lambda size=size: dots_walk(x, rows_in, bias, levels, size, nodes))
                  for name, size in sets.items()})
    found.update({f"sums-{name}": (lambda p=p: sums(rows_out, p, acts, threads, sink)) for name, p in paths.items()})
    pages = huge_pages(threads)  # one per thread, of which half of L2 is read
    pages[:] = 1.0
    below_l1 = (levels - L1_LEVELS) * (rows_in.shape[1] + rows_out.shape[1])  # floats per token
    found["l2-read"] = lambda: l2_read(pages, L2_BYTES // 2 // 4, below_l1, sink)
    found["stream"] = lambda: stream_rows(x_stream, out)
    found["walk"] = lambda: fff_apply(x, layout, out=out)
    return found


def measure(problem: Problem, threads: int, rounds: int, seed: int) -> list[dict]:
    threads = set_threads(threads)["numba_threads"]  # what runs: set_threads caps it at the cores Numba sees
    dense = {name: call for name, call in implementations(problem, seed, with_torch=False).items()
             if name in DENSE_FFS}
    calls = probes(problem, seed) | dense
    wall = time_calls(calls, rounds, pause=THREADS_IDLE_S, rotate=False, progress=True,
                      desc=f"{threads} thread(s)").wall  # a warm-up call first: compile, first touch
    median = {name: float(np.median(s)) for name, s in wall.items()}
    budget = min(median[name] for name in DENSE_FFS) / PAPER_CPU_SPEEDUP
    rows = [{"threads": threads, "piece": name, "median_ms": 1e3 * s,
             "ns_per_token_per_core": 1e9 * s * threads / problem.tokens, "share_of_78x_budget": s / budget}
            for name, s in median.items()]
    for rows_at in ("L1", "L2"):  # the walk's own loops with every row from one level of cache
        s = median[f"dots-walk-{rows_at}"] + median[f"sums-{rows_at}"]
        rows.append({"threads": threads, "piece": f"floor: dots + sums, rows in {rows_at}", "median_ms": 1e3 * s,
                     "ns_per_token_per_core": 1e9 * s * threads / problem.tokens, "share_of_78x_budget": s / budget})
    rows.append({"threads": threads, "piece": "78x budget", "median_ms": 1e3 * budget,
                 "ns_per_token_per_core": 1e9 * budget * threads / problem.tokens, "share_of_78x_budget": 1.0})
    return rows


def thread_counts(text: str) -> list[int]:
    """--threads: distinct counts >= 1 (0 would mean "one per core" to set_threads; a repeated count would
    give floor.csv two rows of each piece at that count, with different values)."""
    counts = [positive_int(t) for t in text.split(",")]
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"repeated thread count in {text!r}")
    return counts


def check_sizes(parser: argparse.ArgumentParser, args) -> None:
    """Flags that cannot run, refused before the work: a tree deeper than bench-ffn takes, or one whose
    weights alone exceed the machine's memory (an allocation traceback, or the OOM killer, once built)."""
    if args.hidden % LINE_FLOATS:
        parser.error(f"--hidden must be a multiple of {LINE_FLOATS}: the stream probe writes whole cache lines")
    if not 0 <= args.depth <= MAX_DEPTH:
        parser.error(f"--depth must be 0..{MAX_DEPTH}, got {args.depth}")
    need, have = 4 * TREE_COPIES * n_nodes(args.depth) * args.hidden, memory_bytes()
    if need > have:
        parser.error(f"--depth {args.depth} with --hidden {args.hidden}: the tree's weights alone take "
                     f"{need / 2**30:.3g} GiB, more than this machine's {have / 2**30:.3g} GiB of memory")
    if max(args.threads) > machine_threads():  # set_threads would run fewer than the record names
        parser.error(f"argument --threads: {max(args.threads)} threads, but this process may run on "
                     f"{machine_threads()} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=script_description(__doc__))
    parser.add_argument("--tokens", type=positive_int, default=16384)
    parser.add_argument("--hidden", type=positive_int, default=768)
    parser.add_argument("--depth", type=non_negative_int, default=11, help=f"tree depth, at most {MAX_DEPTH}")
    parser.add_argument("--dense-width", type=positive_int, default=3072)
    parser.add_argument("--threads", type=thread_counts, default="1,2",
                        help="thread counts, comma-separated (default 1,2; each at most the cores this process may run on)")
    parser.add_argument("--rounds", type=positive_int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    return run_script(parser, lambda args: run(args, parser, sys.argv[1:] if argv is None else argv), argv)


def run(args, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    check_sizes(parser, args)
    script_output_dir(parser, args.out)
    problem = Problem(args.hidden, args.depth, 1, args.tokens, args.dense_width)
    rows: list[dict] = []
    stopped = interruptible(parser.prog, lambda: rows.extend(row for threads in args.threads for row in
                                                             measure(problem, threads, args.rounds, args.seed)),
                            f"{args.out / 'floor.csv'} and floor.json are as they were")  # written only at the end
    if stopped:
        return stopped
    significant = [{k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    write_text_whole(args.out / "floor.csv", csv_table(significant))  # 4 figures: a 78x budget is well under 1 ms
    meta = {"command": "python analysis/fff_floor.py " + " ".join(argv),
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": [round(v, 2) for v in os.getloadavg()],
            "problem": vars(args) | {"out": str(args.out)}, "machine": describe(), "blas": blas_kernels(), "rows": rows}
    write_text_whole(args.out / "floor.json", json.dumps(meta, indent=1))
    for row in rows:
        print(f"{row['threads']} {row['piece']:36s} {figure(row['median_ms']):>8} ms {row['ns_per_token_per_core']:7.0f} "
              f"ns/token/core {row['share_of_78x_budget']:6.2f} x budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

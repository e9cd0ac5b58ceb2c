"""One FFN layer timed several ways in one interleaved run: the FFF Numba walk against a dense FF.

Implementations (all float32, all on the same random x (M, C)):
- dense-numpy:       h = x W_1^T (BLAS GEMM); h = GELU(h + b_1) (parallel Numba row kernel); y = h W_2^T + b_2
- dense-fast:        the fast engine's FFN: kernels.linear with the bias-GELU and bias epilogues (one
                     single-threaded GEMM per core on its share of the tokens)
- dense-numpy-gemms: the two GEMMs alone (a lower bound for any dense FF on this CPU)
- fff-numba:         kernels.fff.fff_apply on the walk layout (packing excluded: done once at load):
                     top levels for all tokens, then the tokens grouped by the subtree they enter
- fff-numba-one-pass: the same kernel with the split at the root (levels = d + 1, no pass 1): the plain
                     token-major walk, each token through all its levels in turn (the same bits)
- fff-numba-one-path: the same kernel on tokens that are all one row, so that every token walks the same
                     path and the tree's rows stay in L1: the setting of UltraFastBERT's CPU benchmark
                     (benchmark_cpu/fff.cpp, fff_l2: every token's input pointer is the same row), not a real
                     layer; its time against fff-numba is what that setting leaves out
- fff-numpy-gather:  mabert_hw.fff.fff_gather, one gathered row per token and level
- io-floor:          no layer at all: x read once and y written once (kernels.cache_hints.stream_rows, the
                     walk's non-temporal stores), nothing computed: what a kernel that reads x and writes
                     y as the walk does cannot beat. At small shapes it times thread wake-up and the
                     stores more than memory. C a multiple of the 16 floats of a cache line; other
                     widths get no such row
- torch-dense / torch-fff-bmm: torch linear + gelu + linear, and FFF.forward_gather (gather + bmm)
Every NumPy / Numba form writes into output (and hidden) arrays allocated once: the timings are the
kernels', without the kernel zeroing fresh pages for 48-192 MiB of new arrays at each call (a model
that reuses its buffers does not pay that; measured, a fresh 16384 x 768 output added ~3-6 ms to the
walk). Rounds are interleaved (bench.timing.time_calls: every implementation once per round, in the
order above, after a warm-up call each) so that load from other processes on a shared CPU falls on
all of them alike; medians over rounds are reported. Each call starts after THREADS_IDLE_S of sleep: OpenBLAS worker threads spin after a GEMM before they sleep,
and the call timed next (the FFF walk, after the dense GEMMs) shared the cores with them (measured at
load ~7: 130-150 ms instead of ~90-110 ms for whichever walk came next).
The theoretical ratio is the MAC count of the dense FF over the FFF walk's (cost.counts rules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..backends.base import Op
from ..cost.counts import count_op, fff_walk_counts
from ..fff import fff_gather, n_nodes, walk_layout

DENSE_FFS = ("dense-numpy", "dense-fast")  # whole dense FFs (GEMM + bias-GELU + GEMM + bias)
IO_FLOOR = "io-floor"  # x read and y written, nothing computed



@dataclass(frozen=True)
class Problem:
    hidden: int  # C
    depth: int
    trees: int  # K
    tokens: int  # M
    dense_width: int  # F

    def ops(self) -> dict[str, list[Op]]:
        """The trace ops of each layer form, for the counting rules."""
        M, C, F = self.tokens, self.hidden, self.dense_width
        nodes = self.trees * n_nodes(self.depth)
        dense = [Op("in", "linear", ((M, C),), ((F, C), (F,)), (M, F)),
                 Op("act", "gelu", ((M, F),), (), (M, F)),
                 Op("out", "linear", ((M, F),), ((C, F), (C,)), (M, C))]
        fff = [Op("fff", "fff", ((M, C),), ((nodes, C), (nodes,), (C, nodes)), (M, C),
                  (("depth", self.depth), ("trees", self.trees)))]
        return {"dense": dense, "fff": fff}

    def mac_ratio(self) -> float:
        macs = {form: sum(count_op(op).macs for op in ops) for form, ops in self.ops().items()}
        return macs["dense"] / macs["fff"]

    def walk(self) -> dict[str, int]:
        return fff_walk_counts(self.ops()["fff"][0])


def _dense_fast(x, w1, b1, w2, b2, h, y):
    """The fast backend's dense FFN (its kernels, its thread layout), into h (M, F) and y (M, C)."""
    from ..kernels.linear import linear_bias, linear_bias_act
    from ..kernels.rows import GELU
    from ..kernels.threads import kernel_blas, rows_per_task

    rows = rows_per_task(x.shape[0])
    with kernel_blas():
        linear_bias_act(x, w1, b1, GELU, rows, h)
        linear_bias(h, w2, b2, rows, y)
    return y


def random_fff(problem: Problem, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Random tokens x (M, C) and FFF weights w_in (K*N, C), b_in (K*N,), w_out (C, K*N), float32."""
    C, M = problem.hidden, problem.tokens
    nodes = problem.trees * n_nodes(problem.depth)
    bound = np.float32(1.0 / np.sqrt(C))  # the official FFF initialisation, uniform(+-sqrt(1/C))
    x = rng.normal(size=(M, C)).astype(np.float32)
    w_in = rng.uniform(-bound, bound, (nodes, C)).astype(np.float32)
    b_in = rng.uniform(-bound, bound, nodes).astype(np.float32)
    # ... and uniform(+-sqrt(1/((d+1)K))) for w_out (torch_ref/fff.py)
    w_out = rng.uniform(-1, 1, (C, nodes)).astype(np.float32) / np.float32(np.sqrt((problem.depth + 1) * problem.trees))
    return x, w_in, b_in, w_out


def implementations(problem: Problem, seed: int = 0, with_torch: bool = True) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable computing the layer on shared random data."""
    from ..fff import aligned_empty
    from ..kernels.cache_hints import stream_rows, streamable
    from ..kernels.fff import fff_apply
    from ..kernels.rows import GELU, bias_activation_

    rng = np.random.default_rng(seed)
    C, F, M = problem.hidden, problem.dense_width, problem.tokens
    x, w_in, b_in, w_out = random_fff(problem, rng)
    x_one_path = np.ascontiguousarray(np.broadcast_to(x[:1], x.shape))  # (M, C), every row token 0's
    layout = walk_layout(w_in, b_in, w_out, problem.depth, problem.trees)
    w_out_rows = np.ascontiguousarray(w_out.T)  # (K*N, C)
    w1 = (0.02 * rng.normal(size=(F, C))).astype(np.float32)
    b1 = (0.02 * rng.normal(size=F)).astype(np.float32)
    w2 = (0.02 * rng.normal(size=(C, F))).astype(np.float32)
    b2 = (0.02 * rng.normal(size=C)).astype(np.float32)
    h, y = np.empty((M, F), np.float32), np.empty((M, C), np.float32)  # the dense forms' outputs
    y_fff = aligned_empty((M, C))  # the walk's (line-aligned: its non-temporal stores need that)

    def dense_numpy():
        np.matmul(x, w1.T, out=h)  # (M, F)
        bias_activation_(h, b1, GELU)
        np.matmul(h, w2.T, out=y)  # (M, C)
        return np.add(y, b2, out=y)

    def gemms():
        np.matmul(x, w1.T, out=h)
        return np.matmul(h, w2.T, out=y)

    impls: dict[str, Callable[[], object]] = {
        "dense-numpy": dense_numpy,
        "dense-fast": lambda: _dense_fast(x, w1, b1, w2, b2, h, y),
        "dense-numpy-gemms": gemms,
        "fff-numba": lambda: fff_apply(x, layout, out=y_fff),
        "fff-numba-one-pass": lambda: fff_apply(x, layout, levels=problem.depth + 1, out=y_fff),
        "fff-numba-one-path": lambda: fff_apply(x_one_path, layout, out=y_fff),
        "fff-numpy-gather": lambda: fff_gather(x, w_in, b_in, w_out_rows, problem.depth, problem.trees),
    }
    if streamable(y_fff):
        impls[IO_FLOOR] = lambda: (stream_rows(x, y_fff), y_fff)[1]
    if with_torch:
        impls.update(_torch_implementations(problem, x, w_in, b_in, w_out, (w1, b1, w2, b2)))
    return impls


def _torch_implementations(problem: Problem, x, w_in, b_in, w_out, dense) -> dict[str, Callable[[], object]]:
    import torch

    from ..torch_ref.fff import FFF

    tx = torch.from_numpy(x)
    w1, b1, w2, b2 = (torch.from_numpy(a) for a in dense)
    module = FFF(problem.hidden, problem.depth, problem.trees).eval()
    module.load_state_dict({"linear_in.weight": torch.from_numpy(w_in), "linear_in.bias": torch.from_numpy(b_in),
                            "linear_out.weight": torch.from_numpy(w_out)})
    F = torch.nn.functional

    def torch_dense():
        with torch.no_grad():
            return F.linear(F.gelu(F.linear(tx, w1, b1)), w2, b2)

    def torch_fff():
        with torch.no_grad():
            return module.forward_gather(tx)

    return {"torch-dense": torch_dense, "torch-fff-bmm": torch_fff}


def check_agreement(impls: dict[str, Callable[[], object]], first: str = "fff-numba",
                    second: str = "fff-numpy-gather") -> float:
    """Max |first - second| over all outputs: two forms of the same layer on the same weights (the
    Numba walk and the NumPy gather walk; or the two dense FFs)."""
    a = np.array(impls[first]())  # a copy: both forms may write into buffers the next call reuses
    b = np.asarray(impls[second]())
    return float(np.abs(a - b).max())


def summarize(problem: Problem, seconds: dict[str, list[float]], cpu_seconds: dict[str, list[float]]) -> list[dict]:
    """One row per implementation: median and min wall ms, median CPU ms, speed-ups over it of the
    faster whole dense FF ("dense": the lower median of DENSE_FFS) and of the two GEMMs alone (wall;
    and CPU, the figure that load from other processes moves least when one thread runs each
    implementation)."""
    median = {name: float(np.median(s)) for name, s in seconds.items()}
    median_cpu = {name: float(np.median(s)) for name, s in cpu_seconds.items()}
    best = min(DENSE_FFS, key=median.__getitem__)
    dense, gemms = median[best], median["dense-numpy-gemms"]
    theory = problem.mac_ratio()
    return [{"impl": name,
             "median_ms": 1e3 * median[name],
             "min_ms": 1e3 * min(seconds[name]),
             "speedup_vs_dense": dense / median[name],
             "speedup_vs_gemms": gemms / median[name],
             "median_cpu_ms": 1e3 * median_cpu[name],
             "cpu_speedup_vs_dense": median_cpu[best] / median_cpu[name],
             "dense": best,
             "mac_ratio": theory if name.startswith(("fff", "torch-fff")) else None}
            for name in seconds]


def target(rows: list[dict], ratio: float) -> dict:
    """Whether the walk (fff-numba) is `ratio` times faster than the best dense FF: its time budget (that
    dense FF's median / ratio), the walk's median and the speed-up measured."""
    walk = next(row for row in rows if row["impl"] == "fff-numba")
    dense_ms = next(row["median_ms"] for row in rows if row["impl"] == walk["dense"])
    return {"ratio": ratio, "dense": walk["dense"], "budget_ms": dense_ms / ratio, "fff_numba_ms": walk["median_ms"],
            "speedup": walk["speedup_vs_dense"], "met": walk["speedup_vs_dense"] >= ratio}

"""Conditional matmul for FFF trees (mabert_hw/fff.py states the equations): per token and visited
node one dot product (it picks the branch) and one axpy (the output), reading one packed node row
[w_in row | w_out column] (WalkLayout).

The machine (lscpu; rates measured with one thread, bytes per CPU-second): AMD EPYC Zen 3, 2 cores
at ~3.15 GHz (a chain of dependent 4-cycle FMAs), L1d 32 KiB and L2 512 KiB per core, L3 32 MiB
shared with other tenants. Reads run at 85 GB/s from L2, 62 from 2 MiB, 43 from 8 MiB, 23 from
16 MiB and 19 from DRAM: the effective L3 is under 16 MiB, smaller than a depth-11 tree.

Roofline at C = C_out = 768, depth 11, 16384 tokens (196,608 visits; reports/fff/README.md):
- arithmetic: a visit is (C + C_out) / 8 = 192 AVX2 FMAs, 96 cycles on 2 FMA pipes. Its operands
  come from memory, 2 loads per FMA (x and w_in; w_out and y): 192 cycles at 2 loads per cycle;
  measured, an L1-resident visit (dot fused with axpy, below) takes ~235 cycles: 14.7 ms per call
  on one core, 7.4 on two. No walk that streams x, y and a row per visit goes below this.
- weights: 6 KiB per visit, 1.2 GB per call. Levels 0-5 (63 rows, 378 KiB) stay in L2; a token-
  major walk reads levels 6-11, 0.6 GB, from L3 or DRAM at 19-43 GB/s: 15-30 ms on one core.
- tokens: x in and y out, 48 MiB each, cross DRAM: ~200 MB per call with the read of x twice (pass 2
  below) and y's read for ownership, ~10 ms at one core's 19 GB/s.
- the dense FF it replaces: 2 GEMMs of 16384 x 768 x 3072 = 154.6 GFLOP, ~1 s at the ~158 GFLOP/s
  BLAS reaches on two cores, ~1.3 s with its GELU: 78x (the paper's claim) means ~16 ms per call.
Arithmetic and token traffic overlapped perfectly would allow ~8-10 ms on two cores, so 78x is
within reach only of a kernel that also hides every L2 row read; a kernel that reaches the BLAS rate
would need a GEMM-like blocking (several tokens per loaded row, y kept in registers over levels)
that a per-token walk does not have.

What this kernel does about the bytes:
1. Two passes split at level `top` = depth + 1 - subtree_levels(row bytes): the deepest subtree
   whose rows fit in L2 (6 levels here). Pass 1 (top_walk) walks every token through levels
   0..top-1 with dots only (the top tree's w_in rows stay in L2), keeping the activations and the
   node at level `top`. A counting sort groups the tokens by that node, and pass 2 (subtree_walk)
   takes one group at a time: the axpys of the group's shared top path, then each token's walk of
   the subtree, whose rows come from L2 for the whole group: the deep levels leave memory once per
   call instead of once per token. The price: x is read twice, the second time in group order.
2. Software pipeline: the dot of the next node needs only the branch, never the axpy of the node
   before it, so one loop over the row does both (s += x[c] * w_in[next, c] while
   y[c] += a * w_out[prev, c]) and the dot's chain of dependent FMAs overlaps the axpy's loads and
   stores instead of waiting for them.
3. Rows aligned to cache lines (WalkLayout and the output here); the caller's x may be unaligned.

Floating point: the node dot product is compiled with reassociation and FMA contraction (fastmath
reassoc + contract) so that LLVM vectorises the reduction; without it the dot is a serial add chain
and the walk runs several times slower. Passes, pipeline and grouping change neither the FMAs nor
their order per output (level by level, tree by tree), so every split level gives the bits of the
plain token-major walk (tests/test_fff.py). One FFF call moves by a few ulps of its output against
NumPy, well inside FAST_VS_REFERENCE_RTOL; a token whose node logit lies within rounding of 0 can
take the other branch in any two implementations (BLAS, torch, NumPy included).
"""

from __future__ import annotations

import math
import weakref

import numpy as np
from numba import njit, prange

from ..fff import WalkLayout, aligned_empty, walk_layout

SQRT2 = np.float32(math.sqrt(2.0))
HALF, ONE, ZERO = np.float32(0.5), np.float32(1.0), np.float32(0.0)
FASTMATH = {"reassoc", "contract"}
L2_BYTES = 512 * 1024  # per core: lscpu "L2 cache: 1 MiB (2 instances)"
TASK_TOKENS = 64  # tokens per parallel task of pass 2: 64 * (d + 1) visits dwarf a task's start,
# and a group as large as all tokens (top = 0) still splits evenly over the threads


def subtree_levels(row_bytes: int, cache_bytes: int = L2_BYTES) -> int:
    """Levels L of the deepest subtree whose 2^L - 1 node rows fit in `cache_bytes` (at least 1).
    768 + 768 floats (6 KiB rows): 6 levels, 63 rows, 378 KiB of the 512 KiB L2."""
    return max(1, int(math.log2(cache_bytes // row_bytes + 1)))


@njit(inline="always", fastmath=FASTMATH)
def _dot(x, w):
    s = ZERO
    for c in range(x.shape[0]):
        s += x[c] * w[c]
    return s


@njit(inline="always", fastmath=FASTMATH)
def _axpy(a, v, y):
    for j in range(y.shape[0]):
        y[j] += a * v[j]


@njit(inline="always", fastmath=FASTMATH)
def _dot_and_axpy(x, w, a, v, y):
    """x . w, while y += a * v: one loop when C == C_out (every FFN), else one after the other."""
    if x.shape[0] != y.shape[0]:
        _axpy(a, v, y)
        return _dot(x, w)
    s = ZERO
    for c in range(x.shape[0]):
        s += x[c] * w[c]
        y[c] += a * v[c]
    return s


@njit(inline="always", fastmath=FASTMATH)
def _gelu(v):
    return HALF * v * (ONE + math.erf(v / SQRT2))


@njit(inline="always")
def _child(node, logit):
    return 2 * node + (2 if logit > ZERO else 1)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def top_walk(x, packed, bias, k, top, nodes, acts):
    """Pass 1, tree k: nodes (M,) <- each token's node at level `top`; acts (M, top) <- its GELU
    activations at levels 0..top-1 (dots only: the axpys wait for pass 2)."""
    M, C = x.shape
    for t in prange(M):
        x_t = x[t]
        node = 0
        for level in range(top):
            logit = _dot(x_t, packed[k, node, :C]) + bias[k, node]
            acts[t, level] = _gelu(logit)
            node = _child(node, logit)
        nodes[t] = node


@njit(cache=True)
def group_tasks(nodes, first, width, task_tokens):
    """Counting sort of the tokens by node (first .. first + width - 1), ascending within a node.
    Returns order (M,) and the tasks: order[starts[i]:ends[i]] are <= task_tokens tokens of node
    roots[i]."""
    counts = np.zeros(width, np.int64)
    for node in nodes:
        counts[node - first] += 1
    offsets = np.zeros(width, np.int64)
    n_tasks = 0
    for g in range(width):
        offsets[g] = offsets[g - 1] + counts[g - 1] if g else 0
        n_tasks += (counts[g] + task_tokens - 1) // task_tokens
    order = np.empty(nodes.shape[0], np.int64)
    fill = offsets.copy()
    for t in range(nodes.shape[0]):
        g = nodes[t] - first
        order[fill[g]] = t
        fill[g] += 1
    starts = np.empty(n_tasks, np.int64)
    ends = np.empty(n_tasks, np.int64)
    roots = np.empty(n_tasks, np.int64)
    i = 0
    for g in range(width):
        for start in range(offsets[g], offsets[g] + counts[g], task_tokens):
            starts[i], ends[i], roots[i] = start, min(start + task_tokens, offsets[g] + counts[g]), first + g
            i += 1
    return order, starts, ends, roots


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def subtree_walk(x, packed, bias, depth, k, top, acts, order, starts, ends, roots, out, first_tree):
    """Pass 2, tree k: out[t] (+)= the walk of token t through levels 0..depth, for the tokens of
    each task: the axpys of their shared top path (activations from pass 1), then the subtree
    below the task's root, dot of each node fused with the axpy of the node before it."""
    C = x.shape[1]
    for task in prange(starts.shape[0]):
        root = roots[task]
        path = np.empty(top, np.int64)  # the top path's nodes at levels 0..top-1, shared by the task
        node = root
        for level in range(top - 1, -1, -1):
            node = (node - 1) // 2
            path[level] = node
        for j in range(starts[task], ends[task]):
            t = order[j]
            x_t, y_t = x[t], out[t]  # (C,), (C_out,)
            if first_tree:
                y_t[:] = ZERO
            for level in range(top - 1):
                _axpy(acts[t, level], packed[k, path[level], C:], y_t)
            node = root
            row = packed[k, node]  # (C + C_out,) [w_in row | w_out column]
            if top > 0:
                s = _dot_and_axpy(x_t, row[:C], acts[t, top - 1], packed[k, path[top - 1], C:], y_t)
            else:
                s = _dot(x_t, row[:C])
            logit = s + bias[k, node]
            for _ in range(depth - top):
                a, prev = _gelu(logit), row
                node = _child(node, logit)
                row = packed[k, node]
                logit = _dot_and_axpy(x_t, row[:C], a, prev[C:], y_t) + bias[k, node]
            _axpy(_gelu(logit), row[C:], y_t)


def fff_walk(x: np.ndarray, layout: WalkLayout, out: np.ndarray, levels: int | None = None) -> None:
    """out (M, C_out) <- sum over trees of the hard-path walk of x (M, C) float32.

    levels: subtree levels per pass-2 group (default: subtree_levels of the layout's row); any
    value gives the same bits, it only moves the split between the passes."""
    M = x.shape[0]
    packed, bias, depth = layout.packed, layout.bias, layout.depth
    if levels is None:
        levels = subtree_levels(packed.shape[2] * packed.itemsize)
    if levels < 1:
        raise ValueError(f"subtree levels must be >= 1, got {levels}")
    top = max(0, depth + 1 - levels)
    nodes = np.zeros(M, np.int64)  # (M,) node at level `top`
    acts = np.empty((M, top), np.float32)  # (M, top)
    for k in range(layout.trees):
        if top:  # else every token starts at the root: no pass 1
            top_walk(x, packed, bias, k, top, nodes, acts)
        order, starts, ends, roots = group_tasks(nodes, 2 ** top - 1, 2 ** top, TASK_TOKENS)
        subtree_walk(x, packed, bias, depth, k, top, acts, order, starts, ends, roots, out, k == 0)


def fff_apply(x: np.ndarray, layout: WalkLayout, levels: int | None = None) -> np.ndarray:
    """(..., C) float32 -> (..., C_out) through the laid-out tree(s)."""
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)  # (M, C)
    out = aligned_empty((flat.shape[0], layout.out_width))  # (M, C_out)
    fff_walk(flat, layout, out, levels)
    return out.reshape(x.shape[:-1] + (layout.out_width,))


_layouts: dict[int, tuple[tuple[weakref.ref, ...], WalkLayout]] = {}


def cached_layout(w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray, depth: int, trees: int) -> WalkLayout:
    """walk_layout, remembered while the same three weight arrays live (a forward pass reads the
    same arrays every call, and re-packing costs a full pass over the weights). Arrays changed in
    place are not noticed: re-pack with walk_layout after editing weights."""
    arrays = (w_in, b_in, w_out)
    key = id(w_out)
    hit = _layouts.get(key)
    if hit is not None and all(ref() is a for ref, a in zip(hit[0], arrays)) and hit[1].depth == depth \
            and hit[1].trees == trees:
        return hit[1]
    layout = walk_layout(w_in, b_in, w_out, depth, trees)
    refs = tuple(weakref.ref(a) for a in (w_in, b_in))
    refs += (weakref.ref(w_out, lambda _, key=key: _layouts.pop(key, None)),)
    _layouts[key] = (refs, layout)
    return layout


def fff_forward(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray,
                depth: int, trees: int) -> np.ndarray:
    """The FFF op with the official torch weight layout: what a backend's `_fff` calls."""
    return fff_apply(x, cached_layout(w_in, b_in, w_out, depth, trees))

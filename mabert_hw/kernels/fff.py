"""Conditional matmul for FFF trees (mabert_hw/fff.py states the equations): per token and visited
node one dot product with the node's w_in row (it picks the branch) and one axpy of its w_out
column into the output (WalkLayout holds both as contiguous rows).

The rates below were measured on a 2-core AMD EPYC Zen 5 VM (reports/fff/README.md has its records
and those of two other machines): ~3.7 GHz with AVX-512, L1d 48 KiB and L2 1 MiB per core, L3
32 MiB. Vectorised reads run at ~130 GB/s per core from L2, 94 from 4 MiB, 75 from 16 MiB and ~40
from DRAM (46 GB/s for both cores).

Roofline at C = C_out = 768, depth 11, 16384 tokens (196,608 visits), measured piece by piece on
one core (768-float rows, x in L1):
- a dot costs 13 ns with its w_in row in L1 and ~25 ns with it in L2 (the row's 3 KiB at ~120 GB/s:
  the L2 read, not the 48 AVX-512 FMAs, sets the pace); an axpy ~22 ns (L1) and ~30 ns (L2); both
  cost 40-45 ns with the row in a 6 MiB set (L3) and 110-280 ns in a 24 MiB one. A visit whose two
  rows come from L2 therefore costs ~55 ns: 10.8 ms per call on one core, 5.4 on two. With the top
  levels' rows in L1 (below) the floor is ~8 ms on one core, ~4 on two. analysis/fff_floor.py
  times these loops on their own: 8.1 ms on one core with every row in L1, 13.0 ms from L2.
- tokens: x (48 MiB) read and y (48 MiB) written cross DRAM, ~100 MB per call at the least,
  >= 2.2 ms at 46 GB/s.
- the dense FF it replaces: 2 GEMMs of 16384 x 768 x 3072 = 154.6 GFLOP, 375 ms on two cores
  (412 GFLOP/s), 697 ms on one. 78x (the paper's claim) means 4.8 ms on two cores, 8.9 on one:
  at the compute floor above, with every DRAM transfer hidden behind it.

What this kernel does about the bytes:
1. Two passes split at level `top` = depth + 1 - subtree_levels(row bytes): the deepest subtree
   whose rows fit in half of L2 (6 levels, 378 KiB here). Pass 1 (top_walk) walks every token
   through levels 0..top-1 with dots only (the top tree's w_in rows stay in L1 / L2), keeping the
   activations and the node at level `top`. A counting sort groups the tokens by that node, and
   pass 2 (subtree_walk) takes one group at a time: each token's walk of the subtree, whose rows come
   from L2 for the whole group, then the sum of the w_out rows of its whole path (the top path's
   rows, shared by the group, from L1). The deep levels leave memory once per call instead of once
   per token. The price: x is read twice, the second time in group order.
2. GROUP tokens in lockstep, so that the core overlaps independent dot products instead of waiting
   for each logit before it can load the next node's row; the x and y rows of the tokens two groups
   ahead are prefetched into L2 (the group order defeats the hardware prefetchers).
3. y built in L1, four w_out rows per pass (_accumulate), and written to memory once with non-
   temporal stores (cache_hints.stream_copy): y's lines are not read for ownership first.
4. Rows aligned to cache lines (WalkLayout and the output here); the caller's x may be unaligned.
Measured (one thread / two, back-to-back calls, weights warm): pass 1 5.2 / 2.6 ms, pass 2
15.5 / 7.9 ms, of which ~7.7 ms on one thread is waiting for x and y rows (the same pass with x and y
held in cache: 7.8 ms). The earlier kernel (one token at a time, GELU through libm's erff, y loaded
and stored at every level, plain stores) took 29-33 ms on one thread and 21-23 ms on two in the same
setting; of the changes, the lockstep was worth ~15 % and the non-temporal stores 7-8 %.

Floating point: the node dot product is compiled with reassociation and FMA contraction (fastmath
reassoc + contract) so that LLVM vectorises the reduction; without it the dot is a serial add chain
and the walk runs several times slower. GELU is the fast engine's (rows._activate: approx.erf32).
The passes, the lockstep and the grouping change neither the FMAs nor their order per output (the
dots per node, the w_out rows in level order, tree by tree), so every split level gives the bits of
the plain token-major walk (tests/test_fff.py). One FFF call moves by a few ulps of its output against
NumPy, well inside FAST_VS_REFERENCE_RTOL; a token whose node logit lies within rounding of 0 can
take the other branch in any two implementations (BLAS, torch, NumPy included).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..fff import WalkLayout, aligned_empty, walk_layout
from ..identity_memo import IdentityMemo
from ..machine import cache_bytes
from .cache_hints import READ, WRITE, line_aligned_row, prefetch_row_to_l2, stream_copy, streamable
from .rows import GELU, _activate

ZERO = np.float32(0.0)
FASTMATH = {"reassoc", "contract"}
L2_FALLBACK_BYTES = 512 * 1024  # where sysfs does not say (the smallest L2 of the CPUs measured here)
SUBTREE_L2_SHARE = 0.5  # the subtree's rows may fill half of L2: the other half holds the tokens' x and
# y rows in flight and the rows prefetched for the next groups
TASK_TOKENS = 64  # tokens per parallel task of pass 2: 64 * (d + 1) visits dwarf a task's start,
# and a group as large as all tokens (top = 0) still splits evenly over the threads
GROUP = 4  # tokens walked in lockstep: their dot products are independent, so the core overlaps one
# token's dot with the next one's instead of waiting for each logit before it can load the next row
# (16384 x 768, depth 11, two threads, medians of 15: 10.2 ms with 2, 9.1 with 4, 9.9 with 8)
PREFETCH_GROUPS_AHEAD = 2  # x (and, unless streamed, y) rows asked for two groups (~1 us) before they
# are used: more than a DRAM latency (two threads: 9.3 ms one group ahead, 9.1 two, 9.1 four)
ROWS_PER_PASS = 4  # w_out rows summed into y per pass over y (see _accumulate)

L2_BYTES = cache_bytes(2) or L2_FALLBACK_BYTES
SUBTREE_BYTES = int(SUBTREE_L2_SHARE * L2_BYTES)


def subtree_levels(row_bytes: int, budget_bytes: int = SUBTREE_BYTES) -> int:
    """Levels L of the deepest subtree whose 2^L - 1 nodes (row_bytes each, w_in + w_out) fit in
    `budget_bytes` (at least 1). 768 + 768 floats (6 KiB) in half of a 1 MiB L2: 6 levels, 378 KiB."""
    return max(1, int(math.log2(budget_bytes // row_bytes + 1)))


@njit(inline="always", fastmath=FASTMATH)
def _dot(x, w):
    s = ZERO
    for c in range(x.shape[0]):
        s += x[c] * w[c]
    return s


@njit(inline="always")
def _child(node, logit):
    return 2 * node + (2 if logit > ZERO else 1)


@njit(inline="always", fastmath=FASTMATH)
def _gelu_(values):
    for i in range(values.shape[0]):
        values[i] = _activate(values[i], GELU)


@njit(inline="always", fastmath=FASTMATH)
def _sum_rows(y, first, a0, v0, a1, v1, a2, v2, a3, v3):
    """y (=, when first, else +=) a0 v0 + a1 v1 + a2 v2 + a3 v3: one pass over y for 4 rows."""
    if first:
        for c in range(y.shape[0]):
            y[c] = a0 * v0[c] + a1 * v1[c] + a2 * v2[c] + a3 * v3[c]
    else:
        for c in range(y.shape[0]):
            y[c] += a0 * v0[c] + a1 * v1[c] + a2 * v2[c] + a3 * v3[c]


@njit(inline="always", fastmath=FASTMATH)
def _sum_row(y, first, a, v):
    if first:
        for c in range(y.shape[0]):
            y[c] = a * v[c]
    else:
        for c in range(y.shape[0]):
            y[c] += a * v[c]


@njit(inline="always", fastmath=FASTMATH)
def _accumulate(rows_out, path, acts, y, first):
    """y (=|+=) sum over levels of acts[l] * rows_out[path[l]], ROWS_PER_PASS rows per pass over y:
    y is loaded and stored once per 4 rows instead of once per row (a row costs one load per FMA
    instead of two loads and a store)."""
    n = path.shape[0]
    level = 0
    while level + ROWS_PER_PASS <= n:
        _sum_rows(y, first, acts[level], rows_out[path[level]], acts[level + 1], rows_out[path[level + 1]],
                  acts[level + 2], rows_out[path[level + 2]], acts[level + 3], rows_out[path[level + 3]])
        first = False
        level += ROWS_PER_PASS
    while level < n:
        _sum_row(y, first, acts[level], rows_out[path[level]])
        first = False
        level += 1


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def top_walk(x, rows_in, bias, k, top, nodes, acts):
    """Pass 1, tree k: nodes (M,) <- each token's node at level `top`; acts (M, top) <- its GELU
    activations at levels 0..top-1 (dots only: the axpys wait for pass 2). GROUP tokens in lockstep."""
    M = x.shape[0]
    for block in prange((M + GROUP - 1) // GROUP):
        first, last = block * GROUP, min(block * GROUP + GROUP, M)
        for t in range(first, last):
            nodes[t] = 0
        for level in range(top):
            for t in range(first, last):
                node = nodes[t]
                logit = _dot(x[t], rows_in[k, node]) + bias[k, node]
                acts[t, level] = logit
                nodes[t] = _child(node, logit)
        for t in range(first, last):
            _gelu_(acts[t])


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
def subtree_walk(x, rows_in, rows_out, bias, depth, k, top, acts, order, starts, ends, roots, out, first_tree,
                 stream):
    """Pass 2, tree k: out[t] (=, for the first tree, else +=) the walk of token t through levels
    0..depth, for the tokens of each task, GROUP at a time: their dots below the task's root in
    lockstep, then each token's sum of the w_out rows of its whole path (the top levels' activations
    from pass 1). The x and y rows of the group PREFETCH_GROUPS_AHEAD ahead are asked for first.
    stream (first tree, out's rows line-aligned): the sum is built in an L1 scratch row and copied
    out with non-temporal stores, so out's lines are never read."""
    levels = depth + 1
    for task in prange(starts.shape[0]):
        root = roots[task]
        path = np.empty((GROUP, levels), np.int64)  # each token's node per level; the top part is shared
        act = np.empty((GROUP, levels), np.float32)  # ... and its activation there
        node = np.empty(GROUP, np.int64)
        scratch = line_aligned_row(out.shape[1])  # (C_out,)
        ancestor = root
        for level in range(top - 1, -1, -1):
            ancestor = (ancestor - 1) // 2
            path[:, level] = ancestor
        start, end = starts[task], ends[task]
        for first in range(start, end, GROUP):
            last = min(first + GROUP, end)
            ahead = first + PREFETCH_GROUPS_AHEAD * GROUP
            for j in range(ahead, min(ahead + GROUP, end)):
                prefetch_row_to_l2(x[order[j]], READ)
                if not stream:
                    prefetch_row_to_l2(out[order[j]], WRITE)
            for j in range(first, last):
                node[j - first] = root
                act[j - first, :top] = acts[order[j]]
            for level in range(top, levels):
                for j in range(first, last):
                    g, n = j - first, node[j - first]
                    logit = _dot(x[order[j]], rows_in[k, n]) + bias[k, n]
                    path[g, level] = n
                    act[g, level] = logit
                    node[g] = _child(n, logit)
            for j in range(first, last):
                g = j - first
                _gelu_(act[g, top:])
                if stream:
                    _accumulate(rows_out[k], path[g], act[g], scratch, True)
                    stream_copy(out[order[j]], scratch)
                else:
                    _accumulate(rows_out[k], path[g], act[g], out[order[j]], first_tree)


def fff_walk(x: np.ndarray, layout: WalkLayout, out: np.ndarray, levels: int | None = None) -> None:
    """out (M, C_out) <- sum over trees of the hard-path walk of x (M, C) float32.

    levels: subtree levels per pass-2 group (default: subtree_levels of the layout's rows); any
    value gives the same bits, it only moves the split between the passes."""
    M = x.shape[0]
    rows_in, rows_out, bias, depth = layout.rows_in, layout.rows_out, layout.bias, layout.depth
    if levels is None:
        levels = subtree_levels((layout.hidden + layout.out_width) * rows_in.itemsize)
    if levels < 1:
        raise ValueError(f"subtree levels must be >= 1, got {levels}")
    top = max(0, depth + 1 - levels)
    nodes = np.zeros(M, np.int64)  # (M,) node at level `top`
    acts = np.empty((M, top), np.float32)  # (M, top)
    for k in range(layout.trees):
        if top:  # else every token starts at the root: no pass 1
            top_walk(x, rows_in, bias, k, top, nodes, acts)
        order, starts, ends, roots = group_tasks(nodes, 2 ** top - 1, 2 ** top, TASK_TOKENS)
        subtree_walk(x, rows_in, rows_out, bias, depth, k, top, acts, order, starts, ends, roots, out, k == 0,
                     k == 0 and streamable(out))


def fff_apply(x: np.ndarray, layout: WalkLayout, levels: int | None = None, out: np.ndarray | None = None
              ) -> np.ndarray:
    """(..., C) float32 -> (..., C_out) through the laid-out tree(s).

    out: a C-contiguous float32 (M, C_out) array to write into (M = tokens of x), for callers that
    reuse one; a fresh output of 16384 x 768 costs the kernel zeroing 48 MiB of new pages (~3 ms). It
    must not overlap x: the trees after the first read x after the first has written out."""
    if x.shape[-1] != layout.hidden:  # the kernels take the row length from x: a wider x reads past w_in's rows
        raise ValueError(f"x has {x.shape[-1]} features, the FFF takes {layout.hidden}")
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)  # (M, C)
    shape = (flat.shape[0], layout.out_width)
    if out is None:
        out = aligned_empty(shape)  # (M, C_out)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")
    elif np.may_share_memory(out, flat):
        raise ValueError("out must not overlap x")
    fff_walk(flat, layout, out, levels)
    return out.reshape(x.shape[:-1] + (layout.out_width,))


_layouts: IdentityMemo[WalkLayout] = IdentityMemo()


def cached_layout(w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray, depth: int, trees: int) -> WalkLayout:
    """walk_layout, remembered while the same three weight arrays live (identity_memo.py). Arrays
    changed in place are not noticed: re-pack with walk_layout after editing weights."""
    return _layouts.get((w_in, b_in, w_out), lambda: walk_layout(w_in, b_in, w_out, depth, trees), depth, trees)


def fff_forward(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray,
                depth: int, trees: int) -> np.ndarray:
    """The FFF op with the official torch weight layout: what a backend's `_fff` calls."""
    return fff_apply(x, cached_layout(w_in, b_in, w_out, depth, trees))

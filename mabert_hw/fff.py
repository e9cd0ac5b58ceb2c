"""Fast feed-forward (UltraFastBERT) trees: the hard-path equations, a vectorised NumPy walk, the
weight layout the Numba walk reads, and the crammed-bert-fff checkpoint key names.

One FFF block of depth d and K parallel trees (pbelcak/UltraFastBERT training/cramming/architectures/
fff.py) holds N = 2^(d+1) - 1 single-neuron nodes per tree, stored as torch Linear layers:
    linear_in.weight  (K*N, C)   linear_in.bias (K*N,)   linear_out.weight (C_out, K*N), no bias;
node n of tree k is row / column k*N + n. Per token x and tree k, the hard path is
    n_0 = 0;   a_i = GELU(x . w_in[n_i] + b[n_i]);   y += a_i * w_out[:, n_i];
    n_{i+1} = 2 n_i + 1 + (x . w_in[n_i] + b[n_i] > 0),   i = 0 .. d      (d + 1 nodes visited)
and the K trees' outputs are summed. GELU is the erf form, as the reference backend's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .machine import CACHE_LINE_BYTES
from .numerics import gelu

FFF_PREFIX = "ffn."  # our keys: encoder.layer.{l}.ffn.linear_in.weight, ... (the official module names)
FFF_PARAMS = ("linear_in.weight", "linear_in.bias", "linear_out.weight")
# crammed-bert-fff (ScriptableLMForPreTraining) spells a layer's FFF `encoder.layers.{l}.ffn.<param>`.
_CRAMMED_FFF_KEY = re.compile(r"^encoder\.layers\.(\d+)\.ffn\.(" + "|".join(map(re.escape, FFF_PARAMS)) + ")$")


def n_nodes(depth: int) -> int:
    """Nodes of one tree of depth d: a complete binary tree with d + 1 levels, 2^(d+1) - 1."""
    return 2 ** (depth + 1) - 1


def fff_shapes(hidden: int, depth: int, trees: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one FFF block (C in and out), keyed by the official module names."""
    width = trees * n_nodes(depth)
    return dict(zip(FFF_PARAMS, ((width, hidden), (width,), (hidden, width))))


def crammed_fff_key(key: str) -> str | None:
    """Our key for a crammed-bert-fff FFF parameter key, or None when `key` is not one."""
    match = _CRAMMED_FFF_KEY.match(key)
    return f"encoder.layer.{match.group(1)}.{FFF_PREFIX}{match.group(2)}" if match else None



def fff_gather(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, w_out_rows: np.ndarray,
               depth: int, trees: int) -> np.ndarray:
    """The hard-path walk, vectorised over tokens: one gather of each token's node row per level.

    x (M, C); w_in (K*N, C); b_in (K*N,); w_out_rows (K*N, C_out), i.e. linear_out.weight.T
    (a transposed view is fine; a contiguous copy is faster). Returns y (M, C_out).
    """
    M = x.shape[0]
    N = n_nodes(depth)
    y = np.zeros((M, w_out_rows.shape[1]), dtype=x.dtype)  # (M, C_out)
    for k in range(trees):
        node = np.zeros(M, dtype=np.int64)  # (M,) current node of every token
        for _ in range(depth + 1):
            row = k * N + node  # (M,)
            logit = np.einsum("mc,mc->m", x, w_in[row]) + b_in[row]  # (M,)
            y += gelu(logit)[:, None] * w_out_rows[row]  # (M, C_out)
            node = 2 * node + 1 + (logit > 0)
    return y


def fff_reference(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray,
                  depth: int, trees: int) -> np.ndarray:
    """(..., C) -> (..., C_out) with the official torch weight layout (the reference backend's FFF)."""
    flat = x.reshape(-1, x.shape[-1])  # (M, C)
    y = fff_gather(flat, w_in, b_in, w_out.T, depth, trees)
    return y.reshape(x.shape[:-1] + (w_out.shape[0],))


ALIGNMENT = CACHE_LINE_BYTES  # NumPy aligns to 16 bytes only, and then every other 32-byte AVX load
# straddles two lines (measured: the walk ~10% slower on unaligned rows)


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """np.empty whose first element sits on an ALIGNMENT-byte boundary (rows of a multiple of 16
    float32 are then all aligned)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = np.empty(size + ALIGNMENT, dtype=np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start:start + size].view(dtype).reshape(shape)


@dataclass(frozen=True)
class WalkLayout:
    """Weights laid out for the walk: node n of tree k is row [k, n] of two row-major arrays.

    rows_in (K, N, C) and rows_out (K, N, C_out) float32, cache-line aligned: a visited node costs
    one sequential read of its w_in row (the dot, pass 1 or 2 of the walk) and one of its w_out
    column (the sum into y, pass 2); the passes read only the array they need. bias (K, N) float32.
    """

    rows_in: np.ndarray
    rows_out: np.ndarray
    bias: np.ndarray
    depth: int

    @property
    def trees(self) -> int:
        return self.rows_in.shape[0]

    @property
    def hidden(self) -> int:  # C
        return self.rows_in.shape[2]

    @property
    def out_width(self) -> int:  # C_out
        return self.rows_out.shape[2]


def walk_layout(w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray, depth: int, trees: int) -> WalkLayout:
    """Torch layout (linear_in.weight, linear_in.bias, linear_out.weight) -> WalkLayout (a copy)."""
    N = n_nodes(depth)
    C, C_out = w_in.shape[1], w_out.shape[0]
    if w_in.shape[0] != trees * N or w_out.shape[1] != trees * N or b_in.shape != (trees * N,):
        raise ValueError(f"FFF weights {w_in.shape}, {b_in.shape}, {w_out.shape} do not fit depth {depth}, "
                         f"{trees} trees ({trees * N} nodes)")
    rows_in = aligned_empty((trees, N, C))
    rows_in[:] = w_in.reshape(trees, N, C)
    rows_out = aligned_empty((trees, N, C_out))
    rows_out[:] = w_out.T.reshape(trees, N, C_out)
    return WalkLayout(rows_in, rows_out, np.ascontiguousarray(b_in.reshape(trees, N), dtype=np.float32), depth)

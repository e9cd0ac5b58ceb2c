"""Cache hints (kernels/cache_hints.py): the hints reach the machine code, and the streaming copy
copies exactly what numpy's copy does, or is refused where its alignment rule does not hold."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from numba import njit

from mabert_hw.fff import aligned_empty
from mabert_hw.kernels.cache_hints import (
    LINE_FLOATS,
    READ,
    WRITE,
    line_aligned_row,
    prefetch_row_to_l2,
    stream_copy,
    stream_rows,
    streamable,
)

X86 = platform.machine() in ("x86_64", "AMD64")


@njit
def _copy_row(dst, src):  # stream_rows' parallel loop compiles apart from its caller's code: one row here
    stream_copy(dst, src)


@njit
def _touch(row):
    prefetch_row_to_l2(row, READ)
    prefetch_row_to_l2(row, WRITE)
    return row.sum()


@njit
def _aligned_addresses(length, times):
    misaligned = 0
    for _ in range(times):
        row = line_aligned_row(length)
        misaligned += row.ctypes.data % (4 * LINE_FLOATS) != 0 or row.shape[0] != length
    return misaligned


def test_stream_copy_copies_every_row_exactly():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(37, 3 * LINE_FLOATS)).astype(np.float32)
    dst = aligned_empty(src.shape)
    assert streamable(dst)
    stream_rows(src, dst)  # each row by stream_copy, rows split over the threads
    assert np.array_equal(dst, src)


def test_streamable_needs_line_aligned_rows():
    assert not streamable(aligned_empty((4, LINE_FLOATS + 4)))  # rows start off the line grid
    shifted = aligned_empty((4 * 32 + 1,))[1:].reshape(4, 32)  # 4 bytes past a line boundary
    assert not streamable(shifted)
    assert streamable(aligned_empty((4, 2 * LINE_FLOATS)))


def test_line_aligned_rows_are_aligned():
    assert _aligned_addresses(768, 100) == 0


@pytest.mark.skipif(not X86, reason="the instruction names checked are x86's")
def test_hints_reach_the_machine_code():
    row = np.arange(64, dtype=np.float32)
    assert _touch(row) == row.sum()
    asm = next(iter(_touch.inspect_asm().values()))
    assert "prefetcht1" in asm and "prefetchw" in asm
    dst = aligned_empty((2, LINE_FLOATS))
    _copy_row(dst[0], np.ones(LINE_FLOATS, np.float32))
    assert "vmovntps" in next(iter(_copy_row.inspect_asm().values()))

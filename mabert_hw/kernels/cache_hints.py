"""Cache hints for Numba kernels, two LLVM features Numba does not expose.

- prefetch: llvm.prefetch. The FFF walk (fff.py) reads x and writes y rows in an order only it
  knows (tokens sorted by subtree), so the hardware prefetchers cannot run ahead of it; it asks for
  the rows of the tokens it will take next while it computes the current ones.
- stream_copy: a row copy with non-temporal stores (x86 vmovntps). A plain store to a line that is
  not in cache first reads the line from memory (read for ownership): writing a 48 MiB output costs
  96 MiB of DRAM traffic. The FFF walk builds each output row in an L1 scratch row and streams it
  out (measured: the whole walk 7-8 % faster at 16384 x 768, 2 threads and 1).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..machine import CACHE_LINE_BYTES

LINE_BYTES = CACHE_LINE_BYTES
LINE_FLOATS = LINE_BYTES // 4  # float32 per cache line, and per non-temporal vector store
READ, WRITE = 0, 1  # llvm.prefetch's rw argument
TO_L2 = 2  # locality 2: x86 prefetcht1, into L2 and not L1, where rows asked for two groups ahead would
# evict the current tokens' rows from the 48 KiB L1. Measured on the FFF walk (16384 x 768, depth 11,
# medians of 15 calls): 9.1 ms into L2 against 10.8 ms into L1 on two threads, the same on one


@intrinsic
def prefetch(typingctx, array, index, rw, locality):
    """Hint array[index] (a 1-D array) into the cache: rw READ / WRITE and locality 0-3 are literals."""
    literal = (types.IntegerLiteral, types.BooleanLiteral)
    if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)
            and isinstance(rw, literal) and isinstance(locality, literal)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(array)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array, data, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                              "llvm.prefetch.p0")
        data_cache = 1  # llvm.prefetch's cache type: 1 data, 0 instruction
        builder.call(hint, [builder.bitcast(pointer, i8p), i32(int(rw.literal_value)),
                            i32(int(locality.literal_value)), i32(data_cache)])
        return context.get_dummy_value()

    return types.void(array, index, rw, locality), codegen


@njit(inline="always")
def prefetch_row_to_l2(row, rw):
    """Every cache line of a 1-D float32 row into L2 (rw: READ or WRITE, a literal)."""
    for c in range(0, row.shape[0], LINE_FLOATS):
        prefetch(row, c, rw, TO_L2)


@intrinsic
def stream_copy(typingctx, dst, src):
    """dst[:] = src with non-temporal 64-byte stores. Both 1-D float32 of the same length, a multiple
    of LINE_FLOATS; dst starts on a LINE_BYTES boundary (the caller checks, see streamable: a
    misaligned vmovntps faults); src may sit anywhere (plain unaligned loads)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.ndim == src.ndim == 1
            and dst.dtype == src.dtype == types.float32):
        return None

    def codegen(context, builder, signature, args):
        target = context.make_array(dst)(context, builder, args[0])
        source = context.make_array(src)(context, builder, args[1])
        length = cgutils.unpack_tuple(builder, target.shape, 1)[0]
        vector = ir.VectorType(ir.FloatType(), LINE_FLOATS).as_pointer()
        nontemporal = builder.module.add_metadata([ir.IntType(32)(1)])
        lines = builder.udiv(length, ir.Constant(length.type, LINE_FLOATS))
        with cgutils.for_range(builder, lines) as loop:
            offset = builder.mul(loop.index, ir.Constant(length.type, LINE_FLOATS))
            value = builder.load(builder.bitcast(builder.gep(source.data, [offset]), vector), align=4)
            store = builder.store(value, builder.bitcast(builder.gep(target.data, [offset]), vector), align=LINE_BYTES)
            store.set_metadata("nontemporal", nontemporal)
        return context.get_dummy_value()

    return types.void(dst, src), codegen


@njit(parallel=True, cache=True)
def stream_rows(x, out):
    """out[t] <- x[t] for every row, rows split over the threads, with stream_copy's non-temporal stores:
    x read once and out written once, no arithmetic. The DRAM traffic any kernel that reads an (M, C)
    input and writes an (M, C) output pays at the least (out must be streamable)."""
    for t in prange(x.shape[0]):
        stream_copy(out[t], x[t])


def streamable(rows) -> bool:
    """Whether every row of a C-contiguous float32 (M, C) array can take stream_copy."""
    return rows.ctypes.data % LINE_BYTES == 0 and rows.shape[1] % LINE_FLOATS == 0


@njit(inline="always")
def line_aligned_row(length):
    """A fresh float32 (length,) array starting on a LINE_BYTES boundary (a stream_copy source)."""
    buffer = np.empty(length + LINE_FLOATS, np.float32)
    start = (-(buffer.ctypes.data // 4)) % LINE_FLOATS
    return buffer[start:start + length]

"""Software prefetch for Numba kernels: LLVM's llvm.prefetch intrinsic, which Numba does not expose.

The FFF walk (fff.py) reads x and writes y rows in an order only it knows (tokens sorted by
subtree), so the hardware prefetchers cannot run ahead of it; it asks for the rows of the tokens
it will take next while it computes the current ones.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LINE_FLOATS = 16  # float32 per 64-byte cache line
READ, WRITE = 0, 1  # llvm.prefetch's rw argument
TO_L2 = 2  # locality 2: x86 prefetcht1, into L2 and not L1. A row asked for several tokens ahead
# would otherwise evict the current tokens' rows from the 48 KiB L1 (measured: into L2 was 10-15 %
# faster than into L1 for the FFF walk, whose next rows are ~2 tokens ahead)


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

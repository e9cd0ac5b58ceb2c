"""Numba kernels used by the backends (fast: linear.py, rows.py, attention.py, approx.py; fixed:
introws.py, the integer-only ops, exact and with conventions of their own (its docstring); threads.py
sets the thread counts of Numba and BLAS).

Conventions of the fast backend's kernels: float32 in and out; row kernels take (N, C) C-contiguous
views of (..., C) tensors; reductions (softmax sums, LayerNorm statistics) accumulate in float64, so
they are at least as accurate as NumPy's pairwise float32 sums; every elementwise formula keeps the
reference backend's operation order. Only the row reductions (max, float64 sums) are compiled with
reassociation, which lets LLVM vectorise them (a reordered float64 sum moves its float32 rounding
at most by an ulp, rarely); no elementwise formula uses fastmath (no FMA contraction): the speed
fastmath would buy for exp and erf comes from approx.py's vectorisable forms instead.
The differences from the reference are last-ulp effects of those forms and of summation order.
"""

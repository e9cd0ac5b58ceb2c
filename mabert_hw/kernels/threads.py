"""Thread settings for the Numba kernels and for BLAS (set through threadpoolctl when installed).

Two levels of parallelism must not nest: the fused attention kernel runs one (batch, head) task per
Numba thread and calls BLAS (np.dot) inside each task, so BLAS must be single-threaded there, or
each task's small GEMM spawns its own BLAS threads and the cores thrash (measured: 2.4 s instead
of 25 ms for one MiniLM layer's attention at B=8, T=128 on this 2-core machine). The big GEMMs
outside the kernels use every BLAS thread.
"""

from __future__ import annotations

import contextlib
import os
from functools import cache


@cache
def _controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba's np.dot calls: load it to see it)

    return ThreadpoolController()


def set_threads(threads: int | None = None) -> dict:
    """Run Numba kernels and BLAS on `threads` threads (None: one per core). Returns what holds.

    Without threadpoolctl the BLAS threads stay as OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set them
    when the process started.
    """
    import numba

    cores = numba.config.NUMBA_NUM_THREADS  # the machine's cores unless NUMBA_NUM_THREADS says less
    wanted = min(threads or cores, cores)
    numba.set_num_threads(wanted)
    controller = _controller()
    if controller is None:
        blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
        return {"numba_threads": wanted, "blas_threads": blas}
    controller.limit(limits=wanted, user_api="blas")
    return {"numba_threads": wanted, "blas_threads": wanted}


def single_threaded_blas():
    """Context in which BLAS calls run on one thread (inside a prange task); no-op without threadpoolctl."""
    controller = _controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")

"""Thread settings for the Numba kernels and for BLAS (set through threadpoolctl when installed).

Two levels of parallelism must not nest: the kernels run one chunk of rows (linear.py) or one
(batch, head) pair (attention.py) per Numba thread and call BLAS (np.dot) inside each task, so that
BLAS must be single-threaded, or each task's GEMM spawns its own BLAS threads and the cores thrash
(measured: 2.4 s instead of 25 ms for one MiniLM layer's attention at B=8, T=128 on a 2-core
machine). Numba's np.dot calls the BLAS behind scipy.linalg.cython_blas; where that library is not
numpy's own (pip wheels bundle one each) it is held at one thread (checked at each kernel call), and
numpy's BLAS keeps its threads for other engines in the same process; where they are one library
(or threadpoolctl is missing) `kernel_blas` limits it around each kernel call (~50 us each).

Numba's thread count and BLAS's are process settings (Numba's per Python thread), so a backend that
set them when it was built would change every other backend's: `threads_held` applies a backend's
count around each of its forwards and restores the caller's after.
"""

from __future__ import annotations

import contextlib
import os
from functools import cache

WAIT_POLICY = "PASSIVE"  # OpenMP threads sleep when idle (see _launching_threads)
SPIN_COUNT = "10000"  # ... after this many spins (GNU OpenMP: ~1e5 spins per ms, so ~0.1 ms)
TASKS_PER_THREAD = 1  # chunks of rows per thread in linear.py: one single-threaded GEMM per core
MIN_ROWS_PER_TASK = 16  # below this a GEMM chunk is mostly BLAS call overhead


@cache
def _controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba's np.dot calls: load it to see it)

    return ThreadpoolController()


@cache
def _kernel_blas_only():
    """Controller of the BLAS that only Numba's np.dot calls (scipy's bundled one), or None when it is
    also numpy's (or unknown)."""
    controller = _controller()
    if controller is None:
        return None
    blas = controller.select(user_api="blas")
    scipy_only = [lib.filepath for lib in blas.lib_controllers
                  if "scipy" in os.path.basename(os.path.dirname(lib.filepath))]  # e.g. site-packages/scipy.libs
    if not scipy_only or len(scipy_only) == len(blas.lib_controllers):
        return None
    return controller.select(filepath=scipy_only)


def _pin_kernel_blas() -> bool:
    """Hold the kernels' own BLAS at one thread; False when it is shared with numpy. Checked at every
    kernel call (~1 us): anything may have re-limited all BLAS libraries since (threadpool_limits,
    another engine's set-up in the same process), and a kernel calling a multi-threaded BLAS inside
    its prange thrashes (the 2.4 s above; 20 s for a MiniLM forward measured here)."""
    kernel = _kernel_blas_only()
    if kernel is None:
        return False
    if any(lib.num_threads != 1 for lib in kernel.lib_controllers):
        kernel.limit(limits=1)
    return True


@contextlib.contextmanager
def _launching_threads():
    """OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=SPIN_COUNT while Numba's OpenMP runtime starts (if it
    starts now), unless the user set them. By default GNU OpenMP threads spin for ~3 ms at each
    barrier's end; on a loaded machine a spinning thread takes the core its partner needs, and every
    parallel region waits for a time slice (measured here at load 5: MiniLM B=1, T=128 on 2 threads
    took 412 ms with spinning, 124 ms passive). Passive with no spin at all costs a sleep and a wake
    per parallel region, and on a virtual machine whose idle CPUs halt (KVM shrinks its halt polling
    after idle time) a wake can take tens of microseconds: MiniLM B=1 on 2 threads, quiet machine,
    second call after 0.15 s idle, 28-31 ms with no spin, 16 ms with 10,000 spins, 15-16 ms in steady
    state either way. ~0.1 ms of spinning bridges the gaps between a forward's regions and is
    nothing on a loaded machine. The variables are restored at once, so libraries loaded later
    (torch's own OpenMP) keep their defaults."""
    chosen = {"OMP_WAIT_POLICY": WAIT_POLICY, "GOMP_SPINCOUNT": SPIN_COUNT}
    added = [name for name in chosen if name not in os.environ]
    if "OMP_WAIT_POLICY" in os.environ:  # the user's policy, with GNU OpenMP's spin count for it
        added = []
    for name in added:
        os.environ[name] = chosen[name]
    try:
        yield
    finally:
        for name in added:
            del os.environ[name]


def _held_count(threads: int | None) -> int:
    """The Numba thread count `threads` gets (None: one per core), capped at what Numba can run."""
    import numba

    cores = numba.config.NUMBA_NUM_THREADS  # the machine's cores unless NUMBA_NUM_THREADS says less
    return min(threads or cores, cores)


def set_threads(threads: int | None = None) -> dict:
    """Run Numba kernels and BLAS on `threads` threads (None: one per core), for the whole process (a
    benchmark's setting for every engine). Returns what holds.

    Without threadpoolctl the BLAS threads stay as OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set them
    when the process started.
    """
    import numba

    wanted = _held_count(threads)
    with _launching_threads():
        numba.set_num_threads(wanted)  # starts Numba's threads on first use
    controller = _controller()
    if controller is None:
        blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
        return {"numba_threads": wanted, "blas_threads": blas}
    controller.limit(limits=wanted, user_api="blas")
    return {"numba_threads": wanted, "blas_threads": wanted, "kernel_blas_pinned": _pin_kernel_blas()}


@cache
def launch_threads() -> int:
    """Start Numba's threads (once) with the passive wait policy, leaving the thread counts and BLAS as
    they are: for backends that call parallel kernels between NumPy / BLAS ops (the fixed backend)."""
    import numba

    with _launching_threads():
        return numba.get_num_threads()  # starts the threading layer on first use


@cache
def _numpy_blas():
    """Controller of the BLAS libraries other than the kernels' own (numpy's), or None without threadpoolctl."""
    controller = _controller()
    if controller is None:
        return None
    kernel = _kernel_blas_only()
    kernel_files = set() if kernel is None else {lib.filepath for lib in kernel.lib_controllers}
    blas = controller.select(user_api="blas").lib_controllers
    return controller.select(filepath=[lib.filepath for lib in blas if lib.filepath not in kernel_files])


@contextlib.contextmanager
def threads_held(threads: int | None):
    """Numba kernels and numpy's BLAS on `threads` threads (None: one per core) inside the block, as the
    caller had them after it. Applied once per forward, not per op; measured here (2 cores): 20 us
    per forward when no count changes, 31 us when both are set and restored (threads=1), so +~20 us
    on a tiny model's 0.5 ms forward and nothing measurable on MiniLM's 40 ms (B=1, T=128). Counts
    are read and set directly: threadpoolctl's limit() surveys every library on each call (27 us
    more). The kernels' own BLAS stays pinned at one thread (_pin_kernel_blas)."""
    import numba

    launch_threads()
    blas = [] if _numpy_blas() is None else _numpy_blas().lib_controllers
    wanted, outer, outer_blas = _held_count(threads), numba.get_num_threads(), [lib.num_threads for lib in blas]
    _hold(wanted, blas, [wanted] * len(blas))
    try:
        yield
    finally:
        _hold(outer, blas, outer_blas)


def _hold(numba_threads: int, blas: list, blas_threads: list[int]) -> None:
    """Set Numba's thread count and each BLAS library's where it differs (reading a count costs
    1-2 us, setting one 2-3 us)."""
    import numba

    if numba.get_num_threads() != numba_threads:
        numba.set_num_threads(numba_threads)
    for lib, threads in zip(blas, blas_threads):
        if lib.num_threads != threads:
            lib.set_num_threads(threads)


def kernel_blas():
    """Context in which the BLAS that kernels call runs on one thread (a no-op once it is pinned)."""
    if _pin_kernel_blas():
        return contextlib.nullcontext()
    controller = _controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def rows_per_task(rows: int) -> int:
    """Chunk height for linear.py's kernels: TASKS_PER_THREAD chunks per Numba thread."""
    import numba

    tasks = TASKS_PER_THREAD * numba.get_num_threads()
    return max(MIN_ROWS_PER_TASK, -(-rows // tasks))

"""Numba kernels used by the backends (fast: linear.py, rows.py, attention.py, approx.py; fixed:
introws.py, the integer-only ops, exact and with conventions of their own (its docstring); every
backend's FFF blocks: fff.py, the tree walk, with cache_hints.py's prefetches and streaming stores;
threads.py sets the thread counts of Numba and BLAS).

Conventions of the fast backend's kernels: float32 in and out; row kernels take (N, C) C-contiguous
views of (..., C) tensors; reductions (softmax sums, LayerNorm statistics) accumulate in float64, so
they are at least as accurate as NumPy's pairwise float32 sums; every elementwise formula keeps the
reference backend's operation order. Only the row reductions (max, float64 sums) are compiled with
reassociation, which lets LLVM vectorise them (a reordered float64 sum moves its float32 rounding
at most by an ulp, rarely); no elementwise formula uses fastmath (no FMA contraction): the speed
fastmath would buy for exp and erf comes from approx.py's vectorisable forms instead.
The differences from the reference are last-ulp effects of those forms and of summation order.

Numba's on-disk cache (cache=True) is keyed by the source file of each compiled function, not by the
files of the functions it inlines: an edit of approx.py alone left rows.py's GELU kernels running the
old erf. kernel_cache_dir() therefore puts the cache in a folder named by a digest of every kernel
source, so that any edit (or a pull that changes one) compiles afresh.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path

from .. import cache

KERNEL_SOURCES = Path(__file__).parent


def kernel_cache_dir(sources: Path = KERNEL_SOURCES) -> None:
    """Numba's cache folder <CACHE_ROOT>/numba/<digest of kernels/*.py>, unless the user set
    NUMBA_CACHE_DIR. Numba reads config.CACHE_DIR when a cache=True function is defined, i.e. when the
    kernel modules are imported, which is after this package's __init__ ran. Folders of older sources
    stay until deleted (a few MB each). Where CACHE_ROOT cannot be written (a read-only home), the folder is
    made under the system's temporary directory, said on stderr: Numba would otherwise write into the
    package's __pycache__ (keyed by each file alone, the stale-kernel trap above) or, read-only too, fail."""
    try:
        from numba.core import config
    except ImportError:  # no Numba: nothing is compiled
        return
    if config.CACHE_DIR:
        return
    digest = hashlib.sha256()
    for source in sorted(sources.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    name = digest.hexdigest()[:16]
    folder = cache.CACHE_ROOT / "numba" / name
    if not _writable(folder):
        fallback = _private_temporary() / "numba" / name
        print(f"mabert-hw: warning: cannot write {folder}: compiled kernels are cached in {fallback} (set "
              "MABERT_HW_CACHE to a writable folder to keep them)", file=sys.stderr)
        folder = fallback
    config.CACHE_DIR = str(folder)


def _writable(folder: Path) -> bool:
    """Whether `folder` can be made or written: its nearest existing ancestor is a writable directory
    (nothing is created here; Numba makes the folder when it first saves)."""
    existing = next(part for part in (folder, *folder.parents) if part.exists())
    return existing.is_dir() and os.access(existing, os.W_OK)


def _private_temporary() -> Path:
    """<tmp>/mabert-hw-<uid>, made mode 0700 and checked to be this user's alone; else a fresh mkdtemp.
    Numba's cache files are pickles, run when loaded: a folder another user made first (its name is
    guessable in a shared /tmp) must not be used."""
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        folder = Path(tempfile.gettempdir()) / f"mabert-hw-{getuid()}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            status = folder.lstat()
        except OSError:
            status = None
        if status is not None and stat.S_ISDIR(status.st_mode) and status.st_uid == getuid() \
                and not status.st_mode & 0o077:
            return folder
    return Path(tempfile.mkdtemp(prefix="mabert-hw-"))


def prefer_512_bit_vectors() -> None:
    """Let LLVM vectorise the kernels with 512-bit registers on AVX-512 hosts. Its tuning for Intel's
    AVX-512 cores (skylake-avx512 to sapphirerapids) prefers 256-bit vectors, so Numba's loops use ymm
    registers there while OpenBLAS's GEMMs use zmm; on AMD's AVX-512 cores the default is already
    512-bit. Measured on a 2-core Intel Xeon VM (Numba names it rocketlake), the FFF walk at hidden 768,
    depth 11, 16384 tokens, in alternating fresh processes: 41.4-67.5 ms (256-bit) against 36.4-52.9 ms
    (512-bit) on one thread, 27.0 / 27.4 against 23.6 / 23.3 ms on two, same outputs.
    Numba reads its CPU features once, when it first compiles: a process that compiled Numba code
    before importing the kernels keeps its features, and NUMBA_CPU_FEATURES / NUMBA_CPU_NAME /
    NUMBA_ENABLE_AVX=0 set by the user are left alone."""
    try:
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features
    except ImportError:  # no Numba: the fast engine is unavailable anyway
        return
    if config.CPU_FEATURES is not None or config.CPU_NAME is not None or not config.ENABLE_AVX:
        return
    features = get_host_cpu_features()  # Numba's own reading of the host (NUMBA_ENABLE_AVX applied)
    if "+avx512f" in features.split(","):
        config.CPU_FEATURES = features + ",-prefer-256-bit"


kernel_cache_dir()
prefer_512_bit_vectors()

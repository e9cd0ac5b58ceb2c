"""What CPU a timing ran on: its model name, cores and cache sizes, for the records that benchmarks
write (the FFF walk's speed depends on L2 and L3 as much as on the core, and the same model name can
hide different caches in a VM)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")  # Linux sysfs: one indexN folder per cache of cpu0
SIZE_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}  # sysfs writes sizes as e.g. "48K", "2048K"
CACHE_LINE_BYTES = 64  # every x86-64 core, and the Arm server cores (sysfs coherency_line_size)


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo), or the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cache_bytes(level: int, cache_dir: Path = CACHE_DIR) -> int | None:
    """Bytes of cpu0's data (or unified) cache at `level`, as sysfs reports it; None where it does not
    (not Linux, no such level, or an unreadable entry)."""
    for index in sorted(cache_dir.glob("index*")):
        try:
            found = int((index / "level").read_text().strip())
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if found != level or kind not in ("Data", "Unified"):
            continue
        if size.isdigit():
            return int(size)
        if size[:-1].isdigit() and size[-1] in SIZE_UNITS:
            return int(size[:-1]) * SIZE_UNITS[size[-1]]
    return None


def memory_bytes() -> int:
    """Bytes of this machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def describe() -> dict:
    """The machine for a timing record: model name, the cores this process may use, cache bytes."""
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            **{f"l{level}_bytes": cache_bytes(level) for level in (1, 2, 3)}}

"""The machine facts that timing records carry: cache sizes read from sysfs, checked on a made-up
sysfs tree and against the C library on this machine."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mabert_hw.machine import cache_bytes, describe

# this session's Intel Xeon VM, as its sysfs lists them (index order is sysfs's, not the level's)
FAKE_CACHES = [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"), (3, "Unified", "107520K")]
GETCONF_NAMES = {1: "LEVEL1_DCACHE_SIZE", 2: "LEVEL2_CACHE_SIZE", 3: "LEVEL3_CACHE_SIZE"}


def fake_sysfs(root, caches):
    for i, (level, kind, size) in enumerate(caches):
        index = root / f"index{i}"
        index.mkdir()
        (index / "level").write_text(f"{level}\n")
        (index / "type").write_text(f"{kind}\n")
        (index / "size").write_text(f"{size}\n")
    return root


def test_cache_sizes_from_a_sysfs_tree(tmp_path):
    root = fake_sysfs(tmp_path, FAKE_CACHES)
    assert cache_bytes(1, root) == 48 * 1024  # the data cache, not the instruction cache beside it
    assert cache_bytes(2, root) == 2 * 1024 ** 2
    assert cache_bytes(3, root) == 105 * 1024 ** 2
    assert cache_bytes(4, root) is None


def test_unreadable_cache_entries_are_skipped(tmp_path):
    root = fake_sysfs(tmp_path, [(2, "Unified", "lots"), (3, "Unified", "32M"), (1, "Data", "48")])
    (root / "index3").mkdir()  # an entry without files
    assert cache_bytes(2, root) is None
    assert cache_bytes(3, root) == 32 * 1024 ** 2
    assert cache_bytes(1, root) == 48  # bare bytes
    assert cache_bytes(2, tmp_path / "absent") is None


@pytest.mark.parametrize("level", sorted(GETCONF_NAMES))
def test_cache_sizes_agree_with_the_c_library(level):
    """sysfs (what the FFF kernel and the records read) against glibc's getconf, where it answers."""
    getconf = shutil.which("getconf")
    answer = subprocess.run([getconf, GETCONF_NAMES[level]], capture_output=True, text=True).stdout.strip() \
        if getconf else ""
    if not answer.isdigit() or int(answer) <= 0:
        pytest.skip(f"the C library does not report the level-{level} cache size here")
    assert cache_bytes(level) == int(answer)


def test_describe_names_the_cpu_and_its_cores():
    machine = describe()
    assert machine["cpu"] and machine["cores"] >= 1
    assert set(machine) == {"cpu", "cores", "l1_bytes", "l2_bytes", "l3_bytes"}

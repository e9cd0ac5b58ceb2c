"""IdentityMemo: one build per set of live arrays, never a value built from other (or dead) arrays."""

import gc

import numpy as np

from mabert_hw.identity_memo import IdentityMemo


def test_same_arrays_build_once_and_other_arrays_build_again():
    memo, builds = IdentityMemo(), []
    a, b = np.ones(3), np.zeros(3)

    def build(tag):
        builds.append(tag)
        return tag

    assert memo.get((a, b), lambda: build("ab")) == "ab"
    assert memo.get((a, b), lambda: build("again")) == "ab"
    assert memo.get((b, a), lambda: build("ba")) == "ba"  # order is part of the key
    assert memo.get((a, b), lambda: build("depth 2"), 2) == "depth 2"  # and so are the extra values
    assert memo.get((a.copy(), b), lambda: build("copy")) == "copy"  # equal values, another array
    assert builds == ["ab", "ba", "depth 2", "copy"]


def test_an_entry_leaves_with_its_arrays():
    memo = IdentityMemo()
    a, b = np.ones(3), np.zeros(3)
    memo.get((a, b), lambda: "ab")
    kept = np.ones(3)
    memo.get((kept,), lambda: "kept")
    del a
    gc.collect()
    assert len(memo) == 1
    assert memo.get((kept,), lambda: "rebuilt") == "kept"

"""Values derived from weight arrays (re-packed, concatenated), remembered while those arrays live.

A forward pass reads the same weight arrays on every call, and re-deriving costs a full pass over
them. Entries are keyed by the arrays' identities and dropped when any of them is collected, so a
new array that reuses a dead one's id never meets a stale value. Arrays changed in place are not
noticed: derive again from edited copies.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np

Value = TypeVar("Value")


class IdentityMemo(Generic[Value]):
    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[tuple[weakref.ref, ...], Value]] = {}

    def get(self, arrays: tuple[np.ndarray, ...], build: Callable[[], Value], *extra: Hashable) -> Value:
        """build()'s value for these very arrays (and `extra`, e.g. a tree depth), built once."""
        key = tuple(id(a) for a in arrays) + extra
        hit = self._entries.get(key)
        if hit is not None and all(ref() is a for ref, a in zip(hit[0], arrays)):
            return hit[1]
        value = build()
        refs = tuple(weakref.ref(a, lambda _, key=key: self._entries.pop(key, None)) for a in arrays)
        self._entries[key] = (refs, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)

"""A compact set of path keys, for checks that must remember every member of an archive.

An archive may hold ten million members, and paths of up to 4 KiB: a ``set`` of
path strings grows without bound, and even a ``set`` of ints costs ~60 bytes a
member. :class:`KeySet` keeps 64-bit keys in one ``array('Q')`` with open
addressing (linear probing, at most 70 % full), 8 / 0.7 ≈ 11.5 bytes a key at
worst, and briefly 1.5 times that while it grows.

A key is a path's ``hash()``: keyed per process (Python randomizes string hashes),
so an archive cannot be crafted to collide. Two low bits are left to the caller
(:func:`path_key`'s ``kind``), so one table can tell several kinds of path apart.
A collision (odds ~n²/2⁶²) makes a lookup answer yes for a path never added: the
checks built on it may then refuse a valid archive, never pass an unsafe one.
"""

from __future__ import annotations

from array import array
from typing import Final

_MASK: Final = (1 << 64) - 1
_KIND_BITS: Final = 0b11
_MIN_SLOTS: Final = 1 << 10


def path_key(path: str, kind: int = 1) -> int:
    """The key of ``path`` with a ``kind`` of 1, 2 or 3 in its low bits (never 0,
    which marks an empty slot)."""
    if not 1 <= kind <= _KIND_BITS:
        raise ValueError(f"kind must be 1, 2 or 3, got {kind}")
    return (hash(path) & _MASK & ~_KIND_BITS) | kind


class KeySet:
    """A growing set of non-zero 64-bit keys (:func:`path_key`), ~11.5 bytes each."""

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * _MIN_SLOTS))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: int) -> bool:
        return self._slots[self._slot(self._slots, key)] == key

    def add(self, key: int) -> None:
        slot = self._slot(self._slots, key)
        if self._slots[slot] == key:
            return
        self._slots[slot] = key
        self._count += 1
        if 10 * self._count > 7 * len(self._slots):
            self._grow()

    def nbytes(self) -> int:
        """Memory held by the table."""
        return len(self._slots) * self._slots.itemsize

    @staticmethod
    def _slot(slots: array[int], key: int) -> int:
        """The slot holding ``key``, or the empty slot where it would go."""
        mask = len(slots) - 1
        # The low bits are the caller's kind: mix the high ones in.
        index = (key ^ (key >> 31)) >> 2 & mask
        while True:
            found = slots[index]
            if found == key or found == 0:
                return index
            index = (index + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        new = array("Q", bytes(16 * len(old)))
        for key in old:
            if key:
                new[self._slot(new, key)] = key
        self._slots = new

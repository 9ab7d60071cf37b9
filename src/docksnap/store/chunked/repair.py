"""Repair: rewrite the chunks verify found damaged from an intact copy elsewhere.

An intact copy is one whose stored bytes decode and hash to the chunk's name. It
is looked for in this store first (another pack holding the same chunk, a
version-1 ``chunks/`` object, the trash), then in each source store in order.
What is rewritten goes where the damaged snapshot's format reads it: a new pack
(indexed, under a write lease, like a save) for a snapshot of version 2 or
later, the ``chunks/`` object itself for a version-1 one. A damaged or vanished pack copy is
quarantined, so readers and writers skip it for the good one.

Nothing is deleted, and every write is idempotent: a repair cut short leaves the
store as verify found it, plus new copies that the next repair or gc sorts out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from docksnap.store.base import Repair
from docksnap.store.chunked.format import ChunkRef, chunk_key
from docksnap.store.chunked.leases import Lease
from docksnap.store.chunked.packs import PackBuilder, PackTable, SealedPack, pack_index_key
from docksnap.store.chunked.verify import DamagedChunk
from docksnap.store.objects import ObjectStore


@dataclass(frozen=True, slots=True)
class IntactCopy:
    """A chunk's verified stored bytes, where they were found, and whether they are
    already where a version-2 reader looks (an intact pack copy in this store)."""

    stored: bytes
    where: str
    in_pack: bool = False


class ChunkSource(Protocol):
    """Somewhere to look for an intact copy of a chunk (a chunked store)."""

    @property
    def url(self) -> str: ...

    def intact_copy(self, ref: ChunkRef, *, quarantine: bool) -> IntactCopy | None:
        """An intact copy of ``ref``, or None. ``quarantine``: record the damaged or
        missing pack copies met on the way. Transient faults raise
        :class:`~docksnap.errors.StoreUnavailableError`."""
        ...


class Repairer:
    """Rewrites ``damaged`` chunks into ``objects`` from ``here`` or ``sources``.

    Blocking: run on a thread. Holds one pack of rewritten chunks in memory.
    """

    def __init__(
        self,
        objects: ObjectStore,
        here: ChunkSource,
        sources: Sequence[ChunkSource],
        *,
        pack_size: int,
        lease_ttl: float,
    ) -> None:
        self._objects = objects
        self._here = here
        self._sources = sources
        self._pack_size = pack_size
        self._lease_ttl = lease_ttl

    def run(self, damaged: Sequence[DamagedChunk]) -> list[Repair]:
        repaired: list[Repair] = []
        with Lease(self._objects, "repair", ttl=self._lease_ttl) as lease:
            builder = PackBuilder(self._pack_size)
            tables: list[PackTable] = []
            for chunk in damaged:
                copy = self._find(chunk.ref)
                if copy is None:
                    continue
                versions = set(chunk.snapshots.values())
                if max(versions) >= 2 and not copy.in_pack:  # read from packs
                    digest = bytes.fromhex(chunk.ref.hash)
                    sealed = builder.add(digest, copy.stored, chunk.ref.length)
                    if sealed is not None:
                        tables.append(self._put(sealed))
                if 1 in versions:  # read from chunks/
                    self._objects.put(chunk_key(chunk.ref.hash), copy.stored)
                ids = tuple(sorted(chunk.snapshots))
                repaired.append(Repair(chunk.ref.hash, copy.where, ids))
            if (sealed := builder.seal()) is not None:
                tables.append(self._put(sealed))
            # Indexed last: a pack is visible to readers only once it is whole. The
            # lease keeps gc from taking the unindexed packs for a dead writer's.
            lease.check()
            for table in tables:
                self._objects.put(pack_index_key(table.pack_id), table.encode_index())
        return repaired

    def _find(self, ref: ChunkRef) -> IntactCopy | None:
        copy = self._here.intact_copy(ref, quarantine=True)
        for source in self._sources:
            if copy is not None:
                break
            found = source.intact_copy(ref, quarantine=False)
            if found is not None:
                copy = IntactCopy(found.stored, source.url)
        return copy

    def _put(self, sealed: SealedPack) -> PackTable:
        self._objects.put(sealed.key, sealed.data)
        return sealed.table

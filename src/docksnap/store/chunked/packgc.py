"""Garbage collection of packs (format 2): mark, wait out the writers, then delete.

A writer deduplicates against the chunk index it loaded when it started, so a
pack may be relied on by any save that is running. gc therefore never deletes a
pack in the run that finds it unneeded. It **marks** it (``pending/<pack>``),
then lists the live write leases; the pack may be deleted once every one of
those leases has ended, and only if the manifests read *after* that still do
not need it. Why that suffices (docs/FORMAT.md §11.6):

- a save whose lease was created before gc listed the leases is waited for; when
  it has ended it has committed (its manifest is then read) or failed;
- a save whose lease was created after that lists ``pending/`` after creating
  its lease, so it sees the mark and does not deduplicate against the pack.

Deleting needs no free space: a pack is dropped by deleting its index object
and then the pack (no copy, no move). Packs that are mostly garbage are
**repacked**: their live chunks are copied into a new pack (indexed) first, and
the old pack is marked like any other. Repacking writes; when the store is full
it fails, and gc goes on with the deletions (the space it frees is what the next
repack needs). ``repack_threshold=None`` turns it off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import msgspec

from docksnap.errors import StoreError
from docksnap.store.chunked.format import ChunkDecodeError, decode_chunk, hash_hex
from docksnap.store.chunked.gc import store_now
from docksnap.store.chunked.leases import DEFAULT_TTL, LEASES, live_leases, still_live
from docksnap.store.chunked.packs import (
    PACK_INDEX,
    PACKS,
    PENDING,
    QUARANTINE,
    ChunkIndex,
    LayeredIndex,
    PackBuilder,
    PackTable,
    SealedPack,
    load_tables,
    pack_id_of_key,
    pack_index_key,
    pack_key,
    pending_key,
    quarantined,
)
from docksnap.store.chunked.records import Records
from docksnap.store.objects import ObjectInfo, ObjectNotFoundError

REPACK_THRESHOLD: Final = 0.5
"""Repack a pack when at least this fraction of its stored bytes is unreferenced."""

log = logging.getLogger(__name__)


class PendingRecord(msgspec.Struct, frozen=True):
    """``pending/<pack>``: the leases that were live when gc marked the pack
    (None while gc has not listed them yet: then the pack waits for a later run)."""

    leases: list[str] | None


@dataclass(slots=True)
class PackTally:
    deleted: int = 0
    freed: int = 0
    young: int = 0
    repacked: int = 0
    waiting: int = 0


class PackCollector:
    """One pack gc pass. Runs on a thread that may block, under gc's own lease."""

    def __init__(
        self,
        records: Records,
        io_pool: ThreadPoolExecutor,
        *,
        lease_ttl: float = DEFAULT_TTL,
        repack_threshold: float | None = REPACK_THRESHOLD,
        pack_size: int,
    ) -> None:
        self._records = records
        self._objects = records.objects
        self._io = io_pool
        self._ttl = lease_ttl
        self._threshold = repack_threshold
        self._pack_size = pack_size

    def run(self, grace: float) -> PackTally:
        tally = PackTally()
        now = store_now(self._objects)
        referenced = self._referenced()
        tables = {t.pack_id: t for t in load_tables(self._objects, self._io)}
        packs = {pid: info for info in self._objects.list(PACKS) if (pid := _id(info))}
        pending = self._pending()
        damaged = quarantined(self._objects)
        everywhere = LayeredIndex(ChunkIndex(tables.values()), ChunkIndex(), damaged)

        def live(digest: bytes, pack_id: str) -> bool:
            """Referenced, and not a damaged copy of a chunk stored intact elsewhere."""
            if digest.hex() not in referenced:
                return False
            return (digest, pack_id) not in damaged or everywhere.find(digest) is None

        doomed: list[str] = []
        to_repack: list[PackTable] = []
        for pack_id, info in packs.items():
            if pack_id in pending:
                continue
            if info.mtime > now - grace:
                tally.young += 1
                continue
            table = tables.get(pack_id)
            if table is None:
                doomed.append(pack_id)  # never indexed: its writer failed or is running
                continue
            garbage = sum(stored for d, _, stored, _ in table if not live(d, pack_id))
            if garbage == _payload(table):
                doomed.append(pack_id)
            elif self._threshold is not None and garbage >= self._threshold * table.pack_size:
                to_repack.append(table)
        doomed.extend(self._repack(to_repack, live, tally))
        self._mark(doomed, pending)
        self._finish(pending, tally)
        self._drop_orphan_indexes(packs, tables, now - grace, tally)
        self._drop_dead_leases(tally)
        return tally

    def _drop_dead_leases(self, tally: PackTally) -> None:
        """Leases of writers that died: expired, or of a process gone from this host."""
        live = live_leases(self._objects, store_now(self._objects), self._ttl)
        for info in self._objects.list(LEASES):
            if info.key not in live:
                self._objects.delete(info.key)
                tally.deleted += 1

    # --- references ------------------------------------------------------------------

    def _referenced(self) -> set[str]:
        keys = self._records.manifest_keys()
        chunks: set[str] = set()
        for refs in self._io.map(self._records.refs, keys):
            if refs is not None:
                chunks.update(ref.hash for ref in refs.chunks)
        return chunks

    def _pending(self) -> dict[str, PendingRecord]:
        found: dict[str, PendingRecord] = {}
        for info in self._objects.list(PENDING):
            pack_id = _id(info)
            if pack_id is None:
                continue
            try:
                found[pack_id] = msgspec.json.decode(
                    self._objects.get(info.key), type=PendingRecord
                )
            except ObjectNotFoundError:
                continue
            except msgspec.DecodeError:
                found[pack_id] = PendingRecord(leases=None)
        return found

    # --- marking -----------------------------------------------------------------------

    def _mark(self, doomed: list[str], pending: dict[str, PendingRecord]) -> None:
        """Mark first, list leases second: a writer missing from the list has a lease
        younger than the mark, and so reads the mark before choosing what to reuse."""
        if not doomed:
            return
        unfenced = msgspec.json.encode(PendingRecord(leases=None))
        list(self._io.map(lambda p: self._objects.put(pending_key(p), unfenced), doomed))
        live = sorted(live_leases(self._objects, store_now(self._objects), self._ttl))
        fenced = PendingRecord(leases=live)
        encoded = msgspec.json.encode(fenced)
        list(self._io.map(lambda p: self._objects.put(pending_key(p), encoded), doomed))
        pending.update(dict.fromkeys(doomed, fenced))

    # --- deleting ---------------------------------------------------------------------------

    def _finish(self, pending: dict[str, PendingRecord], tally: PackTally) -> None:
        """Delete every marked pack whose fence has passed and that no manifest needs."""
        now = store_now(self._objects)
        ready: list[str] = []
        for pack_id, record in pending.items():
            if record.leases is None:
                # Marked by a gc that died before listing leases: fence it now.
                live = sorted(live_leases(self._objects, now, self._ttl))
                self._objects.put(
                    pending_key(pack_id), msgspec.json.encode(PendingRecord(leases=live))
                )
                if live:
                    tally.waiting += 1
                    continue
            elif still_live(self._objects, record.leases, now, self._ttl):
                tally.waiting += 1
                continue
            ready.append(pack_id)
        if not ready:
            return
        # Read after the fence: every save that could rely on these packs has ended.
        referenced = self._referenced()
        tables = {t.pack_id: t for t in load_tables(self._objects, self._io)}
        elsewhere = ChunkIndex(t for p, t in tables.items() if p not in pending)
        for pack_id in ready:
            table = tables.get(pack_id)
            needed = table is not None and any(
                d.hex() in referenced and elsewhere.find(d) is None for d, _, _, _ in table
            )
            if needed:
                self._objects.delete(pending_key(pack_id))  # rescued: usable again
                continue
            tally.freed += self._drop_pack(pack_id)
            tally.deleted += 1

    def _drop_pack(self, pack_id: str) -> int:
        """Index first (readers and writers stop finding it), then the pack, then the mark."""
        size = 0
        for info in self._objects.list(pack_key(pack_id)):
            size = info.size
        self._objects.delete(pack_index_key(pack_id))
        self._objects.delete(pack_key(pack_id))
        self._objects.delete(pending_key(pack_id))
        return size

    def _drop_orphan_indexes(
        self,
        packs: dict[str, ObjectInfo],
        tables: dict[str, PackTable],
        cutoff: float,
        tally: PackTally,
    ) -> None:
        """Index objects whose pack is gone (a gc killed between its two deletes)."""
        for info in self._objects.list(PACK_INDEX):
            pack_id = _id(info)
            if (
                pack_id is not None
                and pack_id not in packs
                and info.mtime <= cutoff
                and not self._objects.exists(pack_key(pack_id))
            ):
                self._objects.delete(info.key)
                tally.deleted += 1
        for prefix in (PENDING, QUARANTINE):
            for info in self._objects.list(prefix):
                pack_id = _id(info)
                if pack_id is not None and not self._objects.exists(pack_key(pack_id)):
                    self._objects.delete(info.key)

    # --- repacking ---------------------------------------------------------------------------

    def _repack(
        self, tables: list[PackTable], live: Callable[[bytes, str], bool], tally: PackTally
    ) -> list[str]:
        """Copy the live chunks of ``tables`` into new packs; the packs now redundant.

        New packs are stored and indexed before any old one is marked, so a chunk is
        always findable. A write failure (a full disk) ends repacking early.
        """
        builder = PackBuilder(self._pack_size)
        copied: list[str] = []
        try:
            for table in tables:
                if self._copy_live(table, live, builder):
                    copied.append(table.pack_id)
            if (sealed := builder.seal()) is not None:
                self._store(sealed)
        except StoreError:
            log.warning("repacking stopped; deleting unneeded packs still", exc_info=True)
            return []
        tally.repacked += len(copied)
        return copied

    def _copy_live(
        self, table: PackTable, live: Callable[[bytes, str], bool], builder: PackBuilder
    ) -> bool:
        """Add ``table``'s referenced chunks to ``builder``, each verified; False (keep
        the pack as it is) if the pack cannot be read or holds a damaged live chunk."""
        try:
            data = self._objects.get(pack_key(table.pack_id))
        except ObjectNotFoundError:
            return False
        view = memoryview(data)
        for digest, offset, stored, length in table:
            hexdigest = digest.hex()
            if not live(digest, table.pack_id):
                continue
            blob = view[offset : offset + stored]
            try:
                if hash_hex(decode_chunk(blob, length)) != hexdigest:
                    return False
            except ChunkDecodeError:
                return False
            sealed = builder.add(digest, bytes(blob), length)
            if sealed is not None:
                self._store(sealed)
        return True

    def _store(self, sealed: SealedPack) -> None:
        self._objects.put_if_absent(sealed.key, sealed.data)
        self._objects.put(pack_index_key(sealed.table.pack_id), sealed.table.encode_index())


def _id(info: ObjectInfo) -> str | None:
    return pack_id_of_key(info.key)


def _payload(table: PackTable) -> int:
    """Bytes of a pack that are chunk data (not its table and tail)."""
    return sum(stored for _, _, stored, _ in table)

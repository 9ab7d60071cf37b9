"""Copying one version-1 snapshot between two chunked stores, object by object.

(A version-2 snapshot is copied as a stream: the target re-packs its chunks.)

Only the chunks the target lacks travel, each verified against its BLAKE3 name
on the way (a damaged source chunk raises :class:`SnapshotCorruptError` and the
copy commits nothing). The write order is a save's: chunks, then the index,
then the manifest with ``put_if_absent`` as the one commit point, so a copy cut
short at any step leaves only orphans for the target's gc. The manifest is
copied byte for byte: the snapshot keeps its id, creation time and digest.

Lives in this package because it writes the chunked format directly; the record
steps it shares with a save (config creation, manifest decoding, the index
check, the re-check of deduplicated chunks after a long write) are
:class:`~docksnap.store.chunked.records.Records`'.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from docksnap.errors import StoreError
from docksnap.store.chunked.format import ChunkRef, Manifest, chunk_key
from docksnap.store.chunked.leases import Lease
from docksnap.store.chunked.packs import (
    IndexCache,
    PackBuilder,
    PackTable,
    SealedPack,
    pack_index_key,
    pending_packs,
)
from docksnap.store.chunked.reader import PIECE_SIZE, ChunkFetcher, PackFetcher, group_chunks
from docksnap.store.chunked.records import Records


@dataclass(frozen=True, slots=True)
class ChunkCopyStats:
    """What a copy moved: chunks written to the target, their stored bytes, and
    chunks the target already had."""

    chunks_copied: int
    bytes_copied: int
    chunks_present: int


class ChunkCopier:
    """Copies ``snapshot_id`` from ``source`` to ``target``. Blocking: run on a thread.

    ``workers`` chunk transfers run at once; each holds one chunk in memory.
    ``max_write_seconds`` is the target's bound on relying on chunks it already
    had (docs/FORMAT.md, "Enforcing (A)").
    """

    def __init__(
        self,
        source: Records,
        target: Records,
        snapshot_id: str,
        *,
        max_write_seconds: float,
        target_version: int,
        workers: int = 16,
    ) -> None:
        self._source = source
        self._target = target
        self._id = snapshot_id
        self._max_write_seconds = max_write_seconds
        self._target_version = target_version
        self._workers = max(1, workers)
        self._fetcher = ChunkFetcher(source.objects, snapshot_id)

    def run(self) -> ChunkCopyStats:
        """Copy, or do nothing if the target already holds this exact snapshot.

        Raises SnapshotNotFoundError (not in the source), SnapshotCorruptError (a
        source object fails verification), StoreError (the target holds a
        different snapshot under this id), StoreFormatError (either store's format
        is unknown).
        """
        raw, manifest = self._source.manifest_with_bytes(self._id, Manifest)
        if self._target_holds(raw):
            return ChunkCopyStats(0, 0, len({ref.hash for ref in manifest.chunks}))
        if manifest.version != 1:
            raise StoreError(self._source.url, "chunk copies move version-1 snapshots only")
        self._target.config_for_write(self._target_version)
        started = time.monotonic()
        stats, present = self._copy_chunks(manifest.chunks)
        self._copy_index(manifest)
        if time.monotonic() - started > self._max_write_seconds:
            # The target's gc may have trashed a chunk we found there meanwhile.
            self._target.recheck_deduplicated(self._id, present, self._max_write_seconds)
        self._copy_use_record()
        if not self._target.commit_stored(self._id, raw):
            self._target_holds(raw)  # a concurrent copy of the same snapshot won
        return stats

    # --- manifest ------------------------------------------------------------------------

    def _target_holds(self, raw: bytes) -> bool:
        return _holds(self._target, self._id, raw)

    # --- chunks ----------------------------------------------------------------------------

    def _copy_chunks(self, chunks: tuple[ChunkRef, ...]) -> tuple[ChunkCopyStats, set[str]]:
        unique = list({ref.hash: ref for ref in chunks}.values())
        with ThreadPoolExecutor(self._workers, thread_name_prefix="docksnap-copy") as pool:
            futures = [pool.submit(self._copy_chunk, ref) for ref in unique]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()  # a failure ends the copy: queued chunks are not fetched
            for future in done:
                future.result()  # raises that failure
            results = [future.result() for future in futures]
        present = {ref.hash for ref, copied in zip(unique, results, strict=True) if copied < 0}
        copied = [size for size in results if size >= 0]
        return ChunkCopyStats(len(copied), sum(copied), len(present)), present

    def _copy_chunk(self, ref: ChunkRef) -> int:
        """Stored bytes written for ``ref``, or -1 when the target already had it."""
        key = chunk_key(ref.hash)
        if self._target.objects.exists(key):
            return -1
        stored = self._fetcher.fetch_stored(ref)
        # put_if_absent: a concurrent save on the target may be writing the same chunk.
        self._target.objects.put_if_absent(key, stored)
        return len(stored)

    # --- index and use record -------------------------------------------------------------

    def _copy_index(self, manifest: Manifest) -> None:
        ref = manifest.index
        if ref is None:
            return
        stored, _ = self._source.index_bytes(self._id, ref)
        self._target.put_index(self._id, stored, ref.entries)

    def _copy_use_record(self) -> None:
        """Carry the last-use time over, so a TTL keeps counting from the real last use."""
        record = self._source.use_record_bytes(self._id)
        if record is not None:
            self._target.put_use_record_bytes(self._id, record)


class PackCopier:
    """Copies a snapshot into a format-2 target, moving only the chunks it lacks.

    The source may be either format (its chunks are fetched and verified through
    ``fetcher``); the chunks travel in their stored encoding into new packs of the
    target. Write order is a save's, under a write lease on the target: packs,
    their indexes, the tar index, then the source's manifest bytes with
    ``put_if_absent``. Blocking: run on a thread.
    """

    def __init__(
        self,
        source: Records,
        fetcher: PackFetcher | ChunkFetcher,
        target: Records,
        target_index: IndexCache,
        snapshot_id: str,
        *,
        pack_size: int,
        lease_ttl: float,
        pool: ThreadPoolExecutor,
    ) -> None:
        self._source = source
        self._fetcher = fetcher
        self._target = target
        self._index = target_index
        self._id = snapshot_id
        self._pack_size = pack_size
        self._lease_ttl = lease_ttl
        self._pool = pool
        self._created: list[str] = []

    def run(self) -> ChunkCopyStats:
        """As :meth:`ChunkCopier.run`."""
        raw, manifest = self._source.manifest_with_bytes(self._id, Manifest)
        if _holds(self._target, self._id, raw):
            return ChunkCopyStats(0, 0, len({ref.hash for ref in manifest.chunks}))
        self._target.config_for_write(2)
        objects = self._target.objects
        with Lease(objects, "copy", ttl=self._lease_ttl) as lease:
            try:
                tables, stats = self._copy_chunks(manifest)
                lease.check()
            except BaseException:
                for key in self._created:
                    with contextlib.suppress(StoreError):
                        objects.delete(key)
                raise
            for table in tables:
                objects.put(pack_index_key(table.pack_id), table.encode_index())
            if manifest.index is not None:
                stored, _ = self._source.index_bytes(self._id, manifest.index)
                self._target.put_index(self._id, stored, manifest.index.entries)
            record = self._source.use_record_bytes(self._id)
            if record is not None:
                self._target.put_use_record_bytes(self._id, record)
            lease.check()
            if not self._target.commit_stored(self._id, raw):
                _holds(self._target, self._id, raw)
        return stats

    def _copy_chunks(self, manifest: Manifest) -> tuple[list[PackTable], ChunkCopyStats]:
        # gc's marks before the index, as a save reads them (store._pack_target,
        # docs/FORMAT.md §11.6): a pack gc drops between the two reads is then
        # gone from the index, not in it without its mark.
        excluded = pending_packs(self._target.objects)
        index = self._index.refresh()
        unique = list({ref.hash: ref for ref in manifest.chunks}.values())
        missing = [r for r in unique if index.find(bytes.fromhex(r.hash), excluded) is None]
        builder = PackBuilder(self._pack_size)
        tables: list[PackTable] = []
        copied_bytes = 0
        groups = list(group_chunks(missing, PIECE_SIZE))
        for group, blobs in zip(groups, self._pool.map(self._stored, groups), strict=True):
            for ref, blob in zip(group, blobs, strict=True):
                copied_bytes += len(blob)
                sealed = builder.add(bytes.fromhex(ref.hash), bytes(blob), ref.length)
                if sealed is not None:
                    tables.append(self._put(sealed))
        if (sealed := builder.seal()) is not None:
            tables.append(self._put(sealed))
        stats = ChunkCopyStats(len(missing), copied_bytes, len(unique) - len(missing))
        return tables, stats

    def _stored(self, group: Sequence[ChunkRef]) -> list[bytes | memoryview]:
        if isinstance(self._fetcher, PackFetcher):
            return self._fetcher.fetch_many(group, stored=True)
        return [self._fetcher.fetch_stored(ref) for ref in group]

    def _put(self, sealed: SealedPack) -> PackTable:
        if self._target.objects.put_if_absent(sealed.key, sealed.data):
            self._created.append(sealed.key)
        return sealed.table


def _holds(target: Records, snapshot_id: str, raw: bytes) -> bool:
    """True if ``target`` has this manifest; StoreError if it has another one."""
    existing = target.stored_manifest(snapshot_id)
    if existing is None:
        return False
    if existing != raw:
        raise StoreError(
            target.url,
            f"snapshot {snapshot_id} already exists here with different content; not copied",
        )
    return True

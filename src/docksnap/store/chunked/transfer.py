"""Copying one snapshot between two chunked stores, object by object.

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

import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from docksnap.errors import StoreError
from docksnap.store.chunked.format import ChunkRef, Manifest, chunk_key
from docksnap.store.chunked.reader import ChunkFetcher
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
        workers: int = 16,
    ) -> None:
        self._source = source
        self._target = target
        self._id = snapshot_id
        self._max_write_seconds = max_write_seconds
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
        self._target.config_for_write()
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
        """True if the target has this manifest; StoreError if it has another one."""
        existing = self._target.stored_manifest(self._id)
        if existing is None:
            return False
        if existing != raw:
            raise StoreError(
                self._target.url,
                f"snapshot {self._id} already exists here with different content; not copied",
            )
        return True

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

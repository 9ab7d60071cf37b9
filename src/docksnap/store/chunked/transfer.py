"""Copying one snapshot between two chunked stores, object by object.

Only the chunks the target lacks travel, each verified against its BLAKE3 name
on the way (a damaged source chunk raises :class:`SnapshotCorruptError` and the
copy commits nothing). The write order is a save's: chunks, then the index,
then the manifest with ``put_if_absent`` as the one commit point, so a copy cut
short at any step leaves only orphans for the target's gc. The manifest is
copied byte for byte: the snapshot keeps its id, creation time and digest.

Lives in this package because it writes the chunked format directly and relies
on the same internal steps as :meth:`ChunkedStore.save` (config creation, the
re-check of deduplicated chunks after a long write).
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from docksnap.errors import SnapshotCorruptError, SnapshotNotFoundError, StoreError
from docksnap.store.chunked.format import (
    ChunkRef,
    Manifest,
    chunk_key,
    hash_hex,
    is_snapshot_id,
    manifest_key,
    used_key,
)
from docksnap.store.chunked.reader import ChunkFetcher
from docksnap.store.chunked.store import ChunkedStore
from docksnap.store.objects import ObjectNotFoundError


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
    """

    def __init__(
        self, source: ChunkedStore, target: ChunkedStore, snapshot_id: str, *, workers: int = 16
    ) -> None:
        self._source = source
        self._target = target
        self._id = snapshot_id
        self._workers = max(1, workers)
        self._fetcher = ChunkFetcher(source.objects, snapshot_id)

    def run(self) -> ChunkCopyStats:
        """Copy, or do nothing if the target already holds this exact snapshot.

        Raises SnapshotNotFoundError (not in the source), SnapshotCorruptError (a
        source object fails verification), StoreError (the target holds a
        different snapshot under this id), StoreFormatError (either store's format
        is unknown).
        """
        raw, manifest = self._source_manifest()
        if self._target_holds(raw):
            return ChunkCopyStats(0, 0, len({ref.hash for ref in manifest.chunks}))
        self._target._config_for_write()
        started = time.monotonic()
        stats, present = self._copy_chunks(manifest.chunks)
        self._copy_index(manifest)
        if time.monotonic() - started > self._target._max_write_seconds:
            # The target's gc may have trashed a chunk we found there meanwhile.
            self._target._recheck_deduplicated(self._id, frozenset(present))
        self._copy_use_record()
        if not self._target.objects.put_if_absent(manifest_key(self._id), raw):
            self._target_holds(raw)  # a concurrent copy of the same snapshot won
        return stats

    # --- manifest ------------------------------------------------------------------------

    def _source_manifest(self) -> tuple[bytes, Manifest]:
        self._source._read_config()  # an unknown format raises StoreFormatError
        key = manifest_key(self._id)
        if not is_snapshot_id(self._id):
            raise SnapshotNotFoundError(self._id, self._source.url)
        try:
            raw = self._source.objects.get(key)
        except ObjectNotFoundError:
            raise SnapshotNotFoundError(self._id, self._source.url) from None
        return raw, self._source._decode_manifest(self._id, key, raw, Manifest)

    def _target_holds(self, raw: bytes) -> bool:
        """True if the target has this manifest; StoreError if it has another one."""
        try:
            existing = self._target.objects.get(manifest_key(self._id))
        except ObjectNotFoundError:
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
        try:
            stored = self._source.objects.get(ref.key)
        except ObjectNotFoundError:
            raise SnapshotCorruptError(self._id, f"index {ref.key} is missing") from None
        actual = f"blake3:{hash_hex(stored)}"
        if actual != ref.digest:
            detail = f"index {ref.key} hashes to {actual}, manifest says {ref.digest}"
            raise SnapshotCorruptError(self._id, detail)
        self._target.objects.put(ref.key, stored)

    def _copy_use_record(self) -> None:
        """Carry the last-use time over, so a TTL keeps counting from the real last use."""
        try:
            record = self._source.objects.get(used_key(self._id))
        except ObjectNotFoundError:
            return
        self._target.objects.put(used_key(self._id), record)

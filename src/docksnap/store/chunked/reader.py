"""Reading a snapshot back: fetch, decode and verify chunks ahead of the consumer.

Every chunk is checked against its BLAKE3 name before any of its bytes are
yielded, so a reader never sees wrong data: it sees :class:`SnapshotCorruptError`
instead. Chunks are fetched in groups of about 1 MiB (small chunks coalesced), a
few groups ahead, on the store's io pool; the event loop only awaits finished
groups, so it never blocks on disk, network, zstd or hashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from docksnap.errors import SnapshotCorruptError
from docksnap.store.chunked.format import (
    ChunkDecodeError,
    ChunkRef,
    Manifest,
    chunk_key,
    decode_chunk,
    hash_hex,
    trash_key,
)
from docksnap.store.chunked.packs import IndexCache, LayeredIndex, Location, pack_key
from docksnap.store.objects import ObjectNotFoundError, ObjectStore

PIECE_SIZE = 1024 * 1024
READ_AHEAD = 8

log = logging.getLogger(__name__)


class ChunkFetcher:
    """Gets one snapshot's chunks, verified. Thread-safe (no state but its inputs).

    A chunk missing under ``chunks/`` is looked for under ``trash/``, where gc
    parks unreferenced chunks before purging them; one found there is verified and
    put back under ``chunks/`` so later saves deduplicate against it again.
    """

    def __init__(self, objects: ObjectStore, snapshot_id: str) -> None:
        self._objects = objects
        self._snapshot_id = snapshot_id

    def fetch(self, ref: ChunkRef) -> bytes | memoryview:
        """The chunk's bytes; :class:`SnapshotCorruptError` if missing or damaged.

        Other :class:`~docksnap.errors.StoreError` (I/O faults) pass through: they
        say nothing about the data and may be worth a retry.
        """
        return self._fetch(ref)[1]

    def fetch_stored(self, ref: ChunkRef) -> bytes:
        """The chunk's stored (encoded) bytes, verified as :meth:`fetch` does (for copies)."""
        return self._fetch(ref)[0]

    def _fetch(self, ref: ChunkRef) -> tuple[bytes, bytes | memoryview]:
        key = chunk_key(ref.hash)
        try:
            stored = self._objects.get(key)
            from_trash = False
        except ObjectNotFoundError:
            stored = self._from_trash(ref)
            from_trash = True
        data = _verified(self._snapshot_id, ref, stored, trash_key(ref.hash) if from_trash else key)
        if from_trash:
            self._restore(key, stored)
        return stored, data

    def fetch_group(self, refs: Sequence[ChunkRef]) -> bytes:
        """Several consecutive chunks joined: one piece of the stream."""
        return b"".join([self.fetch(ref) for ref in refs])

    def _from_trash(self, ref: ChunkRef) -> bytes:
        try:
            return self._objects.get(trash_key(ref.hash))
        except ObjectNotFoundError:
            raise _corrupt(
                self._snapshot_id,
                ref,
                f"is missing (neither {chunk_key(ref.hash)} nor {trash_key(ref.hash)})",
            ) from None

    def _restore(self, key: str, stored: bytes) -> None:
        # Best effort: the bytes were verified and are returned either way; a chunk
        # left only in the trash is rescued by the next gc, which sees it referenced.
        try:
            self._objects.put_if_absent(key, stored)
        except Exception:
            log.warning("could not move chunk %s back from the trash", key, exc_info=True)


class PackFetcher:
    """Gets one format-2 snapshot's chunks from packs, verified. Thread-safe.

    Consecutive chunks stored back to back in one pack are read with one ranged
    GET. A chunk the index does not know, or a pack that vanished (gc repacked it
    after our index was loaded), makes the index reload once before the chunk is
    declared missing.
    """

    def __init__(self, objects: ObjectStore, cache: IndexCache, snapshot_id: str) -> None:
        self._objects = objects
        self._cache = cache
        self._snapshot_id = snapshot_id

    def fetch(self, ref: ChunkRef) -> bytes | memoryview:
        return self.fetch_many([ref])[0]

    def fetch_group(self, refs: Sequence[ChunkRef]) -> bytes:
        return b"".join(self.fetch_many(refs))

    def fetch_many(
        self, refs: Sequence[ChunkRef], *, stored: bool = False
    ) -> list[bytes | memoryview]:
        """The chunks' bytes, each verified; with ``stored``, their encoded form
        (verified all the same: for copies that keep the encoding)."""
        try:
            return self._fetch_many(refs, self._cache.current(), stored=stored)
        except _Stale:
            return self._fetch_many(refs, self._cache.refresh(), stored=stored, final=True)

    def _fetch_many(
        self, refs: Sequence[ChunkRef], index: LayeredIndex, *, stored: bool, final: bool = False
    ) -> list[bytes | memoryview]:
        located: list[tuple[ChunkRef, Location]] = []
        for ref in refs:
            digest = bytes.fromhex(ref.hash)
            where = index.find(digest)
            if where is None:
                if not final:
                    raise _Stale
                damaged = index.recent.find(digest) or index.base.find(digest)
                if damaged is not None:
                    detail = f"is damaged in pack {damaged.pack_id} (quarantined by verify)"
                    raise self._corrupt(ref, detail)
                raise self._corrupt(ref, "is in no pack of the store's index")
            located.append((ref, where))
        out: list[bytes | memoryview] = []
        for run in _runs(located):
            pack_id = run[0][1].pack_id
            start = run[0][1].offset
            end = run[-1][1].offset + run[-1][1].stored
            try:
                span = self._objects.get_range(pack_key(pack_id), start, end - start)
            except ObjectNotFoundError:
                if not final:
                    raise _Stale from None
                raise self._corrupt(run[0][0], f"is in pack {pack_id}, which is missing") from None
            view = memoryview(span)
            for ref, where in run:
                blob = view[where.offset - start : where.offset - start + where.stored]
                data = _verified(self._snapshot_id, ref, blob, f"pack {pack_id}")
                out.append(blob if stored else data)
        return out

    def _corrupt(self, ref: ChunkRef, detail: str) -> SnapshotCorruptError:
        return _corrupt(self._snapshot_id, ref, detail)


def _verified(
    snapshot_id: str, ref: ChunkRef, stored: bytes | memoryview, where: str
) -> bytes | memoryview:
    """The chunk decoded from ``stored`` and checked against its name; else
    :class:`SnapshotCorruptError` saying what is wrong and ``where`` it was read."""
    try:
        data = decode_chunk(stored, ref.length)
    except ChunkDecodeError as exc:
        raise _corrupt(snapshot_id, ref, f"is damaged ({where}): {exc}") from None
    actual = hash_hex(data)
    if actual != ref.hash:
        raise _corrupt(
            snapshot_id, ref, f"fails verification ({where}): its bytes hash to {actual}"
        )
    return data


def _corrupt(snapshot_id: str, ref: ChunkRef, detail: str) -> SnapshotCorruptError:
    return SnapshotCorruptError(snapshot_id, f"chunk {ref.hash} {detail}")


class _Stale(Exception):
    """The loaded index may be out of date: reload it and try once more."""


def _runs(
    located: Sequence[tuple[ChunkRef, Location]],
) -> Iterator[list[tuple[ChunkRef, Location]]]:
    """Maximal runs of chunks stored back to back in one pack (one ranged GET each)."""
    run: list[tuple[ChunkRef, Location]] = []
    for item in located:
        if run:
            last = run[-1][1]
            where = item[1]
            if where.pack_id != last.pack_id or where.offset != last.offset + last.stored:
                yield run
                run = []
        run.append(item)
    if run:
        yield run


class Fetcher(Protocol):
    """What reading a stream needs: one chunk, or a group of consecutive ones."""

    def fetch(self, ref: ChunkRef) -> bytes | memoryview: ...

    def fetch_group(self, refs: Sequence[ChunkRef]) -> bytes: ...


def group_chunks(chunks: Sequence[ChunkRef], piece_size: int) -> Iterator[Sequence[ChunkRef]]:
    """Consecutive runs of chunks of at least ``piece_size`` bytes (the last may be less)."""
    start = total = 0
    for end, ref in enumerate(chunks, 1):
        total += ref.length
        if total >= piece_size:
            yield chunks[start:end]
            start, total = end, 0
    if start < len(chunks):
        yield chunks[start:]


class ChunkedTarReader:
    """A snapshot's tar stream, verified, as pieces of about ``piece_size`` bytes.

    Implements :class:`~docksnap.store.base.TarReader`. Each iteration reads the
    stream from the start. :meth:`close` cancels whatever is still prefetched.
    """

    def __init__(
        self,
        manifest: Manifest,
        fetcher: Fetcher,
        pool: ThreadPoolExecutor,
        *,
        piece_size: int = PIECE_SIZE,
        read_ahead: int = READ_AHEAD,
    ) -> None:
        self._manifest = manifest
        self._fetcher = fetcher
        self._pool = pool
        self._piece_size = piece_size
        self._read_ahead = max(1, read_ahead)
        self._outstanding: set[Future[bytes]] = set()

    @property
    def size(self) -> int:
        return self._manifest.size

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        groups = group_chunks(self._manifest.chunks, self._piece_size)
        window: deque[Future[bytes]] = deque()
        try:
            self._refill(window, groups)
            while window:
                future = window.popleft()
                piece = await asyncio.wrap_future(future)
                self._outstanding.discard(future)
                self._refill(window, groups)
                yield piece
        finally:
            for future in window:
                future.cancel()
                self._outstanding.discard(future)

    def _refill(self, window: deque[Future[bytes]], groups: Iterator[Sequence[ChunkRef]]) -> None:
        while len(window) < self._read_ahead:
            group = next(groups, None)
            if group is None:
                return
            future = self._pool.submit(self._fetcher.fetch_group, group)
            self._outstanding.add(future)
            window.append(future)

    def close(self) -> None:
        """Cancel prefetches not yet started; running ones finish and are dropped."""
        for future in list(self._outstanding):
            future.cancel()
            with contextlib.suppress(Exception):
                if future.done() and not future.cancelled():
                    future.exception()  # mark retrieved: no "never retrieved" log
        self._outstanding.clear()

"""Reading a snapshot back: fetch, decode and verify chunks ahead of the consumer.

Every chunk is checked against its BLAKE3 name before any of its bytes are
yielded, so a reader never sees wrong data: it sees :class:`SnapshotCorruptError`
instead. A stream is read in groups of consecutive chunks of about
:data:`STREAM_PIECE` bytes, a few groups ahead, on the store's io pool: each
group with the fewest ranged reads that cover it (:func:`_spans`), decoded and
verified on that thread. The event loop only awaits finished groups, so it never
blocks on disk, network, zstd or hashing, and it gets few, large pieces to hand
on. What is held is bounded: at most ``read_ahead`` groups, each with its reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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

PIECE_SIZE = 1024 * 1024  # groups of verify and copy
READ_AHEAD = 8
# A restore's groups: larger, so that fewer requests and fewer hand-offs carry the
# stream (large-files over S3: 4 MiB x 4 read 500 MB at 250 MB/s, 1 MiB x 8 at
# 174 MB/s; bench/profile-restore.txt). 16 MiB held, decoded, at most.
STREAM_PIECE = 4 * 1024 * 1024
STREAM_READ_AHEAD = 4
# Two chunks of one pack at most this far apart are read with one request.
MAX_GAP = 256 * 1024

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
        out: list[bytes | memoryview] = [b""] * len(located)
        for span in _spans(located):
            pack_id = span.pack_id
            try:
                data = self._objects.get_range(pack_key(pack_id), span.start, span.end - span.start)
            except ObjectNotFoundError:
                if not final:
                    raise _Stale from None
                first = located[span.members[0]][0]
                raise self._corrupt(first, f"is in pack {pack_id}, which is missing") from None
            view = memoryview(data)
            for position in span.members:
                ref, where = located[position]
                offset = where.offset - span.start
                blob = view[offset : offset + where.stored]
                decoded = _verified(self._snapshot_id, ref, blob, f"pack {pack_id}")
                out[position] = blob if stored else decoded
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


@dataclass(frozen=True, slots=True)
class _Span:
    """One ranged read: ``[start, end)`` of a pack, holding the chunks at ``members``
    (positions in the group, in offset order)."""

    pack_id: str
    start: int
    end: int
    members: tuple[int, ...]


def _spans(located: Sequence[tuple[ChunkRef, Location]]) -> list[_Span]:
    """The fewest ranged reads that cover a group's chunks.

    The writer adds chunks to packs in the order its parallel workers finish them,
    so a stretch of the stream lies in a few stretches of a pack, not in stream
    order (large-files: 651 breaks of order among 6,845 chunks). Sorting the group
    by place and merging what lies at most :data:`MAX_GAP` apart reads each stretch
    once. The gap's bytes are read and dropped, never decoded: cheaper than another
    request (large-files over S3, 4 MiB groups read one after another: 465 reads
    and 3.3 s with a 64 KiB gap, 334 and 2.7 s with 256 KiB).
    """
    order = sorted(range(len(located)), key=lambda i: (located[i][1].pack_id, located[i][1].offset))
    spans: list[_Span] = []
    pack_id, start, end, members = "", 0, 0, list[int]()
    for position in order:
        where = located[position][1]
        if members and where.pack_id == pack_id and where.offset <= end + MAX_GAP:
            end = max(end, where.offset + where.stored)
            members.append(position)
            continue
        if members:
            spans.append(_Span(pack_id, start, end, tuple(members)))
        pack_id, start, end = where.pack_id, where.offset, where.offset + where.stored
        members = [position]
    if members:
        spans.append(_Span(pack_id, start, end, tuple(members)))
    return spans


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
    stream from the start. :meth:`prefetch` starts the first iteration's reads
    before anyone iterates (while the caller prepares the stream's destination).
    :meth:`close` cancels whatever is still prefetched.
    """

    def __init__(
        self,
        manifest: Manifest,
        fetcher: Fetcher,
        pool: ThreadPoolExecutor,
        *,
        piece_size: int = STREAM_PIECE,
        read_ahead: int = STREAM_READ_AHEAD,
    ) -> None:
        self._manifest = manifest
        self._fetcher = fetcher
        self._pool = pool
        self._piece_size = piece_size
        self._read_ahead = max(1, read_ahead)
        self._outstanding: set[Future[bytes]] = set()
        self._primed: tuple[deque[Future[bytes]], Iterator[Sequence[ChunkRef]]] | None = None

    def prefetch(self) -> None:
        """Start reading the first ``read_ahead`` groups now (once: again does nothing).

        The next iteration takes them over; :meth:`close` cancels them if none comes.
        """
        if self._primed is None:
            window: deque[Future[bytes]] = deque()
            groups = group_chunks(self._manifest.chunks, self._piece_size)
            self._refill(window, groups)
            self._primed = window, groups

    @property
    def size(self) -> int:
        return self._manifest.size

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        if self._primed is not None:
            (window, groups), self._primed = self._primed, None
        else:
            groups = group_chunks(self._manifest.chunks, self._piece_size)
            window = deque()
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
        self._primed = None
        for future in list(self._outstanding):
            future.cancel()
            with contextlib.suppress(Exception):
                if future.done() and not future.cancelled():
                    future.exception()  # mark retrieved: no "never retrieved" log
        self._outstanding.clear()

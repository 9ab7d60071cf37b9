"""The save pipeline: tar stream → chunks stored once, with bounded memory.

Stages and threads::

    event loop        batches of pieces (>= 1 MiB) ──► inbox (at most `batch_limit`)
    cutter thread     tar index, FastCDC (per region, or whole-stream with its
                      BLAKE3) → 4 MiB segments
    cpu pool          per segment: BLAKE3 each chunk, skip known ones, zstd the rest
    io pool           put_if_absent of each new chunk (at most `put_limit` pending)

One cutter thread per save owns everything that is sequential by nature (the
stream digest, the tar parser, the chunker state). The pools are the store's.
Each stage waits for the next through a bounded slot count, so memory in flight
is bounded whatever the stream's size: batches + segments + pending puts.

Nothing here commits anything: the store writes the manifest after
:meth:`StreamWriter.finish` returns, so chunks written by a save that fails are
orphans for gc, never part of a visible snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Final

import blake3

from docksnap.errors import StoreError
from docksnap.store.chunked.cutter import RegionCutter, RegionSegment, Reused, Segment, StreamCutter
from docksnap.store.chunked.format import (
    ChunkerParams,
    ChunkRef,
    chunk_key,
    chunk_list_digest,
    encode_chunk,
    hash_hex,
)
from docksnap.store.chunked.packs import (
    LayeredIndex,
    PackBuffers,
    PackBuilder,
    PackTable,
    SealedPack,
)
from docksnap.store.chunked.spool import IndexSpool
from docksnap.store.objects import ObjectStore
from docksnap.tarstream import MemberIndexer, TarIndexer

SEGMENT_SIZE: Final = 4 * 1024 * 1024
BATCH_SIZE: Final = 1024 * 1024
PACK_LIMIT: Final = 2  # sealed packs waiting for their put
_SPILL_EVERY: Final = 1024  # tar entries held before they go to the spool
_POLL: Final = 0.1  # seconds between checks for an abort while waiting for a slot


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_END = _Signal("END")
_ABORT = _Signal("ABORT")


class SaveAborted(Exception):
    """The save was abandoned by its caller (the stream raised or was cancelled)."""


@dataclass(frozen=True, slots=True)
class Pools:
    """The store's shared resources a pipeline runs on."""

    objects: ObjectStore
    cpu: ThreadPoolExecutor
    io: ThreadPoolExecutor
    buffers: BufferCache
    packs: PackBuffers


@dataclass(frozen=True, slots=True)
class PackTarget:
    """How a format-2 save stores chunks: the store's chunk index it deduplicates
    against (minus packs gc has marked), and the builder its new chunks go to."""

    index: LayeredIndex
    excluded: frozenset[str]
    builder: PackBuilder


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What one stream became: its chunks in order, digest, size, index, and counts.

    ``deduped`` are chunks this save did not write because they were already
    stored: the store re-checks them before commit if the save took longer than
    the gc grace bound (see docs/FORMAT.md, "Garbage collection").
    """

    chunks: tuple[ChunkRef, ...]
    size: int
    digest: str
    entries: IndexSpool
    new_chunks: int
    stored_bytes: int
    deduped: frozenset[str] = field(default_factory=frozenset)
    packs: tuple[PackTable, ...] = ()


class BufferCache:
    """Reuses segment buffers across saves: fresh pages are slow on this VM (§2.1)."""

    def __init__(self, size: int, keep: int) -> None:
        self._size = size
        self._keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self._size)

    def give_back(self, buffer: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep and len(buffer) == self._size:
                self._free.append(buffer)


class StreamWriter:
    """Runs one save's pipeline. Use: start, send batches, then finish or abort.

    ``send``/``finish``/``abort`` are called from the event loop; everything else
    runs on the cutter thread or the pools. The first error anywhere is sticky:
    later ``send`` calls and ``finish`` raise it, and the pipeline stops writing.
    """

    def __init__(
        self,
        pools: Pools,
        params: ChunkerParams,
        *,
        batch_limit: int = 8,
        segment_limit: int = 4,
        put_limit: int = 64,
        packs: PackTarget | None = None,
        pack_limit: int = PACK_LIMIT,
        per_file: bool = False,
    ) -> None:
        if per_file and packs is None:
            raise ValueError("per-file chunking writes packs only (format version 2)")
        self._pools = pools
        self._params = params
        self._per_file = per_file
        self._packs = packs
        self._pack_slots = threading.Semaphore(pack_limit)
        self._written: list[PackTable] = []
        self._created: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue[list[bytes | Reused] | _Signal] = queue.SimpleQueue()
        self._credits = asyncio.Semaphore(batch_limit)
        self._segment_slots = threading.Semaphore(segment_limit)
        self._put_slots = threading.Semaphore(put_limit)
        self._segments: list[Future[list[ChunkRef]]] = []
        self._lock = threading.Lock()
        self._puts_idle = threading.Condition(self._lock)
        self._pending_puts = 0
        self._new_chunks = 0
        self._stored_bytes = 0
        self._claimed: set[str] = set()
        self._deduped: set[str] = set()
        self._failure: BaseException | None = None
        self._stop = threading.Event()
        self._digest = blake3.blake3()
        self._indexer = MemberIndexer() if per_file else TarIndexer()
        self._spool = IndexSpool()
        self._size = 0
        self._inbox_closed = False
        self._done: Future[StreamResult] = Future()
        self._thread = threading.Thread(target=self._run, name="docksnap-cutter", daemon=True)

    # --- event-loop side -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def send(self, batch: list[bytes | Reused]) -> None:
        """Hand a batch to the cutter; waits while `batch_limit` batches are queued.

        A :class:`Reused` item (per-file writers only) stands for a member's data
        and padding, right after its header, as chunks the store holds."""
        await self._credits.acquire()
        if self._failure is not None:
            self._credits.release()
            raise self._failure
        self._inbox.put(batch)

    async def finish(self) -> StreamResult:
        """End of stream: wait until every chunk is stored; the stream's result."""
        self._inbox.put(_END)
        return await asyncio.wrap_future(self._done)

    async def abort(self) -> None:
        """Stop the pipeline and wait until its threads no longer write anything."""
        self._stop.set()
        self._inbox.put(_ABORT)
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.wrap_future(self._done))

    def _release_credit(self) -> None:
        # The loop may be gone if the caller abandoned the save; nothing waits then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._credits.release)

    # --- cutter thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            result = self._cut_stream()
        except BaseException as exc:
            self._spool.close()
            self._fail(exc)
            self._drain_inbox()
            self._quiesce()
            self._done.set_exception(self._failure or exc)
        else:
            self._done.set_result(result)

    def _cut_stream(self) -> StreamResult:
        if self._per_file:
            self._cut_regions()
        else:
            self._cut_whole_stream()
        self._spool.add(self._indexer.finish())
        if isinstance(self._indexer, MemberIndexer):
            self._spool.add_spans(self._indexer.spans)
        refs = [ref for future in self._segments for ref in future.result()]
        if self._packs is not None and (last := self._packs.builder.seal()) is not None:
            self._submit_pack(last)
        self._wait_for_puts()
        self._raise_if_failed()
        digest = chunk_list_digest(refs) if self._per_file else f"blake3:{self._digest.hexdigest()}"
        return StreamResult(
            chunks=tuple(refs),
            size=self._size,
            digest=digest,
            entries=self._spool,
            new_chunks=self._new_chunks,
            stored_bytes=self._stored_bytes,
            deduped=frozenset(self._deduped),
            packs=tuple(self._written),
        )

    def _batches(self) -> Generator[list[bytes | Reused]]:
        """The inbox's batches until END; SaveAborted on ABORT. Frees each batch's
        credit once the caller has handled it."""
        while True:
            item = self._inbox.get()
            if isinstance(item, _Signal):
                self._inbox_closed = True
                if item is _ABORT:
                    raise SaveAborted("the save was abandoned")
                return
            try:
                yield item
                self._spill_entries()
            finally:
                self._release_credit()

    def _cut_whole_stream(self) -> None:
        cutter = StreamCutter(self._params, SEGMENT_SIZE, self._take_segment, self._dispatch)
        with contextlib.closing(self._batches()) as batches:
            self._feed_whole_stream(cutter, batches)
        cutter.finish()

    def _feed_whole_stream(
        self, cutter: StreamCutter, batches: Iterator[list[bytes | Reused]]
    ) -> None:
        for batch in batches:
            for piece in batch:
                self._raise_if_failed()
                if isinstance(piece, Reused):
                    raise ValueError("reused chunks need a per-file writer")
                self._digest.update(piece)
                self._indexer.feed(piece)
                cutter.feed(piece)
                self._size += len(piece)

    def _cut_regions(self) -> None:
        cutter = RegionCutter(self._params, SEGMENT_SIZE, self._take_segment, self._dispatch)
        # closing(): a failure must free the current batch's credit now, not when
        # the generator (held by the sticky exception's traceback) is collected.
        with contextlib.closing(self._batches()) as batches:
            self._feed_regions(cutter, batches)
        cutter.finish()

    def _feed_regions(self, cutter: RegionCutter, batches: Iterator[list[bytes | Reused]]) -> None:
        indexer = self._indexer
        assert isinstance(indexer, MemberIndexer)
        for batch in batches:
            for piece in batch:
                self._raise_if_failed()
                if isinstance(piece, Reused):
                    self._check_reused(piece)
                    indexer.skip_data(piece.nbytes)
                    cutter.cut_at(indexer.take_cuts())
                    cutter.reuse(piece.chunks, piece.nbytes)
                    self._size += piece.nbytes
                else:
                    indexer.feed(piece)
                    cutter.cut_at(indexer.take_cuts())
                    cutter.feed(piece)
                    self._size += len(piece)

    def _check_reused(self, run: Reused) -> None:
        """Every reused chunk must be stored and not marked by gc (the dedup check of
        a chunk given as bytes); its bytes are never read. StoreError if not."""
        assert self._packs is not None
        packs = self._packs
        if sum(ref.length for ref in run.chunks) != run.nbytes:
            raise ValueError(f"reused chunks hold {run.nbytes} bytes by their lengths")
        for ref in run.chunks:
            if packs.index.find(bytes.fromhex(ref.hash), packs.excluded) is None:
                raise StoreError(
                    self._pools.objects.url,
                    f"chunk {ref.hash} given for reuse is not stored (or gc is removing it)",
                )
            with self._lock:
                self._deduped.add(ref.hash)

    @property
    def created_packs(self) -> list[str]:
        """Keys of the packs this save created (not found already stored). Only this
        save knows of them until it writes their index, so on failure it may delete
        them at once."""
        with self._lock:
            return list(self._created)

    def _spill_entries(self) -> None:
        """Move finished tar entries to the spool: memory must not grow per member."""
        entries = self._indexer.entries
        if len(entries) >= _SPILL_EVERY:
            self._spool.add(entries)
            entries.clear()
            if isinstance(self._indexer, MemberIndexer):
                self._spool.add_spans(self._indexer.spans)
                self._indexer.spans.clear()

    def _take_segment(self) -> bytearray:
        while not self._segment_slots.acquire(timeout=_POLL):
            self._raise_if_failed()
        return self._pools.buffers.take()

    def _dispatch(self, segment: Segment | RegionSegment) -> None:
        future = self._pools.cpu.submit(self._store_segment, segment)
        future.add_done_callback(self._note_failure)
        self._segments.append(future)

    def _drain_inbox(self) -> None:
        """After a failure, discard batches (freeing their credits) until END/ABORT."""
        while not self._inbox_closed:
            item = self._inbox.get()
            if isinstance(item, _Signal):
                self._inbox_closed = True
            else:
                self._release_credit()

    def _quiesce(self) -> None:
        """Cancel queued segments and wait for running ones and their puts."""
        for future in self._segments:
            future.cancel()
        wait_futures(self._segments)
        self._wait_for_puts()

    # --- cpu pool ----------------------------------------------------------------

    def _store_segment(self, segment: Segment | RegionSegment) -> list[ChunkRef]:
        """Hash every chunk of ``segment``; compress and queue a put for new ones."""
        try:
            view = memoryview(segment.buffer)
            refs: list[ChunkRef] = []
            items = segment.spans if isinstance(segment, Segment) else segment.items
            for item in items:
                if isinstance(item, Reused):
                    refs += item.chunks
                    continue
                offset, length = item
                chunk = view[offset : offset + length]
                digest = hash_hex(chunk)
                refs.append(ChunkRef(digest, length))
                if self._claim(digest):
                    self._store_if_absent(digest, chunk)
            return refs
        finally:
            self._pools.buffers.give_back(segment.buffer)
            self._segment_slots.release()

    def _claim(self, digest: str) -> bool:
        """True for the first occurrence of a chunk in this save."""
        with self._lock:
            if digest in self._claimed:
                return False
            self._claimed.add(digest)
            return True

    def _store_if_absent(self, digest: str, chunk: memoryview) -> None:
        self._raise_if_failed()
        if self._packs is not None:
            self._pack_if_absent(self._packs, digest, chunk)
            return
        key = chunk_key(digest)
        # Skip the compression (the costly step) when the chunk is already stored:
        # resnapshots of unchanged data then run at hashing speed.
        if self._pools.objects.exists(key):
            with self._lock:
                self._deduped.add(digest)
            return
        payload = encode_chunk(chunk)
        while not self._put_slots.acquire(timeout=_POLL):
            self._raise_if_failed()
        with self._lock:
            self._pending_puts += 1
        future = self._pools.io.submit(self._put, key, payload)
        future.add_done_callback(self._put_done)

    def _pack_if_absent(self, packs: PackTarget, digest: str, chunk: memoryview) -> None:
        raw = bytes.fromhex(digest)
        # The in-memory index answers without a request; compression (the costly
        # step) is skipped for chunks the store already has.
        if packs.index.find(raw, packs.excluded) is not None:
            with self._lock:
                self._deduped.add(digest)
            return
        sealed = packs.builder.add(raw, encode_chunk(chunk), len(chunk))
        if sealed is not None:
            self._submit_pack(sealed)

    def _submit_pack(self, sealed: SealedPack) -> None:
        while not self._pack_slots.acquire(timeout=_POLL):
            self._raise_if_failed()
        with self._lock:
            self._pending_puts += 1
        future = self._pools.io.submit(self._put_pack, sealed)
        future.add_done_callback(self._pack_done)

    def _put_pack(self, sealed: SealedPack) -> None:
        try:
            if self._stop.is_set() or self._failure is not None:
                return
            created = self._pools.objects.put_if_absent(sealed.key, sealed.data)
        finally:
            sealed.release()
        with self._lock:
            self._written.append(sealed.table)
            if created:
                self._created.append(sealed.key)
                self._new_chunks += len(sealed.table)
                self._stored_bytes += sealed.table.pack_size

    def _pack_done(self, future: Future[None]) -> None:
        self._pack_slots.release()
        self._note_failure(future)
        with self._puts_idle:
            self._pending_puts -= 1
            self._puts_idle.notify_all()

    # --- io pool -----------------------------------------------------------------

    def _put(self, key: str, payload: bytes) -> None:
        if self._stop.is_set() or self._failure is not None:
            return  # abandoned: writing more would only make orphans
        created = self._pools.objects.put_if_absent(key, payload)
        if created:
            with self._lock:
                self._new_chunks += 1
                self._stored_bytes += len(payload)

    def _put_done(self, future: Future[None]) -> None:
        self._put_slots.release()
        self._note_failure(future)
        with self._puts_idle:
            self._pending_puts -= 1
            self._puts_idle.notify_all()

    def _wait_for_puts(self) -> None:
        with self._puts_idle:
            while self._pending_puts:
                self._puts_idle.wait()

    # --- failure bookkeeping -------------------------------------------------------

    def _note_failure(self, future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._fail(future.exception())

    def _fail(self, exc: BaseException | None) -> None:
        with self._lock:
            if self._failure is None and exc is not None:
                self._failure = exc
        self._stop.set()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._stop.is_set():
            raise SaveAborted("the save was abandoned")

"""FastCDC over a stream that arrives in pieces, cut exactly as the whole stream.

``pyfastcdc``'s ``cut_buf`` cuts one buffer. Its cut decision for a chunk that
starts at offset ``o`` looks at no more than ``max_size`` bytes from ``o``, plus
how many bytes remain when that is fewer than ``max_size`` (then the last chunk
ends at the buffer's end, and the normalization centre moves). So a chunk cut from
a partial buffer is the chunk the whole stream would give exactly when at least
``max_size`` bytes follow its start in the buffer, or the buffer holds the end of
the stream. :class:`StreamCutter` accepts only such chunks and carries the rest
(fewer than ``max_size`` bytes) into the next buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import pyfastcdc
from pyfastcdc import NormalizedChunking

from docksnap.store.chunked.format import ChunkerParams, ChunkRef


@dataclass(frozen=True, slots=True)
class Segment:
    """A filled buffer and the chunks cut from it, as (offset, length) in ``buffer``.

    ``stream_offset`` is where ``buffer[0]`` sits in the stream. Bytes after the
    last span belong to the next segment (they were copied there).
    """

    buffer: bytearray
    spans: tuple[tuple[int, int], ...]
    stream_offset: int

    @property
    def nbytes(self) -> int:
        return sum(length for _, length in self.spans)


def make_chunker(params: ChunkerParams) -> pyfastcdc.FastCDC:
    return pyfastcdc.FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=cast(NormalizedChunking, params.normalized_chunking),
        seed=params.seed,
    )


class _SegmentFiller:
    """What both cutters share: copying fed bytes into the current segment buffer,
    calling :meth:`_buffer_full` each time it fills (which must start a new one)."""

    _buffer: bytearray
    _fill: int
    _capacity: int

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the stream; emits every segment that fills up."""
        with memoryview(data) as view:
            pos = 0
            while pos < len(view):
                take = min(self._capacity - self._fill, len(view) - pos)
                self._buffer[self._fill : self._fill + take] = view[pos : pos + take]
                self._fill += take
                pos += take
                if self._fill == self._capacity:
                    self._buffer_full()

    def _buffer_full(self) -> None:
        raise NotImplementedError


class StreamCutter(_SegmentFiller):
    """Copy pieces into segment buffers and emit each segment with its cut points.

    ``take_buffer()`` supplies an empty buffer of ``capacity`` bytes (it may block:
    that is the pipeline's backpressure); ``emit(segment)`` receives each finished
    segment in stream order and owns its buffer from then on. Not thread-safe: one
    thread feeds one cutter.
    """

    def __init__(
        self,
        params: ChunkerParams,
        capacity: int,
        take_buffer: Callable[[], bytearray],
        emit: Callable[[Segment], None],
    ) -> None:
        if capacity < 2 * params.max_size:
            raise ValueError(f"segment capacity {capacity} must be >= 2 * max_size")
        self._chunker = make_chunker(params)
        self._max_size = params.max_size
        self._capacity = capacity
        self._take_buffer = take_buffer
        self._emit = emit
        self._buffer = take_buffer()
        self._fill = 0
        self._stream_offset = 0

    def _buffer_full(self) -> None:
        self._cut(final=False)

    def finish(self) -> None:
        """End of stream: emit the last segment (if it holds any bytes)."""
        if self._fill:
            self._cut(final=True)

    def _cut(self, *, final: bool) -> None:
        spans: list[tuple[int, int]] = []
        end = 0
        # No `with` on these views: the chunker's iterator and its Chunk objects hold
        # exports of them; they are dropped with the locals. Nothing resizes buffers.
        view = memoryview(self._buffer)[: self._fill]
        for chunk in self._chunker.cut_buf(view):
            if not final and self._fill - chunk.offset < self._max_size:
                break  # too close to the buffer's end to be the whole stream's cut
            spans.append((chunk.offset, chunk.length))
            end = chunk.offset + chunk.length
        tail = b"" if final else bytes(view[end:])
        self._emit(Segment(self._buffer, tuple(spans), self._stream_offset))
        self._stream_offset += end
        self._buffer = bytearray() if final else self._take_buffer()
        self._buffer[: len(tail)] = tail
        self._fill = len(tail)


@dataclass(frozen=True, slots=True)
class Reused:
    """Chunks already stored, placed in the stream without their bytes (a member's
    content given by reference to an earlier snapshot's chunks)."""

    chunks: tuple[ChunkRef, ...]
    nbytes: int


Item = tuple[int, int] | Reused


@dataclass(frozen=True, slots=True)
class RegionSegment:
    """A filled buffer and the stream's chunks it settles, in stream order: each
    item is a chunk cut from ``buffer`` as (offset, length), or a :class:`Reused`
    run of chunks that has no bytes in the buffer."""

    buffer: bytearray
    items: tuple[Item, ...]


class RegionCutter(_SegmentFiller):
    """Cut a stream into chunks region by region (docs/FORMAT.md §11.11).

    A region's chunks are ``cut_buf`` over that region's bytes alone, so they do
    not depend on anything before or after it. Regions begin at the offsets given
    to :meth:`cut_at` (from :class:`~docksnap.tarstream.MemberIndexer`). A cut may
    be given up to ``lag`` bytes after the bytes it lies in were fed, so the open
    region is only cut up to ``lag`` bytes before the end of what was fed (the
    indexer reports cuts before their bytes; one tar block is a safety margin).

    ``take_buffer`` and ``emit`` are as for :class:`StreamCutter`. Not thread-safe.
    """

    def __init__(
        self,
        params: ChunkerParams,
        capacity: int,
        take_buffer: Callable[[], bytearray],
        emit: Callable[[RegionSegment], None],
        *,
        lag: int = 512,
    ) -> None:
        if capacity < 2 * (params.max_size + lag):
            raise ValueError(f"segment capacity {capacity} must be >= 2 * (max_size + lag)")
        self._chunker = make_chunker(params)
        self._min_size = params.min_size
        self._max_size = params.max_size
        self._lag = lag
        self._capacity = capacity
        self._take_buffer = take_buffer
        self._emit = emit
        self._buffer = take_buffer()
        self._fill = 0
        self._settled = 0  # buffer offset up to which chunks are cut
        self._position = 0  # stream offset of buffer[self._settled]
        self._items: list[Item] = []
        self._cuts: deque[int] = deque()

    def cut_at(self, offsets: Iterable[int]) -> None:
        """Regions begin at these stream offsets (non-decreasing, not yet settled)."""
        for offset in offsets:
            if offset > self._position and (not self._cuts or offset > self._cuts[-1]):
                self._cuts.append(offset)

    def _buffer_full(self) -> None:
        self._settle(final=False)
        self._next_buffer()

    def reuse(self, chunks: tuple[ChunkRef, ...], nbytes: int) -> None:
        """Place ``chunks`` (``nbytes`` in all) at the stream's current end, which
        must be a region boundary, and a region must begin right after them."""
        self._settle(final=True)
        self._items.append(Reused(chunks, nbytes))
        self._position += nbytes
        while self._cuts and self._cuts[0] <= self._position:
            self._cuts.popleft()

    def finish(self) -> None:
        """End of stream: cut the rest and emit the last segment."""
        self._settle(final=True)
        if self._items:
            self._emit(RegionSegment(self._buffer, tuple(self._items)))
            self._items = []
        self._buffer = bytearray()
        self._fill = self._settled = 0

    def _next_buffer(self) -> None:
        tail = bytes(memoryview(self._buffer)[self._settled : self._fill])
        self._emit(RegionSegment(self._buffer, tuple(self._items)))
        self._items = []
        self._buffer = self._take_buffer()
        self._buffer[: len(tail)] = tail
        self._fill = len(tail)
        self._settled = 0

    def _settle(self, *, final: bool) -> None:
        """Cut every region that ends within the buffer; with ``final``, the bytes
        fed end a region too. Else cut what is certain of the unfinished region."""
        while True:
            end = self._fill
            if self._cuts and self._cuts[0] - self._position <= self._fill - self._settled:
                end = self._settled + self._cuts.popleft() - self._position
            elif not final:
                self._settle_open_region()
                return
            self._cut_region(self._settled, end)
            if end == self._fill:
                return

    def _cut_region(self, start: int, end: int) -> None:
        if end - start <= self._min_size:
            if end > start:
                self._items.append((start, end - start))
        else:
            view = memoryview(self._buffer)[start:end]
            self._items += ((start + c.offset, c.length) for c in self._chunker.cut_buf(view))
        self._position += end - start
        self._settled = end

    def _settle_open_region(self) -> None:
        # The region's end is unknown but lies past fill - lag (a cut before that
        # would have been reported): chunks with max_size region bytes after their
        # start are the region's own cuts whatever follows.
        known = self._fill - self._lag
        if known - self._settled < self._max_size:
            return
        view = memoryview(self._buffer)[self._settled : known]
        for chunk in self._chunker.cut_buf(view):
            if known - (self._settled + chunk.offset) < self._max_size:
                break
            self._items.append((self._settled + chunk.offset, chunk.length))
        last = self._items[-1]
        assert not isinstance(last, Reused)
        end = last[0] + last[1]
        self._position += end - self._settled
        self._settled = end

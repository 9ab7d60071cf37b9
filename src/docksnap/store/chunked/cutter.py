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

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pyfastcdc
from pyfastcdc import NormalizedChunking

from docksnap.store.chunked.format import ChunkerParams


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


class StreamCutter:
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

"""The tar index of a save, kept out of memory while the stream is read.

A snapshot of a million small files has a million index entries; held as Python
objects they cost ~0.6 KiB each. A save instead encodes each entry (msgpack,
~50 bytes) into an unnamed temporary file as the tar is parsed, and builds the
``indexes/<id>`` object from it at commit (docs/FORMAT.md §5: the same record).
A per-file save also spools each member's region offsets (24 bytes each), which
become its chunk ranges at commit, once the chunk list is known (§11.11).
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import IO

import msgspec
import zstandard

from docksnap.store.chunked.format import (
    INDEX_VERSION,
    TAG_ZSTD,
    ZSTD_LEVEL,
    ChunkRef,
    MemberChunks,
)
from docksnap.tarstream import TarEntry

_COPY = 1024 * 1024
_SPAN = struct.Struct("<QQQ")


class IndexSpool:
    """Encoded tar entries in a temporary file (created on first use, 0600, unnamed,
    gone when closed or when the process dies). Not thread-safe: one writer."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray()
        self.count = 0
        self._spans: IO[bytes] | None = None
        self._span_buffer = bytearray()
        self.span_count = 0

    def add(self, entries: Iterable[TarEntry]) -> None:
        for entry in entries:
            self._encoder.encode_into(entry, self._buffer, len(self._buffer))
            self.count += 1
        if len(self._buffer) >= _COPY:
            self._flush()

    def add_spans(self, spans: Iterable[tuple[int, int, int]]) -> None:
        """Each member's (header start, data start, data end) stream offsets, in the
        order of its entries (:attr:`MemberIndexer.spans`)."""
        for span in spans:
            self._span_buffer += _SPAN.pack(*span)
            self.span_count += 1
        if len(self._span_buffer) >= _COPY:
            self._spans = _spill(self._spans, self._span_buffer)

    def encode_record(self, snapshot_id: str, chunks: Sequence[ChunkRef] = ()) -> bytes:
        """The ``indexes/<id>`` object: tag, then zstd (with checksum) of the msgpack map
        ``{version, snapshot_id, entries}``, as :func:`format.encode_record` makes it,
        plus ``members`` (each member's chunk ranges in ``chunks``) if spans were added."""
        self._flush()
        with_members = self.span_count > 0
        members = self._encode_members(chunks) if with_members else None
        prefix = (
            (b"\x84" if with_members else b"\x83")
            + msgspec.msgpack.encode("version")
            + msgspec.msgpack.encode(INDEX_VERSION)
            + msgspec.msgpack.encode("snapshot_id")
            + msgspec.msgpack.encode(snapshot_id)
            + msgspec.msgpack.encode("entries")
            + b"\xdd"
            + struct.pack(">I", self.count)
        )
        body = 0 if self._file is None else self._file.tell()
        tail = 0 if members is None else members.seek(0, io.SEEK_END)
        out = io.BytesIO()
        out.write(bytes([TAG_ZSTD]))
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        with cctx.stream_writer(out, size=len(prefix) + body + tail, closefd=False) as writer:
            writer.write(prefix)
            for part in (self._file, members):
                if part is not None:
                    part.seek(0)
                    while block := part.read(_COPY):
                        writer.write(block)
        if members is not None:
            members.close()
        return out.getvalue()

    def _encode_members(self, chunks: Sequence[ChunkRef]) -> IO[bytes]:
        """The ``members`` key and array, spooled (its length must be known first)."""
        if self.span_count != self.count:
            raise ValueError(f"{self.span_count} member spans for {self.count} entries")
        if self._span_buffer:
            self._spans = _spill(self._spans, self._span_buffer)
        out: IO[bytes] = tempfile.SpooledTemporaryFile(_COPY)  # noqa: SIM115 (closed by caller)
        out.write(msgspec.msgpack.encode("members") + b"\xdd" + struct.pack(">I", self.count))
        batch = bytearray()
        for member in _member_chunks(self._read_spans(), chunks):
            self._encoder.encode_into(member, batch, len(batch))
            if len(batch) >= _COPY:
                out.write(batch)
                batch.clear()
        out.write(batch)
        return out

    def _read_spans(self) -> Iterator[tuple[int, int, int]]:
        if self._spans is not None:
            self._spans.seek(0)
            while block := self._spans.read(_SPAN.size * 4096):
                yield from _SPAN.iter_unpack(block)

    def close(self) -> None:
        for spool in (self._file, self._spans):
            if spool is not None:
                spool.close()
        self._file = self._spans = None

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._file = _spill(self._file, self._buffer)


def _spill(file: IO[bytes] | None, buffer: bytearray) -> IO[bytes]:
    """Append ``buffer`` to ``file`` (created on first use) and empty it."""
    if file is None:
        file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by IndexSpool.close())
    file.write(buffer)
    buffer.clear()
    return file


def _member_chunks(
    spans: Iterable[tuple[int, int, int]], chunks: Sequence[ChunkRef]
) -> Iterator[MemberChunks]:
    """Each member's stream offsets as ranges of ``chunks``: its header blocks lie
    in ``[header, content)`` (which may hold other members' headers too), its data
    is exactly ``[content, end)`` (data regions are cut on their own, §11.11)."""
    index = 0  # chunks[index] is the first chunk that ends after `at`
    at = 0  # where chunks[index] begins

    def chunk_of(offset: int) -> int:
        """The chunk holding the byte at ``offset`` (len(chunks) past the end)."""
        nonlocal index, at
        while index < len(chunks) and at + chunks[index].length <= offset:
            at += chunks[index].length
            index += 1
        return index

    for start, data, end in spans:
        header = chunk_of(start)
        content = chunk_of(data - 1) + 1
        if end > data:
            if chunk_of(data) != content or at != data:
                raise ValueError(f"data at stream offset {data} does not begin a chunk")
            last = chunk_of(end - 1)
            if at + chunks[last].length != end:
                raise ValueError(f"data ending at stream offset {end} does not end a chunk")
            yield MemberChunks(header, content, last + 1, data - start)
        else:
            yield MemberChunks(header, content, content, data - start)

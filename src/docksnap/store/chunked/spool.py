"""The tar index of a save, kept out of memory while the stream is read.

A snapshot of a million small files has a million index entries; held as Python
objects they cost ~0.6 KiB each. A save instead encodes each entry (msgpack,
~50 bytes) into an unnamed temporary file as the tar is parsed, and builds the
``indexes/<id>`` object from it at commit (docs/FORMAT.md §5: the same record).
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Iterable
from typing import IO

import msgspec
import zstandard

from docksnap.store.chunked.format import INDEX_VERSION, TAG_ZSTD, ZSTD_LEVEL
from docksnap.tarstream import TarEntry

_COPY = 1024 * 1024


class IndexSpool:
    """Encoded tar entries in a temporary file (created on first use, 0600, unnamed,
    gone when closed or when the process dies). Not thread-safe: one writer."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray()
        self.count = 0

    def add(self, entries: Iterable[TarEntry]) -> None:
        for entry in entries:
            self._encoder.encode_into(entry, self._buffer, len(self._buffer))
            self.count += 1
        if len(self._buffer) >= _COPY:
            self._flush()

    def encode_record(self, snapshot_id: str) -> bytes:
        """The ``indexes/<id>`` object: tag, then zstd (with checksum) of the msgpack map
        ``{version, snapshot_id, entries}``, as :func:`format.encode_record` makes it."""
        self._flush()
        prefix = (
            b"\x83"
            + msgspec.msgpack.encode("version")
            + msgspec.msgpack.encode(INDEX_VERSION)
            + msgspec.msgpack.encode("snapshot_id")
            + msgspec.msgpack.encode(snapshot_id)
            + msgspec.msgpack.encode("entries")
            + b"\xdd"
            + struct.pack(">I", self.count)
        )
        body = 0 if self._file is None else self._file.tell()
        out = io.BytesIO()
        out.write(bytes([TAG_ZSTD]))
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        with cctx.stream_writer(out, size=len(prefix) + body, closefd=False) as writer:
            writer.write(prefix)
            if self._file is not None:
                self._file.seek(0)
                while block := self._file.read(_COPY):
                    writer.write(block)
        return out.getvalue()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._file.write(self._buffer)
        self._buffer.clear()

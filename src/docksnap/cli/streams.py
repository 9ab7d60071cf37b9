"""Files and standard streams as async byte streams, in bounded pieces.

Reads and writes run in a worker thread (``asyncio.to_thread``) so a slow disk
or pipe never blocks the event loop that also talks to Docker and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK_SIZE = 1 << 20  # memory stays bounded by a few of these, whatever the archive's size


async def read_chunks(source: BinaryIO, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    while piece := await asyncio.to_thread(source.read, chunk_size):
        yield piece


async def write_chunks(chunks: AsyncIterable[bytes], sink: BinaryIO) -> int:
    """Write every piece to ``sink``; return the byte count."""
    total = 0
    async for piece in chunks:
        await asyncio.to_thread(sink.write, piece)
        total += len(piece)
    await asyncio.to_thread(sink.flush)
    return total


def regular_file_size(source: BinaryIO) -> int | None:
    """The size of ``source`` if it is a regular file (a pipe has none to show)."""
    try:
        info = os.fstat(source.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``path`` complete or not at all.

    Written under a temporary name in the same directory and renamed at the end,
    so an interrupted or failed export never leaves a truncated archive behind.
    The file is private to the user (0600): a snapshot may hold secrets.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as sink:
            yield sink
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise

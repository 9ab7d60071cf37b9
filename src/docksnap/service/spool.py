"""Read an archive at the engine's speed, whatever the speed of the store behind.

The container stays paused until the engine has sent the archive's last byte,
so the reader must never wait for the store. :func:`read_ahead` runs the read
as a task of its own and hands the bytes on in order: through a small queue in
memory while the store keeps up, and through a spool file when it does not.
The store then drains the spool after the container runs again.

The spool file is private: created with ``O_TMPFILE`` (mode 0600, no name,
so it vanishes when closed or when the process dies, SIGKILL included; where
the filesystem lacks ``O_TMPFILE``, Python's ``TemporaryFile`` unlinks it right
after creating it). It lives beside the store it feeds, on the disk the user
gave to snapshots: under a local store's directory, else under
``$XDG_CACHE_HOME/docksnap/spool``.

Its size is bounded by ``limit`` (default :data:`DEFAULT_SPOOL_LIMIT`) and by the
free space of its filesystem less a reserve. When the bound is reached (or the
disk fills, or no spool file can be made), the reader falls back to
back-pressure: it waits for the store, exactly as without a spool. The snapshot
still succeeds; only the pause is longer. Failing it instead would turn a
slow disk into lost snapshots.

Memory stays bounded: at most ``memory`` bytes queued (default 8 MiB), and the
spool is read back in 1 MiB pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from docksnap.service.failpoint import failpoint

log = logging.getLogger(__name__)

DEFAULT_SPOOL_LIMIT = 4 * 1024**3
DEFAULT_MEMORY = 8 * 1024**2
_READ_PIECE = 1024**2
_MIN_RESERVE = 256 * 1024**2


def spool_directory(store_url: str, env: dict[str, str] | None = None) -> Path:
    """Where a snapshot into ``store_url`` spools: the local store's own directory if any."""
    parts = urlsplit(store_url)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    env = dict(os.environ) if env is None else env
    cache = env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache, "docksnap", "spool")


class _Buffer:
    """Bytes in order between one producer and one consumer, spilling to a file."""

    def __init__(self, directory: Path, limit: int, memory: int) -> None:
        self._directory = directory
        self._limit = limit
        self._memory_limit = memory
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._file: BinaryIO | None = None
        self._written = 0  # end of spooled data in the file
        self._read = 0  # how far the consumer has read it
        self._done = False
        self._error: BaseException | None = None
        self._data = asyncio.Event()
        self._room = asyncio.Event()
        self.spooled_bytes = 0

    # producer side

    async def put(self, piece: bytes) -> None:
        while True:
            if self._read == self._written and (
                not self._queue or self._queued + len(piece) <= self._memory_limit
            ):
                self._queue.append(piece)
                self._queued += len(piece)
                self._data.set()
                return
            if self._spool(piece):
                self._data.set()
                return
            self._room.clear()
            await self._room.wait()

    def finish(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        self._data.set()

    def _spool(self, piece: bytes) -> bool:
        """Append ``piece`` to the spool; False when it does not fit (back-pressure)."""
        if self._written + len(piece) > self._limit:
            return False
        if self._file is None and not self._open():
            return False
        assert self._file is not None
        try:
            os.pwrite(self._file.fileno(), piece, self._written)
        except OSError as exc:
            # ENOSPC and friends: stop spooling, wait for the store instead.
            log.warning("spool file full (%s); waiting for the store instead", exc.strerror)
            self._limit = self._written
            return False
        self._written += len(piece)
        self.spooled_bytes += len(piece)
        return True

    def _open(self) -> bool:
        try:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            free = _free_bytes(self._directory)
            self._limit = min(self._limit, max(0, free - _reserve(self._directory)))
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 -- closed in close()
        except OSError as exc:
            log.warning("cannot spool under %s (%s); waiting for the store", self._directory, exc)
            self._limit = 0
            return False
        return True

    # consumer side

    async def pieces(self) -> AsyncIterator[bytes]:
        while True:
            if self._queue:
                piece = self._queue.popleft()
                self._queued -= len(piece)
                self._room.set()
                yield piece
            elif self._read < self._written:
                assert self._file is not None
                size = min(_READ_PIECE, self._written - self._read)
                piece = os.pread(self._file.fileno(), size, self._read)
                self._read += len(piece)
                if self._read == self._written:
                    self._read = self._written = 0  # drained: reuse the file from its start
                self._room.set()
                yield piece
            elif self._done:
                if self._error is not None:
                    raise self._error
                return
            else:
                self._data.clear()
                await self._data.wait()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _free_bytes(directory: Path) -> int:
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


def _reserve(directory: Path) -> int:
    """Space a spool leaves free: 5 % of the filesystem, at least 256 MiB."""
    info = os.statvfs(directory)
    return max(_MIN_RESERVE, info.f_blocks * info.f_frsize // 20)


@contextlib.asynccontextmanager
async def read_ahead(
    source: AsyncIterator[bytes],
    *,
    on_end: Callable[[], Awaitable[None]],
    directory: Path,
    limit: int = DEFAULT_SPOOL_LIMIT,
    memory: int = DEFAULT_MEMORY,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """Yield ``source``'s bytes in order while a task reads it ahead as fast as it gives.

    ``on_end`` runs as soon as ``source`` is exhausted (the unpause), before the
    consumer has seen the last bytes. An error of ``source`` reaches the
    consumer after the bytes before it. Leaving the context stops the reader
    and deletes the spool.
    """
    buffer = _Buffer(directory, limit, memory)

    async def pump() -> None:
        try:
            async for piece in source:
                await buffer.put(piece)
                await failpoint("reading")
            await on_end()
            await failpoint("unpaused")
        except BaseException as exc:
            buffer.finish(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            buffer.finish()
        if buffer.spooled_bytes:
            log.debug("spooled %d bytes while the store caught up", buffer.spooled_bytes)

    task = asyncio.create_task(pump())
    try:
        yield buffer.pieces()
    finally:
        task.cancel()
        await asyncio.wait([task])
        buffer.close()

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

Memory stays bounded: at most ``memory`` bytes queued (default 8 MiB), as much
again waiting to be written to the spool and one batch being written, and the
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
_BATCH = 1024**2
_IOV_MAX = 1024
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
    """Bytes in order between one producer and one consumer, spilling to a file.

    The order of the bytes is: the memory queue, then the spool file's unread
    part, then the batch being written to it, then what waits to be written.
    While nothing is spilled, pieces pass through the queue only. Once the
    queue is full, pieces wait in memory and are written in batches of
    :data:`_BATCH` by a thread, so the reader never blocks on the disk; the
    consumer takes the last pieces straight from memory, unwritten.
    """

    def __init__(self, directory: Path, limit: int, memory: int, hold: bool) -> None:
        self._hold = hold  # the consumer waits until the source ends (or the reader is stuck)
        self._directory = directory
        self._limit = limit
        self._memory_limit = memory
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._pending: deque[bytes] = deque()  # spilled, not yet written
        self._pending_bytes = 0
        self._writing: asyncio.Future[int] | None = None
        self._file: BinaryIO | None = None
        self._written = 0  # end of spooled data in the file
        self._read = 0  # how far the consumer has read it
        self._spilling = False
        self._done = False
        self._error: BaseException | None = None
        self._data = asyncio.Event()
        self._room = asyncio.Event()
        self.spooled_bytes = 0
        self.pieces_in = 0

    # producer side

    async def put(self, piece: bytes) -> None:
        self.pieces_in += 1
        while True:
            if not self._spilling and (
                not self._queue or self._queued + len(piece) <= self._memory_limit
            ):
                self._queue.append(piece)
                self._queued += len(piece)
                self._data.set()
                return
            if self._pending_bytes < max(self._memory_limit, _BATCH):
                self._spilling = True
                self._pending.append(piece)
                self._pending_bytes += len(piece)
                self._data.set()
                self._start_write()
                return
            if self._writing is None:
                # The spool takes no more (full, failed): only the consumer can
                # make room now, so a held one is let go for good.
                self._hold = False
                self._data.set()
            # Else a write is under way and frees room when it ends (_wrote): a
            # held consumer stays held, or it would compete with this read, on
            # few cores, while the container is paused (measured: the hold was
            # let go after ~1 MiB in every 300 MB snapshot, pause 1.2-1.7x GET).
            self._room.clear()
            await self._room.wait()

    def finish(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        self._data.set()

    def _start_write(self) -> None:
        """Hand a batch of pending pieces to a thread, unless one is being written."""
        if self._writing is not None or self._pending_bytes < _BATCH:
            return
        if self._written + self._pending_bytes > self._limit:
            return  # full: the reader waits for the consumer (back-pressure)
        if self._file is None and not self._open():
            return
        assert self._file is not None
        batch = list(self._pending)
        self._pending.clear()
        size, self._pending_bytes = self._pending_bytes, 0
        self._writing = asyncio.get_running_loop().run_in_executor(
            None, _write_batch, self._file.fileno(), batch, self._written
        )
        self._writing.add_done_callback(lambda done: self._wrote(done, batch, size))

    def _wrote(self, done: asyncio.Future[int], batch: list[bytes], size: int) -> None:
        self._writing = None
        if done.cancelled() or done.exception() is not None:
            # ENOSPC and friends: stop spooling and put the batch back in front;
            # the reader waits for the consumer from now on.
            exc = None if done.cancelled() else done.exception()
            log.warning("spool write failed (%s); waiting for the store instead", exc)
            self._limit = self._written
            self._pending.extendleft(reversed(batch))
            self._pending_bytes += size
        else:
            self._written += size
            self.spooled_bytes += size
            self._start_write()
        self._data.set()
        self._room.set()

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
            piece = None if self._hold and not self._done else self._take()
            if piece is not None:
                self._room.set()
                yield piece
            elif self._done and self._writing is None and not self._pending:
                if self._error is not None:
                    raise self._error
                return
            else:
                self._data.clear()
                await self._data.wait()

    def _take(self) -> bytes | None:
        """The next bytes in order, or None when they are not available yet."""
        if self._queue:
            piece = self._queue.popleft()
            self._queued -= len(piece)
            return piece
        if self._read < self._written:
            assert self._file is not None
            size = min(_READ_PIECE, self._written - self._read)
            piece = os.pread(self._file.fileno(), size, self._read)
            self._read += len(piece)
            return piece
        if self._writing is not None or not self._pending:
            return None
        piece = self._pending.popleft()
        self._pending_bytes -= len(piece)
        if not self._pending:
            # All caught up: back to the memory queue, the file reused from its start.
            self._spilling = False
            self._read = self._written = 0
        return piece

    async def aclose(self) -> None:
        """Delete the spool, once no thread writes to its descriptor any more.

        Closing it under a running write would let that write land in whatever
        file reuses the descriptor number.
        """
        if self._writing is not None:
            await asyncio.wait([self._writing])
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_batch(fd: int, batch: list[bytes], offset: int) -> int:
    written = 0
    while batch:
        n = os.pwritev(fd, batch[:_IOV_MAX], offset + written)
        written += n
        batch = _drop_prefix(batch, n)
    return written


def _drop_prefix(batch: list[bytes], n: int) -> list[bytes]:
    """``batch`` without its first ``n`` bytes (after a short or partial write)."""
    rest = list(batch)
    while n and rest:
        if n >= len(rest[0]):
            n -= len(rest.pop(0))
        else:
            rest[0] = rest[0][n:]
            n = 0
    return rest


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
    hold: bool = False,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """Yield ``source``'s bytes in order while a task reads it ahead as fast as it gives.

    ``on_end`` runs as soon as ``source`` is exhausted (the unpause), before the
    consumer has seen the last bytes. An error of ``source`` reaches the
    consumer after the bytes before it. Leaving the context stops the reader
    and deletes the spool.

    ``hold=True`` keeps the consumer waiting until ``source`` ends, unless the
    spool is full: the reader then has the CPU (and the GIL) to itself. That is
    what a paused container needs on a machine with few cores, where a store
    working alongside stretched the read, and with it the pause, to 2.5-3x the
    engine's own time (measured on the 2-core development machine); the price
    is that reading and storing no longer overlap.
    """
    buffer = _Buffer(directory, limit, memory, hold)

    async def pump() -> None:
        try:
            async for piece in source:
                await buffer.put(piece)
                if buffer.pieces_in == 1:
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
        await asyncio.shield(buffer.aclose())

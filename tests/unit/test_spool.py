"""The read-ahead between the engine and the store (pure logic on real files)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docksnap.service import spool as spool_module
from docksnap.service.spool import read_ahead, spool_directory

PIECE = 64 * 1024


def _data(pieces: int) -> list[bytes]:
    return [bytes([i % 251]) * PIECE for i in range(pieces)]


async def _source(pieces: list[bytes], error: Exception | None = None) -> AsyncIterator[bytes]:
    for piece in pieces:
        await asyncio.sleep(0)
        yield piece
    if error is not None:
        raise error


def _spool_fds(directory: Path) -> list[os.stat_result]:
    """Open descriptors of this process on files in ``directory`` (named or not)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                found.append(os.stat(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return found


async def test_a_slow_consumer_gets_every_byte_in_order_after_the_source_ended(
    tmp_path: Path,
) -> None:
    pieces = _data(80)  # 5 MiB through 256 KiB of memory
    ended_after: list[int] = []
    seen = bytearray()
    files: list[list[os.stat_result]] = []

    source_ended = asyncio.Event()

    async def on_end() -> None:
        ended_after.append(len(seen))
        files.append(_spool_fds(tmp_path))
        source_ended.set()

    async with read_ahead(
        _source(pieces), on_end=on_end, directory=tmp_path, memory=256 * 1024
    ) as stream:
        async for piece in stream:
            seen += piece
            # The store stalls after its first piece until the engine is done:
            # the whole rest must have gone past the memory bound into the spool.
            await asyncio.wait_for(source_ended.wait(), timeout=60)
    assert bytes(seen) == b"".join(pieces)
    assert ended_after[0] < len(seen) // 2, "the source was read ahead of the consumer"
    assert files[0], "the overflow went to a spool file"
    for info in files[0]:
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_nlink == 0, "the spool file has no name, so it cannot be left behind"
    assert os.listdir(tmp_path) == []
    assert _spool_fds(tmp_path) == []


async def test_a_held_consumer_stays_held_while_the_spool_is_slow_but_moving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hold=True: a spool write slower than the source makes the reader wait for
    the spool, not release the consumer (which would compete with the read while
    the container is paused); the consumer starts once the source has ended."""
    real_write = spool_module._write_batch

    def slow_write(fd: int, batch: list[bytes], offset: int) -> int:
        time.sleep(0.02)
        return real_write(fd, batch, offset)

    monkeypatch.setattr(spool_module, "_write_batch", slow_write)
    pieces = _data(64)  # 4 MiB through 256 KiB of memory
    ended = asyncio.Event()
    early: list[int] = []
    seen = bytearray()

    async def on_end() -> None:
        ended.set()

    async with read_ahead(
        _source(pieces), on_end=on_end, directory=tmp_path, memory=256 * 1024, hold=True
    ) as stream:
        async for piece in stream:
            if not ended.is_set():
                early.append(len(piece))
            seen += piece
    assert bytes(seen) == b"".join(pieces)
    assert early == [], "the consumer ran while the source was being read"


async def test_with_no_room_to_spool_the_reader_waits_for_the_consumer(tmp_path: Path) -> None:
    pieces = _data(40)
    seen = bytearray()
    ended_after: list[int] = []

    async def on_end() -> None:
        ended_after.append(len(seen))

    async with read_ahead(
        _source(pieces), on_end=on_end, directory=tmp_path, limit=0, memory=128 * 1024
    ) as stream:
        async for piece in stream:
            seen += piece
            await asyncio.sleep(0.001)
    assert bytes(seen) == b"".join(pieces)
    # Back-pressure: only the queue (128 KiB) and one batch (1 MiB) waiting to
    # be written, which cannot be, were ahead of the consumer.
    assert ended_after[0] >= len(seen) - 128 * 1024 - 1024**2 - PIECE
    assert os.listdir(tmp_path) == []


async def test_a_source_error_reaches_the_consumer_after_the_bytes_before_it(
    tmp_path: Path,
) -> None:
    pieces = _data(4)
    seen = bytearray()
    ended: list[bool] = []

    async def on_end() -> None:
        ended.append(True)

    async def consume() -> None:
        async with read_ahead(
            _source(pieces, RuntimeError("cut")), on_end=on_end, directory=tmp_path
        ) as stream:
            async for piece in stream:
                seen.extend(piece)

    with pytest.raises(RuntimeError, match="cut"):
        await consume()
    assert bytes(seen) == b"".join(pieces)
    assert ended == [], "a failed read is not the end of the archive"


async def test_a_consumer_that_stops_early_stops_the_reader_and_deletes_the_spool(
    tmp_path: Path,
) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0)
            yield b"x" * PIECE

    async def on_end() -> None:
        raise AssertionError("never ends")

    async def consume() -> None:
        async with read_ahead(endless(), on_end=on_end, directory=tmp_path, memory=PIECE) as stream:
            async for _ in stream:
                await asyncio.sleep(0.01)
                raise ValueError("store failed")

    with pytest.raises(ValueError, match="store failed"):
        await consume()
    assert _spool_fds(tmp_path) == []
    assert os.listdir(tmp_path) == []


def test_the_spool_lives_beside_a_local_store_else_in_the_cache() -> None:
    assert spool_directory("file:///srv/snaps") == Path("/srv/snaps")
    assert spool_directory("s3://b/p", {"XDG_CACHE_HOME": "/c"}) == Path("/c/docksnap/spool")
    assert spool_directory("docker-volume:", {"XDG_CACHE_HOME": "/c"}) == Path("/c/docksnap/spool")

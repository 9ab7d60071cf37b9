"""CPU per stage of a format-2 first save into a local store (thread CPU time, summed).

Usage: python bench/store_stages.py DIRECTORY STORE_DIR

DIRECTORY is tarred into memory first, then saved in 64 KiB pieces (what httpx
hands over) into a fresh fsync'd store at STORE_DIR. The stage functions are
wrapped with timers in this process only; nothing in ``src/`` changes. The output
of one run on this project's site-packages is ``bench/profile-store-v2.txt``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import resource
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import docksnap.store.chunked.cutter as cutter
import docksnap.store.chunked.format as fmt
import docksnap.store.chunked.packs as packs
import docksnap.store.chunked.writer as writer
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from docksnap.tarstream import TarIndexer

SECONDS: dict[str, float] = collections.defaultdict(float)
_LOCK = threading.Lock()


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            with _LOCK:
                SECONDS[name] += time.thread_time() - started

    return wrapper


def instrument() -> None:
    writer.encode_chunk = timed("zstd encode (or sample and skip)", fmt.encode_chunk)  # type: ignore[attr-defined]
    writer.hash_hex = timed("blake3 per chunk", fmt.hash_hex)  # type: ignore[attr-defined]
    cut = cutter.StreamCutter
    cut._cut = timed("fastcdc cut", cut._cut)  # type: ignore[method-assign]
    cut.feed = timed("copy into segments", cut.feed)  # type: ignore[method-assign]
    TarIndexer.feed = timed("tar indexer", TarIndexer.feed)  # type: ignore[method-assign]
    build = packs.PackBuilder
    build._seal_locked = timed("pack seal (join, table, blake3)", build._seal_locked)  # type: ignore[method-assign]
    sw = writer.StreamWriter
    sw._put_pack = timed("pack put (write, fsync, link)", sw._put_pack)  # type: ignore[method-assign]
    sw._store_segment = timed("[cpu pool] per segment, total", sw._store_segment)  # type: ignore[method-assign]
    sw._cut_stream = timed("[cutter thread] total", sw._cut_stream)  # type: ignore[method-assign]


def tar_of(directory: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


async def main(directory: str, root: Path) -> None:
    data = tar_of(directory)
    instrument()
    store = ChunkedStore(LocalObjectStore(root))
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/d")
    await store.save(record, pieces(data), source=SnapshotSource("bench", "bench"))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    await store.close()
    user = (after.ru_utime - before.ru_utime) / len(data) * 1e9
    system = (after.ru_stime - before.ru_stime) / len(data) * 1e9
    print(f"{len(data) / 1e6:.0f} MB tar, wall {wall:.2f} s")
    print(f"process CPU {user + system:.2f} ns/byte (user {user:.2f}, system {system:.2f})")
    for name, seconds in sorted(SECONDS.items(), key=lambda item: -item[1]):
        print(f"  {name:36s} {seconds / len(data) * 1e9:6.2f} ns/byte  ({seconds:.2f} s)")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))

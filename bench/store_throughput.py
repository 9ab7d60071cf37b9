"""Ingest and restore throughput of the chunked store, fed from memory.

Usage:
    python bench/store_throughput.py TAR [--runs N] [--backend local|local-nofsync|memory]
    python bench/store_throughput.py --rss GIB

The first form saves TAR (read into memory first) into a fresh local store, saves it
again (everything deduplicates), and reads it back; it prints MB/s for each (median
of N runs). The second form saves a generated GIB GiB stream (distinct, partly
compressible data) and prints the peak RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects import ObjectInfo, ObjectNotFoundError, ObjectStore
from docksnap.store.objects.local import LocalObjectStore

SOURCE = SnapshotSource(container="bench", image="bench")
PIECE = 64 * 1024  # what httpx hands over from the Docker socket
CPU_SECONDS: list[list[float]] = [[], [], []]  # process CPU time: save, resave, restore


class MemoryObjects:
    """A dict as the object store: isolates the pipeline's CPU cost from the disk."""

    url = "memory://bench"

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._objects[key] = bytes(data)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = bytes(data)
            return True

    def exists(self, key: str) -> bool:
        return key in self._objects

    def get(self, key: str) -> bytes:
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFoundError(self.url, key) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.get(key)[start : start + length]

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for key, data in list(self._objects.items()):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(data), time.time())

    def delete(self, key: str) -> None:
        self._objects.pop(key, None)

    def close(self) -> None:
        self._objects.clear()


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), PIECE):
        yield bytes(view[start : start + PIECE])


async def once(data: bytes, backend: str) -> tuple[float, float, float]:
    root = Path(tempfile.mkdtemp(prefix="docksnap-bench-", dir="/tmp"))
    objects: ObjectStore = (
        MemoryObjects() if backend == "memory" else LocalObjectStore(root, fsync=backend == "local")
    )
    store = ChunkedStore(objects)
    try:
        timings = []
        for n in range(2):  # first save, then a resave of the same bytes
            cpu = time.process_time()
            started = time.perf_counter()
            info = await store.save(
                DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/d"),
                pieces(data),
                source=SOURCE,
            )
            timings.append(time.perf_counter() - started)
            CPU_SECONDS[n].append(time.process_time() - cpu)
        cpu = time.process_time()
        started = time.perf_counter()
        async with store.open(info.id) as reader:
            total = sum([len(piece) async for piece in reader])
        timings.append(time.perf_counter() - started)
        CPU_SECONDS[2].append(time.process_time() - cpu)
        assert total == len(data)
        return timings[0], timings[1], timings[2]
    finally:
        await store.close()
        shutil.rmtree(root)


async def throughput(data: bytes, runs: int, backend: str) -> None:
    results = [await once(data, backend) for _ in range(runs)]
    mb = len(data) / 1e6
    for label, column, cpu in zip(
        ("save", "resave", "restore"), zip(*results, strict=True), CPU_SECONDS, strict=True
    ):
        rates = sorted(mb / seconds for seconds in column)
        cpu_ns = statistics.median(cpu) / len(data) * 1e9
        print(
            f"{label:8} median {statistics.median(rates):6.0f} MB/s "
            f"(range {rates[0]:.0f}-{rates[-1]:.0f}, {mb:.0f} MB, {backend}); "
            f"CPU {cpu_ns:.2f} ns/byte = {2 / cpu_ns * 1e3:.0f} MB/s on 2 idle cores"
        )
    CPU_SECONDS[:] = [[], [], []]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def generated(total: int) -> AsyncIterator[bytes]:
    """A tar of one file of ``total`` bytes: every MiB distinct, half of it compressible."""
    import tarfile

    info = tarfile.TarInfo("big")
    info.size = total
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    noise = os.urandom(1 << 19)
    text = (b"lorem ipsum dolor sit amet " * 20000)[: 1 << 19]
    for n in range(total // (1 << 20)):
        yield n.to_bytes(8, "little") + noise[8:] + text
    yield bytes(-total % 512) + bytes(1024)


async def rss(gib: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="docksnap-rss-", dir="/tmp"))
    store = ChunkedStore(LocalObjectStore(root))
    before = peak_rss()
    started = time.perf_counter()
    try:
        info = await store.save(
            DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/d"),
            generated(gib << 30),
            source=SOURCE,
        )
    finally:
        await store.close()
        shutil.rmtree(root)
    elapsed = time.perf_counter() - started
    rate = info.size / elapsed / 1e6
    print(
        f"saved {info.size / 2**30:.2f} GiB in {elapsed:.1f} s ({rate:.0f} MB/s); "
        f"peak RSS {before / 2**20:.0f} MiB before, {peak_rss() / 2**20:.0f} MiB after"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tar", nargs="?", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--backend",
        choices=["local", "local-nofsync", "memory"],
        default="local",
        help="local directory (fsync), the same without fsync, or a dict in memory",
    )
    parser.add_argument("--rss", type=int, metavar="GIB")
    args = parser.parse_args()
    if args.rss:
        asyncio.run(rss(args.rss))
    else:
        asyncio.run(throughput(args.tar.read_bytes(), args.runs, args.backend))


if __name__ == "__main__":
    main()

"""Store format 1 against format 2 in the same run: first save, save again, restore.

Usage: python bench/store_formats.py DIRECTORY [ROUNDS] [--no-fsync] [--s3=s3://bucket/prefix]

DIRECTORY is tarred into memory, then saved in 64 KiB pieces into a fresh local
store of each format in turn (alternating, ROUNDS times, default 3), saved again
(everything deduplicates) and read back. Prints medians of MB/s and of process
CPU per byte, and the number of objects each format wrote. CPU per byte is the
figure to compare on a shared machine; wall time follows the load. With ``--s3``
each round uses its own sub-prefix (emptied afterwards); credentials and endpoint
come from the environment as for ``docksnap`` (docs/S3.md).
"""

from __future__ import annotations

import asyncio
import io
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects import ObjectStore
from docksnap.store.objects.local import LocalObjectStore
from docksnap.store.objects.s3 import S3ObjectStore

STEPS = ("first save", "save again", "restore")


def tar_of(directory: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def objects_for(root: Path, fsync: bool, s3: str | None) -> ObjectStore:
    if s3 is None:
        return LocalObjectStore(root, fsync=fsync)
    return S3ObjectStore.from_url(f"{s3.rstrip('/')}/formats-{uuid.uuid4().hex[:12]}")


async def one_round(
    data: bytes, version: int, root: Path, fsync: bool, s3: str | None
) -> dict[str, object]:
    objects = objects_for(root, fsync, s3)
    store = ChunkedStore(objects, format_version=version)
    timings: dict[str, tuple[float, float]] = {}
    snapshot_id = ""
    for step in STEPS[:2]:
        record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/d")
        wall, used = time.perf_counter(), cpu()
        info = await store.save(record, pieces(data), source=SnapshotSource("b", "b"))
        timings[step] = (time.perf_counter() - wall, cpu() - used)
        snapshot_id = info.id
    wall, used = time.perf_counter(), cpu()
    async with store.open(snapshot_id) as reader:
        size = sum([len(piece) async for piece in reader])
    timings["restore"] = (time.perf_counter() - wall, cpu() - used)
    assert size == len(data)
    keys = [info.key for info in objects.list("")]
    if s3 is not None:
        for key in keys:
            objects.delete(key)
    await store.close()
    return {"timings": timings, "objects": len(keys)}


async def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    fsync = "--no-fsync" not in sys.argv
    s3 = next((a.partition("=")[2] for a in sys.argv if a.startswith("--s3=")), None)
    data = tar_of(args[0])
    rounds = int(args[1]) if len(args) > 1 else 3
    results: dict[int, list[dict[str, object]]] = {1: [], 2: []}
    for _ in range(rounds):
        for version in (1, 2):
            root = Path(tempfile.mkdtemp(prefix="docksnap-formats-"))
            try:
                results[version].append(await one_round(data, version, root, fsync, s3))
            finally:
                shutil.rmtree(root)
    where = s3 or f"local directory, fsync={fsync}"
    print(f"{len(data) / 1e6:.0f} MB tar, {rounds} rounds, {where}")
    for version, runs in results.items():
        for step in STEPS:
            walls = [run["timings"][step][0] for run in runs]  # type: ignore[index]
            cpus = [run["timings"][step][1] for run in runs]  # type: ignore[index]
            wall, used = statistics.median(walls), statistics.median(cpus)
            print(
                f"format {version}  {step:10s}  {len(data) / wall / 1e6:6.0f} MB/s"
                f"  CPU {used / len(data) * 1e9:5.1f} ns/byte"
            )
        print(f"format {version}  objects written: {runs[0]['objects']}")


if __name__ == "__main__":
    asyncio.run(main())

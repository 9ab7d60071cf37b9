"""Store format 1 against format 2 in the same run: first save, save again, restore.

Usage: python bench/store_formats.py DIRECTORY [ROUNDS] [--no-fsync]

DIRECTORY is tarred into memory, then saved in 64 KiB pieces into a fresh local
store of each format in turn (alternating, ROUNDS times, default 3), saved again
(everything deduplicates) and read back. Prints medians of MB/s and of process
CPU per byte, and the number of objects each format wrote. CPU per byte is the
figure to compare on a shared machine; wall time follows the load.
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
from collections.abc import AsyncIterator
from pathlib import Path

from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.local import LocalObjectStore

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


async def one_round(data: bytes, version: int, root: Path, fsync: bool) -> dict[str, object]:
    store = ChunkedStore(LocalObjectStore(root, fsync=fsync), format_version=version)
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
    await store.close()
    return {"timings": timings, "objects": count_files(root)}


def count_files(root: Path) -> int:
    return sum(1 for path in root.rglob("*") if path.is_file())


async def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    fsync = "--no-fsync" not in sys.argv
    data = tar_of(args[0])
    rounds = int(args[1]) if len(args) > 1 else 3
    results: dict[int, list[dict[str, object]]] = {1: [], 2: []}
    for _ in range(rounds):
        for version in (1, 2):
            root = Path(tempfile.mkdtemp(prefix="docksnap-formats-"))
            try:
                results[version].append(await one_round(data, version, root, fsync))
            finally:
                shutil.rmtree(root)
    print(f"{len(data) / 1e6:.0f} MB tar, {rounds} rounds, fsync={fsync}")
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

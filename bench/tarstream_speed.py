"""Throughput of TarIndexer on synthetic tar streams fed in 1 MiB chunks.

Run: PYTHONPATH=src python bench/tarstream_speed.py [--mb 300] [--compare-tarfile]

Prints GB/s per file-size mix. The indexer's cost is per header, so the figure depends
mostly on the mean member size: large files run at memory-skip speed, tiny files
measure header parsing.
"""

from __future__ import annotations

import argparse
import io
import random
import tarfile
import time
from collections.abc import Callable

from docksnap.tarstream import TarIndexer

CHUNK = 1 << 20
MIXES: dict[str, Callable[[random.Random], int]] = {
    "1 MiB files": lambda rng: 1 << 20,
    "mixed (log-uniform 0 B..4 MiB)": lambda rng: int(2 ** rng.uniform(0, 22)),
    "64 KiB files": lambda rng: 64 << 10,
    "4 KiB files": lambda rng: 4 << 10,
    "100 B files": lambda rng: 100,
}


def synthetic_tar(total: int, size_of: Callable[[random.Random], int]) -> bytes:
    """Return a PAX-format tar of about ``total`` bytes; member data is zeros."""
    rng = random.Random(42)
    parts: list[bytes] = []
    written = 0
    index = 0
    while written < total:
        info = tarfile.TarInfo(f"./dir{index % 97}/file-{index}.bin")
        info.size = size_of(rng)
        info.mtime = 1_700_000_000
        header = info.tobuf(tarfile.PAX_FORMAT)
        data = bytes(info.size + (-info.size % 512))
        parts += (header, data)
        written += len(header) + len(data)
        index += 1
    parts.append(bytes(1024))
    return b"".join(parts)


def index_speed(data: bytes) -> tuple[float, int]:
    """Feed ``data`` in 1 MiB chunks; return (seconds, member count) of the best of 3."""
    view = memoryview(data)
    best = float("inf")
    count = 0
    for _ in range(3):
        start = time.perf_counter()
        indexer = TarIndexer()
        for pos in range(0, len(view), CHUNK):
            indexer.feed(view[pos : pos + CHUNK])
        count = len(indexer.finish())
        best = min(best, time.perf_counter() - start)
    return best, count


def tarfile_speed(data: bytes) -> float:
    """Seconds for tarfile in stream mode to walk the same archive."""
    start = time.perf_counter()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        for _member in archive:
            pass
    return time.perf_counter() - start


def main() -> None:
    """Print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="archive size per mix, in MB")
    parser.add_argument("--compare-tarfile", action="store_true")
    args = parser.parse_args()
    for label, size_of in MIXES.items():
        data = synthetic_tar(args.mb * 1_000_000, size_of)
        seconds, count = index_speed(data)
        line = f"{label:34} {len(data) / 1e6:7.0f} MB {count:8d} members "
        line += f"{len(data) / seconds / 1e9:7.2f} GB/s {count / seconds / 1e3:7.0f} k members/s"
        if args.compare_tarfile:
            line += f"   tarfile: {len(data) / tarfile_speed(data) / 1e9:5.2f} GB/s"
        print(line, flush=True)


if __name__ == "__main__":
    main()

"""Measure deduplication and compression for several FastCDC average sizes.

Usage: python bench/chunk_size.py BASE.tar CHANGED.tar

For each average size: cut BASE, store its unique chunks (zstd-3 per chunk, raw when it
does not shrink), then cut CHANGED and count the chunks that are new. Prints one table row
per size. The numbers chosen for docs/FORMAT.md come from this script.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import blake3
import pyfastcdc
import zstandard


def measure(base: bytes, changed: bytes, avg: int) -> str:
    cdc = pyfastcdc.FastCDC(avg)
    cctx = zstandard.ZstdCompressor(level=3)
    stored: dict[str, int] = {}
    started = time.perf_counter()
    for chunk in cdc.cut_buf(base):
        digest = blake3.blake3(chunk.data).hexdigest()
        if digest not in stored:
            stored[digest] = min(len(cctx.compress(chunk.data)), chunk.length) + 1
    elapsed = time.perf_counter() - started
    base_chunks = len(stored)
    base_stored = sum(stored.values())
    new_raw = new_stored = new_count = total = 0
    for chunk in cdc.cut_buf(changed):
        total += 1
        digest = blake3.blake3(chunk.data).hexdigest()
        if digest not in stored:
            size = min(len(cctx.compress(chunk.data)), chunk.length) + 1
            stored[digest] = size
            new_raw += chunk.length
            new_stored += size
            new_count += 1
    return (
        f"| {avg // 1024} KiB | {base_chunks} | {len(base) / base_chunks / 1024:.1f} KiB "
        f"| {len(base) / base_stored:.2f} | {new_count} / {total} "
        f"| {new_raw / 1e6:.2f} MB ({100 * new_raw / len(changed):.2f}%) "
        f"| {new_stored / 1e6:.2f} MB | {len(base) / elapsed / 1e6:.0f} MB/s |"
    )


def main() -> None:
    base = Path(sys.argv[1]).read_bytes()
    changed = Path(sys.argv[2]).read_bytes()
    print(f"base {len(base) / 1e6:.1f} MB, changed {len(changed) / 1e6:.1f} MB")
    print(
        "| avg | chunks (base) | mean chunk | compression | new chunks / total "
        "| new raw bytes | new stored bytes | cut+hash+zstd (1 thread) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for avg in (16384, 32768, 65536, 131072, 262144):
        print(measure(base, changed, avg))


if __name__ == "__main__":
    main()

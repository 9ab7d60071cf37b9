"""Peak RSS of the import check (``checked_tar``: strict parsing, safety and
restorability checks, canonical re-encoding) over many empty members.

Run: PYTHONPATH=src python bench/import_check_memory.py [--members 1000000] [--kind files]

Every path of the archive is remembered (a later member may go through, link to
or replace any of them), so memory grows with the member count; this shows by
how much. ``--kind symlinks`` makes every member a symlink, the case the symlink
check remembers on top. Headers are made from one template, so generating them
costs little next to the check.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import AsyncIterator, Iterator

from docksnap.service.archive import checked_tar
from docksnap.tarstream import TarEntry, canonical_header

BATCH = 2000


def members(count: int, kind: str) -> Iterator[bytes]:
    batch: list[bytes] = []
    for i in range(count):
        if i % 1000 == 0:
            directory = TarEntry(f"d{i // 1000:07d}", "dir", 0o755, 0, 0, 0, 0, "", 0)
            batch.append(canonical_header(directory))
        path = f"d{i // 1000:07d}/m{i:09d}"
        if kind == "symlinks":
            entry = TarEntry(path, "symlink", 0o777, 0, 0, 0, 0, "/etc", 0)
        else:
            entry = TarEntry(path, "file", 0o644, 0, 0, 0, 0, "", 0)
        batch.append(canonical_header(entry))
        if len(batch) >= BATCH:
            yield b"".join(batch)
            batch = []
    batch.append(bytes(1024))
    yield b"".join(batch)


async def run(count: int, kind: str) -> None:
    async def source() -> AsyncIterator[bytes]:
        for piece in members(count, kind):
            yield piece

    started = time.monotonic()
    out = 0
    async for piece in checked_tar(source()):
        out += len(piece)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed = time.monotonic() - started
    print(f"{count} {kind}: peak RSS {peak:.0f} MiB, {elapsed:.0f} s, {out} bytes out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--kind", choices=("files", "symlinks"), default="files")
    args = parser.parse_args()
    asyncio.run(run(args.members, args.kind))


if __name__ == "__main__":
    main()

"""End-to-end speed of the chunked store over S3, for several average chunk sizes.

Usage: python bench/s3_store.py [--size 128M] [--avg 64K,256K,512K,1M] [--io-workers 16]
       [--local]

Talks to the S3 server named by AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (``eval "$(scripts/s3-server env)"``), in a bucket it creates
and removes. The stream is half incompressible, half text. For each average chunk
size (FastCDC min = avg/4, max = avg*4 up to 2 MiB) it reports: a first save (every chunk
new), a second save of the same stream (every chunk found by HEAD, none written),
and a full read back; ``--local`` adds the same on a local directory for scale.
The numbers in docs/S3.md come from this script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
from botocore.config import Config
from s3_requests import empty_bucket  # run from bench/, as its sibling

from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore, ChunkerParams
from docksnap.store.objects import ObjectStore
from docksnap.store.objects.local import LocalObjectStore
from docksnap.store.objects.s3 import S3Config, S3ObjectStore

SOURCE = SnapshotSource(container="bench", image="bench")
PIECE = 1024 * 1024


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def make_stream(size: int) -> bytes:
    """Not a tar: the store's chunker does not parse it, but the index does, so wrap it."""
    import io
    import tarfile

    rng = random.Random(7)
    words = [f"word{n}".encode() for n in range(2000)]
    lines = [b" ".join(rng.choices(words, k=10)) + b"\n" for _ in range(20000)]
    text = b"".join(rng.choices(lines, k=size // 2 // 60))[: size // 2]
    files = {"random.bin": os.urandom(size // 2), "text.txt": text}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


async def timed_save(store: ChunkedStore, data: bytes) -> tuple[float, str]:
    record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/bench")
    started = time.perf_counter()
    info = await store.save(record, pieces(data), source=SOURCE)
    return time.perf_counter() - started, info.id


async def timed_read(store: ChunkedStore, snapshot_id: str) -> float:
    started = time.perf_counter()
    async with store.open(snapshot_id) as reader:
        async for _ in reader:
            pass
    return time.perf_counter() - started


async def measure(label: str, objects: ObjectStore, avg: int, data: bytes, io_workers: int) -> str:
    # The store cuts 4 MiB segments and needs max_size <= half a segment.
    params = ChunkerParams(avg_size=avg, min_size=avg // 4, max_size=min(avg * 4, 2 * 1024**2))
    store = ChunkedStore(objects, chunker=params, io_workers=io_workers)
    try:
        first, snapshot_id = await timed_save(store, data)
        second, _ = await timed_save(store, data)
        read = await timed_read(store, snapshot_id)
        stats = await store.stats()
    finally:
        await store.close()
    mib = len(data) / 1024**2
    return (
        f"{label:6} avg {avg // 1024:5d} KiB {stats.chunks:6d} chunks io {io_workers:3d} | "
        f"save {mib / first:6.1f} MiB/s | resave {mib / second:6.1f} MiB/s | "
        f"read {mib / read:6.1f} MiB/s"
    )


def admin() -> object:
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="128M")
    parser.add_argument("--avg", default="64K,256K,512K,1M")
    parser.add_argument("--io-workers", default="16")
    parser.add_argument("--local", action="store_true")
    args = parser.parse_args()
    data = make_stream(parse_size(args.size))
    s3 = admin()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    try:
        for avg in map(parse_size, args.avg.split(",")):
            for workers in map(int, args.io_workers.split(",")):
                if args.local:
                    with tempfile.TemporaryDirectory() as tmp:
                        local = LocalObjectStore(Path(tmp))
                        print(await measure("local", local, avg, data, workers))
                config = S3Config.from_url(f"s3://{bucket}/avg-{avg}-{workers}")
                print(await measure("s3", S3ObjectStore(config), avg, data, workers))
                empty_bucket(s3, bucket)
    finally:
        empty_bucket(s3, bucket)
        s3.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]


if __name__ == "__main__":
    asyncio.run(main())

"""Saving into and reading back from a chunked store, for the tests of its parts.

One place for what the store's unit tests (packs, verify and repair, the v1
writer, per-file cuts) all do around the code they test: a store on local disk
without fsync, a record, a save of a tar stream in pieces, the stream read back,
and the files the store wrote.
"""

from __future__ import annotations

from pathlib import Path

from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotInfo, SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from tests.conformance.streams import pieces

SOURCE = SnapshotSource(container="unit", image="docksnap-test:latest")


def new_store(root: Path, **options: object) -> ChunkedStore:
    """A chunked store in ``root`` (fsync off: these tests do not cut the power)."""
    return ChunkedStore(LocalObjectStore(root, fsync=False), **options)  # type: ignore[arg-type]


def new_record() -> DirectorySnapshot:
    return DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/data")


async def save(store: ChunkedStore, data: bytes, sizes: tuple[int, ...] = (65536,)) -> SnapshotInfo:
    """Save the tar stream ``data`` as a new snapshot, in pieces cycling through ``sizes``."""
    return await store.save(new_record(), pieces(data, sizes), source=SOURCE)


async def read_back(store: ChunkedStore, snapshot_id: str) -> bytes:
    async with store.open(snapshot_id) as reader:
        return b"".join([piece async for piece in reader])


def files(root: Path, prefix: str) -> list[Path]:
    """The files under ``root/prefix``, sorted (none if it does not exist)."""
    base = root / prefix
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []

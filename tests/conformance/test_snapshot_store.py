"""The SnapshotStore contract, run against every store in conftest.SNAPSHOT_STORES.

Stores receive a directory's tar stream and give it back; these tests hold each
one to what the service layer relies on: atomic saves, exact round trips, and
typed errors for unknown ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from docksnap.errors import SnapshotNotFoundError, SnapshotTooLargeError
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotInfo, SnapshotSource, SnapshotStore
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from tests.conformance.streams import (
    build_tar,
    failing_after,
    pieces,
    random_files,
    tar_members,
    text_files,
)

IMAGE = "docksnap-test:latest"
SOURCE = SnapshotSource(container="conformance", image=IMAGE)


def new_record(name: str | None = None) -> DirectorySnapshot:
    return DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/data", name=name)


async def save(store: SnapshotStore, data: bytes, name: str | None = None) -> SnapshotInfo:
    return await store.save(new_record(name), pieces(data), source=SOURCE)


async def read_back(store: SnapshotStore, snapshot_id: str) -> list[tuple[object, ...]]:
    """The members of the snapshot's stream; its stated size, if any, must be exact."""
    async with store.open(snapshot_id) as reader:
        data = b"".join([piece async for piece in reader])
        assert reader.size in (None, len(data))
    return tar_members(data)


async def listed_ids(store: SnapshotStore) -> set[str]:
    return {info.id for info in await store.list()}


async def test_save_then_open_returns_the_same_stream(snapshot_store: SnapshotStore) -> None:
    data = build_tar(text_files(20, 30_000) | random_files(2, 400_000))
    info = await snapshot_store.save(new_record("first"), pieces(data), source=SOURCE)
    assert info.size == len(data)
    assert info.snapshot.size == len(data)
    assert info.name == "first"
    assert info.dir == "/data"
    async with snapshot_store.open(info.id) as reader:
        back = b"".join([piece async for piece in reader])
        assert reader.size in (None, len(back))
    assert tar_members(back) == tar_members(data)


async def test_get_returns_the_saved_record(snapshot_store: SnapshotStore) -> None:
    data = build_tar(text_files(3, 1000))
    info = await save(snapshot_store, data, name="named")
    got = await snapshot_store.get(info.id)
    assert got.snapshot.id == info.id
    assert got.size == len(data)
    assert got.name == "named"
    assert got.source == SOURCE


async def _open_only(store: SnapshotStore, snapshot_id: str) -> None:
    async with store.open(snapshot_id):
        pass


@pytest.mark.parametrize("operation", ["open", "get", "delete", "index", "touch"])
async def test_unknown_ids_are_not_found(snapshot_store: SnapshotStore, operation: str) -> None:
    unknown = new_snapshot_id()
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "open": lambda: _open_only(snapshot_store, unknown),
        "get": lambda: snapshot_store.get(unknown),
        "delete": lambda: snapshot_store.delete(unknown),
        "index": lambda: snapshot_store.index(unknown),
        "touch": lambda: snapshot_store.touch(unknown, 0.0),
    }
    with pytest.raises(SnapshotNotFoundError) as caught:
        await calls[operation]()
    assert caught.value.snapshot_id == unknown


async def test_index_lists_the_members(snapshot_store: SnapshotStore) -> None:
    files = {"a.txt": b"alpha", "sub/b.bin": bytes(3000), "sub/c": b""}
    info = await save(snapshot_store, build_tar(files))
    entries = await snapshot_store.index(info.id)
    assert entries[0].path == "."
    assert sorted((e.path, e.size) for e in entries if e.type == "file") == [
        ("a.txt", 5),
        ("sub/b.bin", 3000),
        ("sub/c", 0),
    ]


async def test_delete_then_get_fails(snapshot_store: SnapshotStore) -> None:
    info = await save(snapshot_store, build_tar(text_files(2, 500)))
    await snapshot_store.delete(info.id)
    with pytest.raises(SnapshotNotFoundError):
        await snapshot_store.get(info.id)
    assert info.id not in await listed_ids(snapshot_store)


async def test_list_contains_what_was_saved(snapshot_store: SnapshotStore) -> None:
    before = await listed_ids(snapshot_store)
    saved = [await save(snapshot_store, build_tar(text_files(2, 100, seed=n))) for n in range(3)]
    assert await listed_ids(snapshot_store) == before | {info.id for info in saved}


async def test_a_stream_over_the_size_limit_leaves_nothing(snapshot_store: SnapshotStore) -> None:
    before = await listed_ids(snapshot_store)
    data = build_tar(random_files(8, 1_000_000))
    error = SnapshotTooLargeError("/data", 4 << 20)
    record = new_record()
    with pytest.raises(SnapshotTooLargeError) as caught:
        await snapshot_store.save(record, failing_after(data, 4 << 20, error), source=SOURCE)
    assert caught.value is error
    assert await listed_ids(snapshot_store) == before
    with pytest.raises(SnapshotNotFoundError):
        await snapshot_store.get(record.id)


async def test_an_interrupted_write_leaves_nothing(snapshot_store: SnapshotStore) -> None:
    before = await listed_ids(snapshot_store)
    data = build_tar(random_files(4, 1_000_000))
    error = RuntimeError("stream broke")
    with pytest.raises(RuntimeError) as caught:
        await snapshot_store.save(new_record(), failing_after(data, 1 << 20, error), source=SOURCE)
    assert caught.value is error
    assert await listed_ids(snapshot_store) == before


async def test_concurrent_writers_all_land(snapshot_store: SnapshotStore) -> None:
    streams = [
        build_tar(text_files(10, 20_000, seed=n) | random_files(1, 300_000, seed=n))
        for n in range(4)
    ]
    saved = await asyncio.gather(*(save(snapshot_store, data) for data in streams))
    assert {info.id for info in saved} <= await listed_ids(snapshot_store)
    for info, data in zip(saved, streams, strict=True):
        assert info.size == len(data)
        assert await read_back(snapshot_store, info.id) == tar_members(data)


async def test_a_snapshot_can_be_read_twice_and_concurrently(
    snapshot_store: SnapshotStore,
) -> None:
    data = build_tar(random_files(3, 500_000))
    info = await save(snapshot_store, data)
    first, second = await asyncio.gather(
        read_back(snapshot_store, info.id), read_back(snapshot_store, info.id)
    )
    assert first == second == tar_members(data)


async def test_touch_moves_last_used_forward(snapshot_store: SnapshotStore) -> None:
    info = await save(snapshot_store, build_tar(text_files(1, 100)))
    await snapshot_store.touch(info.id, info.created_at + 60)
    got = await snapshot_store.get(info.id)
    assert got.last_used_at >= info.last_used_at


async def test_verify_and_stats_on_a_healthy_store(snapshot_store: SnapshotStore) -> None:
    data = build_tar(text_files(5, 10_000))
    info = await save(snapshot_store, data)
    report = await snapshot_store.verify(info.id)
    assert report.ok
    assert report.snapshots_checked == 1
    stats = await snapshot_store.stats()
    assert stats.snapshots >= 1
    assert stats.logical_bytes >= len(data)


async def test_gc_keeps_committed_snapshots(snapshot_store: SnapshotStore) -> None:
    data = build_tar(text_files(5, 10_000))
    info = await save(snapshot_store, data)
    await snapshot_store.gc(grace=0)
    assert await read_back(snapshot_store, info.id) == tar_members(data)


async def test_copy_from_another_store_round_trips(
    snapshot_store: SnapshotStore, tmp_path: Path
) -> None:
    """Every store accepts a copy from a store of another kind (the streamed path),
    and copying again changes nothing."""
    other = ChunkedStore(LocalObjectStore(tmp_path / "other", fsync=False))
    try:
        data = build_tar(text_files(4, 20_000) | random_files(1, 300_000))
        info = await save(other, data, name="copied")
        report = await snapshot_store.copy_from(other, info.id)
        assert report.snapshot.id == info.id
        assert report.snapshot.name == "copied"
        assert await read_back(snapshot_store, info.id) == tar_members(data)
        again = await snapshot_store.copy_from(other, info.id)
        assert again.snapshot.id == info.id
        assert again.bytes_copied == 0
        assert again.chunks_copied == 0
    finally:
        await other.close()

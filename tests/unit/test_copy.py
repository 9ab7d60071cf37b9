"""Copying snapshots between stores, on local directories (S3: tests/integration/test_s3.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import docksnap
from docksnap.errors import (
    InvalidArgumentError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    StoreError,
)
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.copy import copy_snapshot
from docksnap.store.objects.local import LocalObjectStore
from tests.conformance.streams import build_tar, pieces, random_files, text_files

SOURCE = SnapshotSource(container="box", image="img:latest")
DATA = build_tar(random_files(3, 200_000) | text_files(10, 8_000))


class Opaque:
    """A store that is not a ChunkedStore to copy_snapshot: forces the streaming path."""

    def __init__(self, inner: ChunkedStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[ChunkedStore, ChunkedStore]]:
    source = ChunkedStore(LocalObjectStore(tmp_path / "source", fsync=False))
    target = ChunkedStore(LocalObjectStore(tmp_path / "target", fsync=False))
    yield source, target
    await source.close()
    await target.close()


async def save(store: ChunkedStore, data: bytes = DATA, ttl: float | None = None) -> str:
    record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/data", name="n")
    return (await store.save(record, pieces(data), source=SOURCE, ttl=ttl)).id


async def read_back(store: Any, snapshot_id: str) -> bytes:
    async with store.open(snapshot_id) as reader:
        return b"".join([piece async for piece in reader])


def corrupt_one_chunk(root: Path) -> Path:
    """Flip a byte in the middle of the largest pack: inside some chunk's data."""
    victim = max((p for p in (root / "packs").rglob("*") if p.is_file()), key=_size)
    damaged = bytearray(victim.read_bytes())
    damaged[len(damaged) // 3] ^= 0x01
    victim.write_bytes(bytes(damaged))
    return victim


def _size(path: Path) -> int:
    return path.stat().st_size


async def test_chunked_copy_moves_only_what_the_target_lacks(
    stores: tuple[ChunkedStore, ChunkedStore],
) -> None:
    source, target = stores
    first = await save(source)
    report = await copy_snapshot(source, target, first)
    assert report.chunks_copied > 0
    assert not report.streamed
    # A second snapshot that starts with the first: only its new chunks travel
    # (all of the first's but the one cut differently at the seam).
    second = await save(source, DATA + build_tar(text_files(1, 300_000, seed=9)))
    again = await copy_snapshot(source, target, second)
    assert again.chunks_present >= report.chunks_copied - 1
    assert 0 < again.chunks_copied < report.chunks_copied
    for snapshot_id in (first, second):
        assert await read_back(target, snapshot_id) == await read_back(source, snapshot_id)
    assert (await target.verify(read_data=True)).ok


async def test_chunked_copy_is_idempotent_and_keeps_the_record(
    stores: tuple[ChunkedStore, ChunkedStore],
) -> None:
    source, target = stores
    snapshot_id = await save(source, ttl=600.0)
    await source.touch(snapshot_id, 2_000_000_000.0)
    await copy_snapshot(source, target, snapshot_id)
    repeat = await copy_snapshot(source, target, snapshot_id)
    assert repeat.chunks_copied == 0
    original, copied = await source.get(snapshot_id), await target.get(snapshot_id)
    assert copied == original  # id, times, ttl, source, last use


async def test_chunked_copy_of_a_corrupt_chunk_commits_nothing(
    stores: tuple[ChunkedStore, ChunkedStore], tmp_path: Path
) -> None:
    source, target = stores
    snapshot_id = await save(source)
    victim = corrupt_one_chunk(tmp_path / "source")
    with pytest.raises(SnapshotCorruptError, match=victim.name):
        await copy_snapshot(source, target, snapshot_id)
    assert await target.list() == []


async def test_streamed_copy_round_trips(stores: tuple[ChunkedStore, ChunkedStore]) -> None:
    source, target = stores
    snapshot_id = await save(source)
    report = await copy_snapshot(Opaque(source), target, snapshot_id)
    assert report.streamed
    assert report.bytes_copied == len(DATA)
    assert await read_back(target, snapshot_id) == DATA
    info = await target.get(snapshot_id)
    assert (info.name, info.dir, info.source) == ("n", "/data", SOURCE)
    again = await copy_snapshot(Opaque(source), target, snapshot_id)
    assert again.bytes_copied == 0


async def test_streamed_copy_of_a_corrupt_chunk_commits_nothing(
    stores: tuple[ChunkedStore, ChunkedStore], tmp_path: Path
) -> None:
    source, target = stores
    snapshot_id = await save(source)
    corrupt_one_chunk(tmp_path / "source")
    with pytest.raises(SnapshotCorruptError):
        await copy_snapshot(Opaque(source), target, snapshot_id)
    assert await target.list() == []


async def test_a_different_snapshot_under_the_same_id_is_refused(
    stores: tuple[ChunkedStore, ChunkedStore],
) -> None:
    source, target = stores
    snapshot_id = await save(source)
    record = DirectorySnapshot(id=snapshot_id, size=0, dir="/other")
    await target.save(record, pieces(build_tar(text_files(1, 10))), source=SOURCE)
    with pytest.raises(StoreError, match="different content"):
        await copy_snapshot(source, target, snapshot_id)


async def test_unknown_ids_and_same_store(stores: tuple[ChunkedStore, ChunkedStore]) -> None:
    source, target = stores
    with pytest.raises(SnapshotNotFoundError):
        await copy_snapshot(source, target, new_snapshot_id())
    with pytest.raises(InvalidArgumentError, match="same store"):
        await copy_snapshot(source, source, new_snapshot_id())


async def test_catalogue_copy_needs_an_opener_for_urls(
    stores: tuple[ChunkedStore, ChunkedStore], tmp_path: Path
) -> None:
    source, _ = stores
    snapshot_id = await save(source)
    with pytest.raises(InvalidArgumentError, match="store URL"):
        await docksnap.Catalogue(source).copy(snapshot_id, to=(tmp_path / "x").as_uri())
    opened: list[str] = []

    def opener(url: str) -> ChunkedStore:
        opened.append(url)
        return ChunkedStore(LocalObjectStore(Path(url.removeprefix("file://"))))

    catalogue = docksnap.Catalogue(source, open_store=opener)
    report = await catalogue.copy(snapshot_id, to=(tmp_path / "by-url").as_uri())
    assert report.snapshot.id == snapshot_id
    assert opened == [(tmp_path / "by-url").as_uri()]


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


async def test_a_per_file_snapshot_copied_into_a_version_1_store_twice(
    stores: tuple[ChunkedStore, ChunkedStore], tmp_path: Path
) -> None:
    """A version-1 store records the stream's digest, the per-file source the chunk
    list's: the second copy must still see the same snapshot and write nothing."""
    source, _ = stores
    target = ChunkedStore(LocalObjectStore(tmp_path / "v1", fsync=False), format_version=1)
    try:
        snapshot_id = await save(source)
        assert await source.is_per_file(snapshot_id)
        first = await copy_snapshot(source, target, snapshot_id)
        assert first.streamed
        assert first.bytes_copied == len(DATA)
        written = _files(tmp_path / "v1")
        again = await copy_snapshot(source, target, snapshot_id)
        assert again.bytes_copied == 0
        assert again.snapshot == first.snapshot
        assert _files(tmp_path / "v1") == written
        assert await read_back(target, snapshot_id) == DATA
    finally:
        await target.close()


async def test_a_different_snapshot_in_a_version_1_store_is_refused(
    stores: tuple[ChunkedStore, ChunkedStore], tmp_path: Path
) -> None:
    source, _ = stores
    target = ChunkedStore(LocalObjectStore(tmp_path / "v1", fsync=False), format_version=1)
    try:
        snapshot_id = await save(source)
        record = DirectorySnapshot(id=snapshot_id, size=0, dir="/data", name="n")
        # The same length, one byte of the first file's content changed: only its
        # bytes tell the two apart.
        other = bytearray(DATA)
        other[6000] ^= 0x01
        await target.save(record, pieces(bytes(other)), source=SOURCE)
        written = _files(tmp_path / "v1")
        with pytest.raises(StoreError, match=f"{snapshot_id}.*different content"):
            await copy_snapshot(source, target, snapshot_id)
        assert _files(tmp_path / "v1") == written
        assert await read_back(target, snapshot_id) == bytes(other)
    finally:
        await target.close()

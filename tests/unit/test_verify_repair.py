"""verify tells damage from faults, and ``verify --repair`` rewrites damaged chunks
(issue 10, defects 6 and 7), on the real local store; the faults a disk will not
produce on demand come from :class:`tests.faultstore.FaultyObjectStore`."""

from __future__ import annotations

from pathlib import Path

import pytest

from docksnap.errors import StoreError, StoreUnavailableError
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from tests.chunkedsupport import files, new_store, read_back, save
from tests.conformance.streams import build_tar, random_files, text_files
from tests.faultstore import FaultyObjectStore


class UnavailableStore(FaultyObjectStore):
    """Armed methods fail as an S3 store does once its retries are spent."""

    def _gate(self, method: str, key: str) -> None:
        if self.check(method) is not None:
            raise StoreUnavailableError(self.url, f"{method} {key}: still failing after 4 attempts")


def flip_a_byte(root: Path) -> Path:
    """Damage the largest pack in the middle of a chunk's stored bytes."""
    victim = max(files(root, "packs"), key=lambda p: p.stat().st_size)
    damaged = bytearray(victim.read_bytes())
    damaged[len(damaged) // 3] ^= 0x40
    victim.write_bytes(bytes(damaged))
    return victim


# --- faults are not damage ------------------------------------------------------------


@pytest.mark.parametrize("methods", [{"get"}, {"get_range"}], ids=["manifests", "chunks"])
async def test_a_transient_fault_raises_and_quarantines_nothing(
    root: Path, methods: set[str]
) -> None:
    """A read that could not be made says nothing about the data: verify raises
    StoreUnavailableError instead of reporting (and quarantining) damage."""
    objects = UnavailableStore(LocalObjectStore(root, fsync=False))
    store = ChunkedStore(objects)
    try:
        data = build_tar(random_files(3, 300_000))
        info = await save(store, data)
        objects.arm("unavailable", methods)
        with pytest.raises(StoreUnavailableError):
            await store.verify(read_data=True)
        objects.disarm()
        assert objects.fired > 0
        assert files(root, "quarantine") == []
        assert (await store.verify(read_data=True)).ok
        assert await read_back(store, info.id) == data
    finally:
        await store.close()


async def test_a_persistent_read_error_is_reported_not_quarantined(root: Path) -> None:
    """A local disk's EIO on a chunk is damage to that disk's data: listed, so that
    every damaged snapshot is named, but not quarantined (a re-read may succeed)."""
    objects = FaultyObjectStore(LocalObjectStore(root, fsync=False))
    store = ChunkedStore(objects)
    try:
        info = await save(store, build_tar(random_files(2, 300_000)))
        objects.arm("eio", {"get_range"})
        report = await store.verify(read_data=True)
        objects.disarm()
        assert {p.snapshot_id for p in report.problems} == {info.id}
        assert all("Input/output error" in p.detail for p in report.problems)
        assert files(root, "quarantine") == []
    finally:
        await store.close()


# --- gc's own lease -------------------------------------------------------------------


async def test_a_gc_that_could_not_release_its_lease_does_not_block_the_next(
    root: Path,
) -> None:
    """Defect 6: a gc of this process that ended without deleting ``locks/gc`` (its
    connection died) is known to be over; the next gc takes the lease at once."""
    objects = FaultyObjectStore(LocalObjectStore(root, fsync=False))
    store = ChunkedStore(objects)
    try:
        await save(store, build_tar(text_files(2, 1_000)))
        objects.arm("eio", {"delete"})
        with pytest.raises(StoreError):
            await store.gc(grace=0)
        objects.disarm()
        assert (root / "locks" / "gc").exists()  # left behind
        await store.gc(grace=0)
        assert not (root / "locks" / "gc").exists()
    finally:
        await store.close()


# --- repair ------------------------------------------------------------------------------


async def test_repair_rewrites_a_damaged_chunk_from_another_store(
    store: ChunkedStore, root: Path, tmp_path: Path
) -> None:
    """Defect 7: ``verify --repair --from URL`` rewrites what verify quarantined from a
    store that still has the chunk; afterwards every snapshot verifies and reads."""
    data = build_tar(random_files(3, 300_000))
    old = await save(store, data)
    other = new_store(tmp_path / "other")
    try:
        await save(other, data)  # the same data saved on its own: the same chunks
        flip_a_byte(root)
        found = await store.verify(read_data=True)
        assert [p.snapshot_id for p in found.problems] == [old.id]
        assert files(root, "quarantine")

        report = await store.verify(repair=True, sources=[other])
        assert report.ok, report.problems
        assert [r.chunk for r in report.repaired] == [found.problems[0].object]
        assert report.repaired[0].snapshot_ids == (old.id,)
        assert report.repaired[0].source == other.url
        assert (await store.verify(read_data=True)).ok
        assert await read_back(store, old.id) == data
    finally:
        await other.close()


async def test_repair_without_a_source_names_the_snapshots_left_damaged(
    store: ChunkedStore, root: Path
) -> None:
    data = build_tar(random_files(3, 300_000))
    damaged = await save(store, data)
    intact = await save(store, build_tar(text_files(3, 5_000)))
    flip_a_byte(root)
    report = await store.verify(repair=True)
    assert report.repaired == ()
    assert {p.snapshot_id for p in report.problems} == {damaged.id}
    assert intact.id not in {p.snapshot_id for p in report.problems}
    # A save of the intact data still stores the chunk afresh and heals the old one.
    fresh = await save(store, data)
    assert await read_back(store, fresh.id) == data
    assert (await store.verify(repair=True)).ok


async def test_repair_uses_an_intact_copy_in_the_same_store(tmp_path: Path) -> None:
    """A version-1 snapshot's chunk object is intact while a packed snapshot's copy
    of the same chunk is damaged: repair re-packs the chunk from it. (Stream
    chunking in both, so that the two share chunks.)"""
    root = tmp_path / "store"
    data = build_tar(random_files(3, 300_000))
    v1 = new_store(root, format_version=1)
    try:
        old = await save(v1, data)
    finally:
        await v1.close()
    store = new_store(root, per_file=False)
    try:
        new = await save(store, data)
        assert files(root, "packs")
        assert files(root, "chunks")
        flip_a_byte(root)
        report = await store.verify(repair=True)
        assert report.ok, report.problems
        assert [r.snapshot_ids for r in report.repaired] == [(new.id,)]
        assert report.repaired[0].source.startswith("chunks/")
        assert old.id != new.id
        assert (await store.verify(read_data=True)).ok
        assert await read_back(store, new.id) == data
    finally:
        await store.close()


async def test_repair_replaces_a_missing_pack(
    store: ChunkedStore, root: Path, tmp_path: Path
) -> None:
    data = build_tar(random_files(2, 300_000))
    old = await save(store, data)
    other = new_store(tmp_path / "other")
    try:
        await save(other, data)
        for pack in files(root, "packs"):
            pack.unlink()
        report = await store.verify(repair=True, sources=[other])
        assert report.ok, report.problems
        assert {r.snapshot_ids for r in report.repaired} == {(old.id,)}
        assert await read_back(store, old.id) == data
    finally:
        await other.close()


async def test_repair_needs_the_data_read(store: ChunkedStore) -> None:
    with pytest.raises(ValueError, match="read_data"):
        await store.verify(read_data=False, repair=True)

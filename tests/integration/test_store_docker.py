"""The default content-addressed store, end to end through a real Docker engine.

Deduplication of real archive streams, corruption caught before a container
starts, and lifecycle operations seen from the public API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import docksnap
from docksnap.service.archive import COMPARED_FIELDS
from tests.conftest import SESSION_LABELS, TEST_IMAGE, read_file, sleeper, unique_name

pytestmark = pytest.mark.docker

MB = 1_000_000
# ~50 MB: many small files and a few large ones, half compressible text.
_MAKE_DATA = (
    "mkdir -p /data/src /data/big && i=0; while [ $i -lt 400 ]; do "
    "head -c 40000 /dev/urandom > /data/src/f$i.bin; seq 1 4000 > /data/src/t$i.txt; "
    "i=$((i+1)); done; head -c 15000000 /dev/urandom > /data/big/a; seq 1 1500000 > /data/big/b"
)


@pytest.fixture
async def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
async def client(docker_engine: None, store_dir: Path) -> AsyncIterator[docksnap.Client]:
    async with docksnap.Client(store=store_dir.as_uri(), labels=SESSION_LABELS) as client:
        yield client


@pytest.fixture
async def box(client: docksnap.Client) -> AsyncIterator[docksnap.Container]:
    box = client.container(unique_name())
    await box.start(TEST_IMAGE, entrypoint=sleeper(_MAKE_DATA + " && touch /tmp/.ready"))
    try:
        for _ in range(600):
            if await read_file(client, box.name, "/tmp/.ready") is not None:
                break
            await asyncio.sleep(0.1)
        yield box
    finally:
        await box.destroy()


async def _stored(client: docksnap.Client) -> int:
    return (await client.snapshots.stats()).stored_bytes


async def _run(box: docksnap.Container, command: str) -> None:
    proc = await asyncio.create_subprocess_exec("docker", "exec", box.name, "sh", "-c", command)
    assert await proc.wait() == 0


async def test_resnapshots_store_only_what_changed(
    client: docksnap.Client, box: docksnap.Container
) -> None:
    """Unchanged: < 1% new bytes. ~1% of bytes changed: < 5% new bytes."""
    first = await box.snapshot_directory("/data")
    assert first.size > 50 * MB
    before = await _stored(client)
    await box.snapshot_directory("/data")
    unchanged = await _stored(client) - before
    assert unchanged < 0.01 * first.size, f"unchanged resnapshot stored {unchanged} bytes"

    await _run(
        box,
        "seq 1 2000 >> /data/src/t7.txt && head -c 300000 /dev/urandom > /data/new"
        " && rm /data/src/f3.bin",
    )
    before = await _stored(client)
    third = await box.snapshot_directory("/data")
    changed = await _stored(client) - before
    assert changed < 0.05 * third.size, f"~1% change stored {changed} bytes"
    stats = await client.snapshots.stats()
    assert stats.dedup_ratio > 2.5  # three snapshots of nearly the same data


async def test_corrupt_chunk_fails_restore_before_start(
    client: docksnap.Client, box: docksnap.Container, store_dir: Path
) -> None:
    """One flipped byte: restore raises SnapshotCorruptError, leaves nothing; verify names it."""
    snap = await box.snapshot_directory("/data")
    chunk = max(  # the largest pack: its middle is some chunk's data
        (p for p in (store_dir / "packs").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))

    target = client.container(unique_name())
    with pytest.raises(docksnap.SnapshotCorruptError, match=chunk.name[:16]):
        await target.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert not await target.refresh()
    with pytest.raises(docksnap.ContainerNotFoundError):
        await target.monitor()
    volumes = await client.docker.list_volumes({"io.docksnap.container": target.name})
    assert volumes == []

    report = await client.snapshots.verify(snap.id)
    assert not report.ok
    assert any(chunk.name in problem.detail for problem in report.problems)


async def test_restore_refreshes_last_use_and_ttl_expires(
    client: docksnap.Client, box: docksnap.Container
) -> None:
    """A restore counts as use; expire() deletes only snapshots idle past their TTL."""
    kept = await box.snapshot_directory("/data/src", ttl=100)
    dropped = await box.snapshot_directory("/data/big", ttl=100)
    info = await client.snapshots.get(kept.id)
    target = client.container(unique_name())
    try:
        await target.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[kept])
    finally:
        await target.destroy()
    refreshed = await client.snapshots.get(kept.id)
    assert refreshed.last_used_at > info.last_used_at
    idle_since = (await client.snapshots.get(dropped.id)).last_used_at
    assert refreshed.last_used_at > idle_since
    expired = await client.snapshots.expire(now=idle_since + 100.0 + 0.001)
    assert expired == [dropped.id]
    assert [s.id async for s in client.snapshots.list()] == [kept.id]


async def test_prune_keeps_newest_per_name(
    client: docksnap.Client, box: docksnap.Container
) -> None:
    """prune(keep_last=1) keeps the newest snapshot of each name and deletes the rest."""
    a1 = await box.snapshot_directory("/data/src", name="a")
    a2 = await box.snapshot_directory("/data/src", name="a")
    b1 = await box.snapshot_directory("/data/src", name="b")
    unnamed = await box.snapshot_directory("/data/src")
    deleted = await client.snapshots.prune(keep_last=1)
    assert deleted == [a1.id]
    remaining = {s.id async for s in client.snapshots.list()}
    assert remaining == {a2.id, b1.id, unnamed.id}
    assert await client.snapshots.prune(keep_last=1, per_name=False) != []
    assert [s.id async for s in client.snapshots.list()] == [unnamed.id]


async def test_files_and_diff(client: docksnap.Client, box: docksnap.Container) -> None:
    """The file index lists what the tar holds; diff shows added, removed and changed paths."""
    old = await box.snapshot_directory("/data")
    await _run(box, "echo more >> /data/src/t1.txt && echo n > /data/added && rm /data/src/f2.bin")
    new = await box.snapshot_directory("/data")
    files = {entry.path: entry for entry in await client.snapshots.files(old.id)}
    assert files["big/a"].size == 15_000_000
    assert files["src"].type == "dir"
    diff = await client.snapshots.diff(old.id, new.id)
    assert [e.path for e in diff.added] == ["added"]
    assert [e.path for e in diff.removed] == ["src/f2.bin"]
    assert "src/t1.txt" in [new_entry.path for _, new_entry in diff.changed]
    changed = {change.new.path: change for change in diff.changed}
    assert "size" in changed["src/t1.txt"].fields
    for change in diff.changed:  # names exactly the fields that differ
        assert change.fields == tuple(
            f for f in COMPARED_FIELDS if getattr(change.old, f) != getattr(change.new, f)
        )
        assert change.fields


async def test_one_answer_and_progress_for_snapshot_and_restore(
    store_dir: Path, box: docksnap.Container
) -> None:
    """snapshot_directory returns the committed info; the hook sees both streams move."""
    events: list[docksnap.ProgressEvent] = []
    async with docksnap.Client(
        store=store_dir.as_uri(), labels=SESSION_LABELS, progress=events.append
    ) as client:
        snap = await client.container(box.name).snapshot_directory("/data/src", ttl=60)
        assert snap.info is not None
        assert snap.info == await client.snapshots.get(snap.id)
        assert snap.info.source is not None
        assert snap.info.source.container == box.name
        assert snap.info.ttl == 60
        target = client.container(unique_name())
        try:
            await target.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
        finally:
            await target.destroy()
    ends = {
        e.operation: e
        for e in events
        if e.phase in (docksnap.Phase.FINISHED, docksnap.Phase.FAILED)
    }
    assert set(ends) == {docksnap.Operation.SNAPSHOT, docksnap.Operation.RESTORE}
    for end in ends.values():
        assert end.phase is docksnap.Phase.FINISHED
        assert end.snapshot_id == snap.id
        assert end.bytes_done == snap.size
    assert ends[docksnap.Operation.RESTORE].bytes_total == snap.size

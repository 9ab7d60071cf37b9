"""Issue 12, items 5-6: restores through the host's restore cache, on the real engine.

The first restore of a snapshot fills a cache entry (a labelled volume); every
restore mounts a copy-on-write overlay view of it, private to its container.
These tests need the engine on this host and root (as the suite's engine is);
they fail, never skip, where the cache cannot be used.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

import docksnap
from docksnap import labels as lbl
from docksnap.service import restore_cache
from docksnap.service.progress import Operation, Phase, ProgressEvent
from docksnap.service.restore_cache import CacheEntry
from docksnap.store.base import TarReader
from tests.conftest import SESSION_LABELS, TEST_IMAGE, read_file, sleeper, unique_name
from tests.integration.test_cli import Cli

pytestmark = pytest.mark.docker


@pytest.fixture
async def cached(docker_engine: None, tmp_path: Path) -> AsyncIterator[docksnap.Client]:
    """A client with the cache on, on a chunked store; its entries are pruned after."""
    async with docksnap.Client(
        store=(tmp_path / "store").as_uri(), labels=SESSION_LABELS, restore_cache="auto"
    ) as client:
        assert client.cache.unusable_reason() is None, "the suite's engine must allow the cache"
        made: list[docksnap.Container] = []
        client.made = made  # type: ignore[attr-defined]
        try:
            yield client
        finally:
            for box in made:
                await box.destroy()
            await client.cache.prune()


def _box(client: docksnap.Client) -> docksnap.Container:
    box = client.container(unique_name("ds-cache"))
    client.made.append(box)  # type: ignore[attr-defined]
    return box


async def _snapshot(client: docksnap.Client, script: str) -> docksnap.DirectorySnapshot:
    source = _box(client)
    await source.start(TEST_IMAGE, entrypoint=sleeper(f"mkdir -p /work && cd /work && {script}"))
    snap = await source.snapshot_directory("/work")
    await source.destroy()
    return snap


async def _run(box: docksnap.Container, command: str) -> str:
    """Run ``command`` in the started container (docker exec); return its output."""
    done = await asyncio.to_thread(
        subprocess.run,
        ["docker", "exec", box.name, "sh", "-c", command],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


async def _export(client: docksnap.Client, snapshot_id: str) -> bytes:
    digest = hashlib.sha256()
    async with client.snapshots.export(snapshot_id) as reader:
        async for piece in reader:
            digest.update(piece)
    return digest.digest()


def _tree_digest(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (or kind), to see it unchanged."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


async def _entry_of(client: docksnap.Client, snapshot_id: str) -> CacheEntry:
    entries = [e for e in await client.cache.list() if e.snapshot_id == snapshot_id]
    assert len(entries) == 1, entries
    return entries[0]


async def _entry_tree(client: docksnap.Client, entry: CacheEntry) -> Path:
    info = await client.docker.inspect_volume(entry.name)
    assert info is not None
    return Path(info["Mountpoint"]) / "tree"


async def _restore_volume(client: docksnap.Client, box: docksnap.Container) -> dict[str, Any]:
    """The volume mounted at /work, as the engine describes it."""
    info = await client.docker.inspect_container(box.name)
    (mount,) = [m for m in info["Mounts"] if m["Destination"] == "/work"]
    volume = await client.docker.inspect_volume(mount["Name"])
    assert volume is not None
    return volume


async def test_two_containers_from_one_snapshot_are_private(cached: docksnap.Client) -> None:
    snap = await _snapshot(cached, "echo one > a && mkdir d && echo two > d/b")
    exported = await _export(cached, snap.id)
    first, second = _box(cached), _box(cached)
    for box in (first, second):
        await box.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    # Both mount an overlay view of one entry, each with its own upper volume.
    views = [await _restore_volume(cached, box) for box in (first, second)]
    for view in views:
        assert view["Options"]["type"] == "overlay"
        assert lbl.UPPER in view["Labels"]
    assert views[0]["Labels"][lbl.CACHE_ENTRY] == views[1]["Labels"][lbl.CACHE_ENTRY]
    entry = await _entry_of(cached, snap.id)
    assert entry.complete
    assert entry.references == 4  # a view and its upper volume per container
    assert entry.in_use
    tree = await _entry_tree(cached, entry)
    before = _tree_digest(tree)
    assert before == {"a": hashlib.sha256(b"one\n").hexdigest(), "d": "dir", "d/b": before["d/b"]}

    await _run(first, "echo mine > /work/first && rm /work/a && echo changed > /work/d/b")
    await _run(second, "echo mine > /work/second && chmod 700 /work/d")

    assert await read_file(cached, first.name, "/work/first") == b"mine\n"
    assert await read_file(cached, first.name, "/work/second") is None
    assert await read_file(cached, first.name, "/work/a") is None
    assert await read_file(cached, first.name, "/work/d/b") == b"changed\n"
    assert await read_file(cached, second.name, "/work/second") == b"mine\n"
    assert await read_file(cached, second.name, "/work/first") is None
    assert await read_file(cached, second.name, "/work/a") == b"one\n"
    assert await read_file(cached, second.name, "/work/d/b") == b"two\n"
    # The cached copy and the stored snapshot are unchanged.
    assert _tree_digest(tree) == before
    assert os.stat(tree / "d").st_mode & 0o777 == 0o755
    assert await _export(cached, snap.id) == exported
    assert (await cached.snapshots.verify(snap.id)).ok

    # destroy releases each container's view and upper volume, not the entry.
    await first.destroy()
    await second.destroy()
    assert not await cached.docker.list_volumes({lbl.CACHE_ENTRY: entry.name})
    assert not (await _entry_of(cached, snap.id)).in_use


async def test_the_view_masks_and_keeps_the_root(cached: docksnap.Client) -> None:
    """Masking: the image's files at the mount point are hidden; the root is the snapshot's."""
    snap = await _snapshot(cached, "echo x > only && chmod 750 /work")
    box = _box(cached)
    await box.start(
        TEST_IMAGE,
        entrypoint=sleeper(),
        snapshots=[docksnap.SnapshotRestore(snap, mount_point="/etc")],
    )
    assert await read_file(cached, box.name, "/etc/only") == b"x\n"
    assert await read_file(cached, box.name, "/etc/passwd") is None
    mode = await _run(box, "stat -c %a /etc")
    streamed = _box(cached)
    await streamed.start(
        TEST_IMAGE,
        entrypoint=sleeper(),
        snapshots=[docksnap.SnapshotRestore(snap, mount_point="/etc")],
        restore_cache="off",
    )
    assert mode == await _run(streamed, "stat -c %a /etc")


async def test_nested_mount_points_each_show_their_own_snapshot(
    cached: docksnap.Client,
) -> None:
    outer = await _snapshot(cached, "echo outer > o && mkdir inner && echo hidden > inner/h")
    inner = await _snapshot(cached, "echo inner > i")
    box = _box(cached)
    await box.start(
        TEST_IMAGE,
        entrypoint=sleeper(),
        snapshots=[
            docksnap.SnapshotRestore(inner, mount_point="/work/inner"),
            docksnap.SnapshotRestore(outer, mount_point="/work"),
        ],
    )
    assert await read_file(cached, box.name, "/work/o") == b"outer\n"
    assert await read_file(cached, box.name, "/work/inner/i") == b"inner\n"
    assert await read_file(cached, box.name, "/work/inner/h") is None
    # The outer entry's tree did not get the inner mount point's directory.
    tree = await _entry_tree(cached, await _entry_of(cached, outer.id))
    assert sorted(p.name for p in tree.iterdir()) == ["inner", "o"]
    assert sorted(p.name for p in (tree / "inner").iterdir()) == ["h"]


async def test_merge_restores_stream_beside_cached_ones(cached: docksnap.Client) -> None:
    base = await _snapshot(cached, "echo base > b")
    merged = await _snapshot(cached, "echo merged > m")
    box = _box(cached)
    await box.start(
        TEST_IMAGE,
        entrypoint=sleeper(),
        snapshots=[
            docksnap.SnapshotRestore(base, mount_point="/work"),
            docksnap.SnapshotRestore(merged, mount_point="/srv", merge=True),
        ],
    )
    assert await read_file(cached, box.name, "/work/b") == b"base\n"
    assert await read_file(cached, box.name, "/srv/m") == b"merged\n"
    assert [e.snapshot_id for e in await cached.cache.list()] == [base.id]


class _CountingOpen:
    """Counts ``store.open`` calls: a warm restore must not read the snapshot's data."""

    def __init__(self, store: Any) -> None:
        self.inner = store.open
        self.calls: list[str] = []

    def __call__(self, snapshot_id: str) -> AbstractAsyncContextManager[TarReader]:
        self.calls.append(snapshot_id)
        opened: AbstractAsyncContextManager[TarReader] = self.inner(snapshot_id)
        return opened


async def test_a_warm_restore_reads_nothing_from_the_store(
    cached: docksnap.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = await _snapshot(cached, "head -c 300000 /dev/urandom > r")
    counting = _CountingOpen(cached.store)
    monkeypatch.setattr(cached.store, "open", counting)
    cold, warm = _box(cached), _box(cached)
    await cold.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert counting.calls == [snap.id]
    await cold.destroy()
    await warm.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert counting.calls == [snap.id]  # no second read
    assert (await _run(warm, "stat -c %s /work/r")).strip() == "300000"


async def test_warm_and_cold_restores_report_the_same_progress(
    cached: docksnap.Client, tmp_path: Path
) -> None:
    """A restore served from the cache reports the restore and its bytes, as the one
    that filled the cache (and as a streamed one) does."""
    snap = await _snapshot(cached, "head -c 300000 /dev/urandom > r")
    events: list[ProgressEvent] = []
    async with docksnap.Client(
        store=cached.store.url, labels=SESSION_LABELS, restore_cache="auto", progress=events.append
    ) as client:
        seen = []
        for _ in ("cold", "warm"):
            events.clear()
            box = _box(cached)
            await client.container(box.name).start(
                TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap]
            )
            restores = [e for e in events if e.operation is Operation.RESTORE]
            assert restores, events
            first, last = restores[0], restores[-1]
            assert (first.phase, last.phase) == (Phase.STARTED, Phase.FINISHED)
            assert {e.task for e in restores} == {first.task}
            seen.append((last.snapshot_id, last.bytes_done, last.bytes_total))
            await client.container(box.name).destroy()
    assert seen == [(snap.id, snap.size, snap.size)] * 2
    assert (await _entry_of(cached, snap.id)).complete


async def test_cache_off_streams_into_a_plain_volume(cached: docksnap.Client) -> None:
    snap = await _snapshot(cached, "echo s > s")
    box = _box(cached)
    await box.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap], restore_cache="off")
    volume = await _restore_volume(cached, box)
    assert not volume.get("Options")
    assert lbl.UPPER not in volume["Labels"]
    assert await read_file(cached, box.name, "/work/s") == b"s\n"
    assert await cached.cache.list() == []


async def test_eviction_never_removes_an_entry_in_use(
    cached: docksnap.Client, tmp_path: Path
) -> None:
    one = await _snapshot(cached, "head -c 200000 /dev/urandom > f")
    two = await _snapshot(cached, "head -c 200000 /dev/urandom > g")
    # Room for one entry only.
    cached.cache.size_limit = one.size + one.size // 2
    first, second = _box(cached), _box(cached)
    await first.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[one])
    await second.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[two])
    # Over the limit, but both are in use: both stay, and both containers read them.
    assert {e.snapshot_id for e in await cached.cache.list()} == {one.id, two.id}
    assert await cached.cache.evict(limit=0) == []
    assert await read_file(cached, first.name, "/work/f") is not None
    await first.destroy()
    # The next start evicts the least recently used entry not in use: one's.
    third = _box(cached)
    await third.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[two])
    assert [e.snapshot_id for e in await cached.cache.list()] == [two.id]
    assert await read_file(cached, second.name, "/work/g") is not None


async def test_a_snapshot_larger_than_the_cache_streams(cached: docksnap.Client) -> None:
    snap = await _snapshot(cached, "head -c 100000 /dev/urandom > f")
    cached.cache.size_limit = snap.size - 1
    box = _box(cached)
    await box.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert lbl.UPPER not in (await _restore_volume(cached, box))["Labels"]
    assert await cached.cache.list() == []


async def test_remove_refuses_an_entry_in_use_and_prune_keeps_it(
    cached: docksnap.Client,
) -> None:
    snap = await _snapshot(cached, "echo r > r")
    box = _box(cached)
    await box.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    entry = await _entry_of(cached, snap.id)
    with pytest.raises(docksnap.CacheEntryInUseError, match=entry.name):
        await cached.cache.remove(snap.id)
    assert await cached.cache.prune() == []
    await box.destroy()
    assert await cached.cache.remove(snap.id) == [entry.name]
    with pytest.raises(docksnap.CacheEntryNotFoundError, match=snap.id):
        await cached.cache.remove(snap.id)
    assert await cached.docker.inspect_volume(entry.name) is None


def test_cache_commands_list_refuse_remove_and_prune(docker_engine: None, tmp_path: Path) -> None:
    cli = Cli((tmp_path / "store").as_uri())
    try:
        box = cli.run_box("mkdir /d && echo x > /d/f")
        snapshot_id = cli.snapshot(box, "/d")["snapshot"]["id"]
        name = unique_name("ds-cache-cli")
        cli.containers.append(name)
        cli("run", TEST_IMAGE, "--name", name, "--restore", snapshot_id, "--", "sleep", "1000")
        [entry] = [e for e in cli.json("cache", "ls") if e["snapshot_id"] == snapshot_id]
        assert entry["complete"]
        assert entry["in_use"]
        assert entry["size"] == cli.json("show", snapshot_id)["snapshot"]["size"]
        refused = cli.json("cache", "rm", snapshot_id, code=4)["error"]
        assert refused["type"] == "CacheEntryInUseError"
        assert entry["name"] in refused["message"]
        assert entry["name"] not in cli.json("cache", "prune")["removed"]  # in use: kept
        cli("rm-container", name)
        assert cli.json("cache", "rm", snapshot_id) == {"removed": [entry["name"]]}
        missing = cli.json("cache", "rm", snapshot_id, code=6)["error"]
        assert missing["type"] == "CacheEntryNotFoundError"
        # --restore-cache off fills nothing; the next default run fills a new entry.
        cli("run", TEST_IMAGE, "--name", name, "--restore", snapshot_id, "--restore-cache", "off")
        assert [e for e in cli.json("cache", "ls") if e["snapshot_id"] == snapshot_id] == []
        cli("rm-container", name)
        cli("run", TEST_IMAGE, "--name", name, "--restore", snapshot_id)
        cli("rm-container", name)
        [again] = [e for e in cli.json("cache", "ls") if e["snapshot_id"] == snapshot_id]
        assert again["name"] in cli.json("cache", "prune")["removed"]
    finally:
        cli.cleanup()


async def test_a_view_the_engine_cannot_mount_falls_back_to_streaming(
    cached: docksnap.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where overlay mounts fail (a data root on overlayfs, an old kernel), "auto"
    streams. The failure is made real: the view names a lower directory that does
    not exist, and the engine's mount at start fails."""
    snap = await _snapshot(cached, "echo s > s")

    prepare = restore_cache._prepare_upper

    def broken(tree: str, upper_volume: str) -> str:
        prepared = prepare(tree, upper_volume)
        return prepared.replace(f"lowerdir={tree}", f"lowerdir={tree}-missing")

    monkeypatch.setattr(restore_cache, "_prepare_upper", broken)
    box = _box(cached)
    await box.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert await read_file(cached, box.name, "/work/s") == b"s\n"
    assert lbl.UPPER not in (await _restore_volume(cached, box))["Labels"]
    assert "could not mount" in (cached.cache.unusable_reason() or "")
    # Nothing of the failed attempt is left: only the streamed volume is the box's.
    assert len(await cached.docker.list_volumes({lbl.OWNER: box.name})) == 1


async def test_gc_removes_the_entry_of_a_deleted_snapshot(cached: docksnap.Client) -> None:
    """A snapshot deleted from the store (it held a secret, say) does not live on here."""
    kept, deleted = await _snapshot(cached, "echo k > k"), await _snapshot(cached, "echo d > d")
    for snap in (kept, deleted):
        box = _box(cached)
        await box.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
        await box.destroy()
    entry = await _entry_of(cached, deleted.id)
    await cached.snapshots.delete(deleted.id)
    report = await cached.reap_orphans()
    assert entry.name in report.volumes
    assert [e.snapshot_id for e in await cached.cache.list()] == [kept.id]

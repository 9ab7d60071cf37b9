"""The workerd snapshot API on a real Docker engine, against every store.

The seed's own test table (reference section 8) comes first, then what #6337
got wrong and docksnap fixes, then what it adds.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import docksnap
import docksnap.docker
from docksnap import DirectorySnapshot, SnapshotRestore
from docksnap.docker.client import ArchiveStream
from docksnap.service.hostcapture import HostCapture
from docksnap.store.base import TarReader
from tests.conftest import (
    ALT_IMAGE,
    SESSION_LABELS,
    TEST_IMAGE,
    read_file,
    running,
    session_client,
    sleeper,
    unique_name,
)
from tests.syncfacade import ClientFacade

pytestmark = pytest.mark.docker

Boxes = list[docksnap.Container]


@pytest.fixture(
    params=[("chunked", "async"), ("volume", "async"), ("chunked", "sync")],
    ids=["chunked", "volume", "chunked-sync"],
)
async def client(
    request: pytest.FixtureRequest, docker_engine: None, tmp_path: Path
) -> AsyncIterator[Any]:
    """The contract under test: the async client on each store, and ``docksnap.SyncClient``.

    The sync client is driven through a facade that calls its blocking methods
    from this test's running event loop (the Jupyter situation). Tests marked
    ``white_box`` patch the async client's store, which a facade cannot offer.
    """
    store, api = request.param
    store_url = (tmp_path / "store").as_uri() if store == "chunked" else "docker-volume:"
    if api == "async":
        async with session_client(store_url) as client:
            yield client
        return
    if request.node.get_closest_marker("white_box"):
        pytest.skip("white-box test: patches the async client's store")
    facade = ClientFacade(
        docksnap.SyncClient(store=store_url, labels=SESSION_LABELS), SESSION_LABELS
    )
    try:
        yield facade
    finally:
        await facade.close()


async def restored(
    client: docksnap.Client, boxes: Boxes, snapshots: list[object], image: str = TEST_IMAGE
) -> docksnap.Container:
    """A fresh container started with ``snapshots`` restored."""
    box = client.container(unique_name("ds-restored"))
    boxes.append(box)
    await box.start(image, entrypoint=sleeper(), snapshots=snapshots)  # type: ignore[arg-type]
    return box


# -- the seed's table ---------------------------------------------------------------


async def test_round_trip(client: docksnap.Client, containers: Boxes) -> None:
    """A file written in one container is back in a fresh one, the first destroyed."""
    box = await running(
        client,
        containers,
        "mkdir -p /app/data && echo -n snapshot-content-123 > /app/data/test.txt",
    )
    snap = await box.snapshot_directory("/app/data")
    assert snap.size > 0
    assert snap.dir == "/app/data"
    assert snap.name is None
    assert len(snap.id) == 36
    assert snap.id == snap.id.lower()
    await box.destroy()
    again = await restored(client, containers, [snap])
    assert again.running
    assert await read_file(client, again.name, "/app/data/test.txt") == b"snapshot-content-123"


async def test_named_snapshot(client: docksnap.Client, containers: Boxes) -> None:
    """The name is echoed back and the snapshot restores."""
    box = await running(client, containers, "mkdir -p /d && echo x > /d/f")
    snap = await box.snapshot_directory("/d", name="my-snapshot")
    assert snap.name == "my-snapshot"
    assert (await client.snapshots.get(snap.id)).name == "my-snapshot"
    again = await restored(client, containers, [snap])
    assert await read_file(client, again.name, "/d/f") == b"x\n"


async def test_two_directories_in_one_start(client: docksnap.Client, containers: Boxes) -> None:
    """Snapshots of two directories both restore in one start()."""
    box = await running(
        client,
        containers,
        "mkdir -p /app/dir1 /app/dir2 && echo 1 > /app/dir1/a && echo 2 > /app/dir2/b",
    )
    one = await box.snapshot_directory("/app/dir1")
    two = await box.snapshot_directory("/app/dir2")
    again = await restored(client, containers, [one, SnapshotRestore(two)])
    assert await read_file(client, again.name, "/app/dir1/a") == b"1\n"
    assert await read_file(client, again.name, "/app/dir2/b") == b"2\n"


async def test_custom_mount_point(client: docksnap.Client, containers: Boxes) -> None:
    """Restored at a mount point, the file is there and absent at the original path."""
    box = await running(client, containers, "mkdir -p /app/data && echo t > /app/data/test.txt")
    snap = await box.snapshot_directory("/app/data")
    again = await restored(client, containers, [SnapshotRestore(snap, mount_point="/app/restored")])
    assert await read_file(client, again.name, "/app/restored/test.txt") == b"t\n"
    assert await read_file(client, again.name, "/app/data/test.txt") is None


async def test_restore_to_root_refused_and_merge_allowed(
    client: docksnap.Client, containers: Boxes
) -> None:
    """Restoring to / is refused, unless merged over the image's files (the seed's mode)."""
    box = await running(
        client, containers, "mkdir -p /app/data && echo r > /app/data/root-test.txt"
    )
    snap = await box.snapshot_directory("/app/data")
    with pytest.raises(docksnap.InvalidPathError, match="root directory"):
        SnapshotRestore(snap, mount_point="/")
    again = await restored(client, containers, [SnapshotRestore(snap, mount_point="/", merge=True)])
    assert await read_file(client, again.name, "/root-test.txt") == b"r\n"
    assert await read_file(client, again.name, "/bin/busybox") is not None  # image kept


async def test_missing_directory(client: docksnap.Client, containers: Boxes) -> None:
    """A directory that does not exist is DirectoryNotFoundError naming it; nothing stored."""
    box = await running(client, containers)
    with pytest.raises(docksnap.DirectoryNotFoundError, match="/does/not/exist"):
        await box.snapshot_directory("/does/not/exist")
    assert [s async for s in client.snapshots.list()] == []
    state = await client.docker.inspect_container(box.name)
    assert state["State"]["Paused"] is False  # unpaused also on failure


async def test_cross_container_and_cross_image_restore(
    client: docksnap.Client, containers: Boxes
) -> None:
    """A snapshot restores into a differently named container of another image."""
    box = await running(client, containers, "mkdir -p /w && echo c > /w/f")
    snap = await box.snapshot_directory("/w", name="cross-do-snapshot")
    again = await restored(client, containers, [snap], image=ALT_IMAGE)
    assert await read_file(client, again.name, "/alt-image") is not None
    assert await read_file(client, again.name, "/w/f") == b"c\n"


async def test_stopped_container(client: docksnap.Client, containers: Boxes) -> None:
    """An exited container is snapshotted as it is (as `docker cp` reads it), unpaused.

    The seed refused it; the moment an agent or a job has exited is when its
    directory is most worth keeping. A missing container is still an error.
    """
    box = client.container(unique_name())
    containers.append(box)
    await box.start(TEST_IMAGE, entrypoint=["sh", "-c", "mkdir -p /out && echo done > /out/f"])
    assert await box.monitor() == 0
    assert re.fullmatch(r"exited \d+ (s|min) ago, code 0", await box.describe())
    snap = await box.snapshot_directory("/out", name="after-exit")
    assert not box.running
    again = await restored(client, containers, [snap])
    assert await read_file(client, again.name, "/out/f") == b"done\n"
    ghost = client.container(unique_name("ds-ghost"))
    with pytest.raises(docksnap.ContainerNotFoundError, match="no such container 'ds-ghost-"):
        await ghost.snapshot_directory("/tmp")


async def test_unknown_snapshot_id(client: docksnap.Client, containers: Boxes) -> None:
    """An unknown id is SnapshotNotFoundError, not an empty directory; nothing is created."""
    ghost = DirectorySnapshot(id="00000000-0000-4000-8000-000000000000", size=1, dir="/x")
    box = client.container(unique_name())
    containers.append(box)
    with pytest.raises(docksnap.SnapshotNotFoundError, match="00000000-0000-4000-8000"):
        await box.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[ghost])
    assert not await box.refresh()
    with pytest.raises(docksnap.ContainerNotFoundError):
        await box.monitor()  # fails fast, never hangs


# -- beyond the seed ------------------------------------------------------------------


async def test_nested_mount_points_parent_first(client: docksnap.Client, containers: Boxes) -> None:
    """A child mount point shows exactly its snapshot, whatever order they are given in."""
    box = await running(
        client,
        containers,
        "mkdir -p /p/sub /c && echo parent > /p/f && echo hidden > /p/sub/old && echo child > /c/g",
    )
    parent = await box.snapshot_directory("/p")
    child = await box.snapshot_directory("/c")
    again = await restored(
        client,
        containers,
        [
            SnapshotRestore(child, mount_point="/data/sub"),
            SnapshotRestore(parent, mount_point="/data"),
        ],
    )
    assert await read_file(client, again.name, "/data/f") == b"parent\n"
    assert await read_file(client, again.name, "/data/sub/g") == b"child\n"
    assert await read_file(client, again.name, "/data/sub/old") is None  # masked by the child


async def test_mount_point_masks_image_content(client: docksnap.Client, containers: Boxes) -> None:
    """By default the mount point shows only the snapshot, not what the image had there."""
    box = await running(client, containers, "mkdir -p /d && echo x > /d/only")
    snap = await box.snapshot_directory("/d")
    again = await restored(client, containers, [SnapshotRestore(snap, mount_point="/etc")])
    assert await read_file(client, again.name, "/etc/only") == b"x\n"
    assert await read_file(client, again.name, "/etc/passwd") is None


async def test_metadata_round_trip(client: docksnap.Client, containers: Boxes) -> None:
    """Symlinks, hardlinks, empty dirs, modes, owners, mtimes and odd names survive."""
    script = (
        "mkdir -p /m/empty /m/sub && echo data > /m/sub/file && ln -s sub/file /m/link"
        " && ln /m/sub/file /m/hard && echo secret > /m/private && chmod 600 /m/private"
        " && chown 1234:1234 /m/private && echo u > '/m/ünïcødé名' && touch -d @1000000000 /m/old"
    )
    box = await running(client, containers, script)
    snap = await box.snapshot_directory("/m")
    listing_cmd = "cd /m && ls -lan --full-time . sub empty && stat -c '%i %n' hard sub/file"
    again = await restored(client, containers, [snap])
    original = await _exec(box.name, listing_cmd)
    copy = await _exec(again.name, listing_cmd)
    assert _without_inodes(copy) == _without_inodes(original)
    inodes = [line.split()[0] for line in copy.splitlines()[-2:]]
    assert inodes[0] == inodes[1], "hardlink not preserved"
    assert re.search(r"-rw------- +1 1234 +1234 .* private", copy)
    assert re.search(r" 2001-09-09 01:46:40 \+0000 old", copy)
    assert "link -> sub/file" in copy
    assert await read_file(client, again.name, "/m/ünïcødé名") == b"u\n"


async def test_json_and_pickle_round_trips_restore(
    client: docksnap.Client, containers: Boxes
) -> None:
    """A snapshot that went through JSON or pickle restores exactly like the original."""
    box = await running(client, containers, "mkdir -p /j && echo j > /j/f")
    snap = await box.snapshot_directory("/j", name="portable")
    via_json = DirectorySnapshot.from_dict(json.loads(json.dumps(snap.to_dict())))
    via_pickle = pickle.loads(pickle.dumps(snap))  # noqa: S301 -- our own bytes
    assert via_json == snap == via_pickle
    seed_only = DirectorySnapshot.from_dict({"id": snap.id, "size": snap.size, "dir": snap.dir})
    for record in (via_json, via_pickle, seed_only):
        again = await restored(client, containers, [record])
        assert await read_file(client, again.name, "/j/f") == b"j\n"


async def test_size_limit_commits_nothing(client: docksnap.Client, containers: Boxes) -> None:
    """Going over the size limit raises and stores nothing; the container is unpaused."""
    box = await running(
        client, containers, "mkdir -p /big && head -c 3000000 /dev/urandom > /big/f"
    )
    with pytest.raises(docksnap.SnapshotTooLargeError, match="1000000"):
        await box.snapshot_directory("/big", size_limit=1_000_000)
    assert [s async for s in client.snapshots.list()] == []
    state = await client.docker.inspect_container(box.name)
    assert state["State"]["Paused"] is False
    await client.snapshots.gc(grace=0)
    assert (await client.snapshots.stats()).stored_bytes == 0


@pytest.mark.white_box
async def test_container_is_paused_while_read(client: docksnap.Client, containers: Boxes) -> None:
    """By default the container is paused during the read; pause=False leaves it running.

    Seen as the engine's read starts: the store may start only after the read
    ended and the container runs again (service/spool.py).
    """
    box = await running(client, containers, "mkdir -p /d && echo x > /d/f")
    seen: list[bool] = []
    real_get_archive = client.docker.get_archive

    @asynccontextmanager
    async def spying_get_archive(container: str, path: str) -> AsyncIterator[ArchiveStream]:
        seen.append((await client.docker.inspect_container(box.name))["State"]["Paused"])
        async with real_get_archive(container, path) as archive:
            yield archive

    client.docker.get_archive = spying_get_archive  # type: ignore[method-assign]
    await box.snapshot_directory("/d", capture="archive")
    await box.snapshot_directory("/d", pause=False, capture="archive")
    assert seen == [True, False]
    assert (await client.docker.inspect_container(box.name))["State"]["Paused"] is False


@pytest.mark.white_box
async def test_container_is_paused_while_the_host_walks(
    client: docksnap.Client, containers: Boxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host capture: paused from the walk's start to its last read, unpaused after."""
    box = await running(client, containers, "mkdir -p /d && echo x > /d/f")
    seen: list[bool] = []
    real_frames = HostCapture.frames

    async def spying(self: HostCapture) -> AsyncIterator[bytes]:
        seen.append((await client.docker.inspect_container(box.name))["State"]["Paused"])
        async for piece in real_frames(self):
            yield piece
        seen.append((await client.docker.inspect_container(box.name))["State"]["Paused"])

    monkeypatch.setattr(HostCapture, "frames", spying)
    snap = await box.snapshot_directory("/d", capture="host")
    assert snap.capture == "host"
    await box.snapshot_directory("/d", pause=False, capture="host")
    assert seen == [True, True, False, False]
    assert (await client.docker.inspect_container(box.name))["State"]["Paused"] is False


@pytest.mark.white_box
async def test_failed_restore_leaves_nothing_behind(
    client: docksnap.Client, containers: Boxes
) -> None:
    """A restore that fails midway removes the container and every restore volume."""
    box = await running(client, containers, "mkdir -p /a /b && echo a > /a/f && echo b > /b/f")
    good = await box.snapshot_directory("/a")
    bad = await box.snapshot_directory("/b")
    real_open = client.store.open

    @asynccontextmanager
    async def failing_open(snapshot_id: str) -> AsyncIterator[TarReader]:
        async with real_open(snapshot_id) as reader:
            if snapshot_id != bad.id:
                yield reader
                return
            yield _BrokenReader(reader)

    client.store.open = failing_open  # type: ignore[method-assign]
    target = client.container(unique_name())
    containers.append(target)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await target.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[good, bad])
    assert not await target.refresh()
    assert _containers_named(target.name) == []
    assert _restore_volumes_of(target.name) == []
    with pytest.raises(docksnap.ContainerNotFoundError):
        await target.monitor()


async def test_attach_to_container_not_started_by_docksnap(
    client: docksnap.Client, containers: Boxes
) -> None:
    """A container started by `docker run` can be snapshotted through client.container()."""
    name = unique_name("ds-foreign")
    await asyncio.to_thread(
        subprocess.run,
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--label",
            "docksnap-test.session=" + client.extra_labels["docksnap-test.session"],
            TEST_IMAGE,
            "sh",
            "-c",
            "mkdir -p /f && echo foreign > /f/x && exec sleep 1000",
        ],
        check=True,
        capture_output=True,
    )
    box = client.container(name)
    containers.append(box)
    for _ in range(50):
        if await read_file(client, name, "/f/x"):
            break
        await asyncio.sleep(0.05)
    assert await box.refresh()
    snap = await box.snapshot_directory("/f")
    again = await restored(client, containers, [snap])
    assert await read_file(client, again.name, "/f/x") == b"foreign\n"


async def test_mutations_run_in_order(client: docksnap.Client, containers: Boxes) -> None:
    """A destroy queued behind a snapshot waits for it: the snapshot still succeeds."""
    box = await running(client, containers, "mkdir -p /o && head -c 2000000 /dev/urandom > /o/f")
    snapshot = asyncio.create_task(box.snapshot_directory("/o"))
    await asyncio.sleep(0)  # the snapshot takes the turn first
    destroy = asyncio.create_task(box.destroy())
    snap = await snapshot
    await destroy
    assert snap.size > 2_000_000
    assert not await box.refresh()


async def test_signal_and_monitor(client: docksnap.Client, containers: Boxes) -> None:
    """signal(15) stops the container; monitor() returns its exit status."""
    box = await running(client, containers)
    waiter = asyncio.create_task(box.monitor())
    await box.signal(9)
    assert await asyncio.wait_for(waiter, 20) == 137
    with pytest.raises(docksnap.ContainerNotRunningError):
        await box.signal(15)


async def test_internet_off_means_network_none(client: docksnap.Client, containers: Boxes) -> None:
    """enable_internet=False starts the container with network mode none."""
    box = await running(client, containers)
    info = await client.docker.inspect_container(box.name)
    assert info["HostConfig"]["NetworkMode"] == "none"
    assert info["Config"]["Labels"]["io.docksnap.role"] == "app"
    assert info["Config"]["Labels"]["io.docksnap.managed"] == "true"


# -- helpers -------------------------------------------------------------------------


class _BrokenReader:
    """Yields a little of the real stream, then fails as a dying disk would."""

    def __init__(self, inner: TarReader) -> None:
        self.size = inner.size
        self._inner = inner

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        async for piece in self._inner:
            yield piece[:512]
            raise RuntimeError("disk on fire")


async def _exec(container: str, command: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run,
        ["docker", "exec", container, "sh", "-c", command],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def _without_inodes(listing: str) -> str:
    """The listing minus inode numbers, totals, and the mount point itself ('.', '..'):
    the restored directory is a fresh volume's root, whose own times are the volume's."""
    lines = listing.splitlines()[:-2]
    return "\n".join(
        line for line in lines if not line.startswith("total") and not re.search(r" \.\.?$", line)
    )


def _containers_named(name: str) -> list[str]:
    return _docker_lines("ps", "-aq", "--filter", f"name=^/{name}$")


def _restore_volumes_of(name: str) -> list[str]:
    return _docker_lines("volume", "ls", "-q", "--filter", f"label=io.docksnap.container={name}")


def _docker_lines(*args: str) -> list[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.split()


async def test_stale_snapshot_volumes_are_warned_about_once(
    docker_engine: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Snapshot volumes 30+ days old are logged once per process, never deleted."""
    from docksnap.store import volume as volume_store
    from tests.conftest import SESSION_LABELS

    old = DirectorySnapshot(id="0d5e0f3a-7c1b-4e2d-9a8b-1c2d3e4f5a6b", size=0, dir="/old")
    docker = docksnap.docker.DockerClient()
    engine = docksnap.docker.HelperVolumes(docker)
    store = volume_store.VolumeStore(engine, extra_labels=SESSION_LABELS)
    labels = store._meta_labels(old, docksnap.SnapshotSource("c", TEST_IMAGE), None)
    labels["io.docksnap.created-at"] = str(int(time.time()) - 31 * 24 * 3600)
    name = volume_store.meta_volume(old.id)
    await docker.create_volume(name, labels)
    volume_store._stale_check_done = False
    try:
        with caplog.at_level("WARNING", logger="docksnap.store.volume"):
            await store._warn_about_stale_volumes_once()
            await store._warn_about_stale_volumes_once()
        warnings = [r for r in caplog.records if "30+ days" in r.getMessage()]
        assert len(warnings) == 1
        assert name in warnings[0].getMessage()
        assert await docker.inspect_volume(name) is not None  # warned, not deleted
    finally:
        await docker.remove_volume(name)
        await docker.aclose()


async def test_the_volume_store_refuses_a_save_without_a_helper_image(
    docker_engine: None,
) -> None:
    """Without its own helper image or a source image there is nothing to run: refused first."""
    from docksnap.store.volume import VolumeStore, data_volume
    from tests.conftest import SESSION_LABELS

    docker = docksnap.docker.DockerClient()
    store = VolumeStore(docksnap.docker.HelperVolumes(docker), extra_labels=SESSION_LABELS)
    record = DirectorySnapshot(id=docksnap.model.new_snapshot_id(), size=0, dir="/d")

    async def tar() -> AsyncIterator[bytes]:
        yield b"\0" * 1024

    try:
        with pytest.raises(docksnap.InvalidArgumentError, match="helper"):
            await store.save(record, tar(), source=docksnap.SnapshotSource("", ""))
        assert await docker.inspect_volume(data_volume(record.id)) is None
    finally:
        await docker.aclose()


async def test_volume_stores_of_other_labels_do_not_see_each_other(docker_engine: None) -> None:
    """Two clients with their own labels on one engine: each lists, counts, verifies
    and collects only the snapshot volumes carrying its labels. An id still reaches
    any snapshot on the engine, as it does in a shared chunked store."""
    from docksnap.store.volume import VolumeStore, data_volume
    from tests.conformance.streams import build_tar, pieces

    docker = docksnap.docker.DockerClient()
    engine = docksnap.docker.HelperVolumes(docker)
    ours, theirs = (
        VolumeStore(engine, extra_labels={**SESSION_LABELS, "docksnap-test.tenant": tenant})
        for tenant in ("a", "b")
    )
    source = docksnap.SnapshotSource("c", TEST_IMAGE)
    saved = []
    # Theirs, half-written: a data volume whose meta never came (old enough for any grace).
    torn = docksnap.model.new_snapshot_id()
    torn_labels = theirs._labels(torn, time.time() - 7200)
    try:
        for store in (ours, theirs):
            record = DirectorySnapshot(id=docksnap.model.new_snapshot_id(), size=0, dir="/d")
            tar = build_tar({"f": store._extra["docksnap-test.tenant"].encode()})
            saved.append(await store.save(record, pieces(tar), source=source))
        await docker.create_volume(data_volume(torn), torn_labels)
        mine, other = saved
        assert [i.id for i in await ours.list()] == [mine.id]
        assert [i.id for i in await theirs.list()] == [other.id]
        assert (await ours.stats()).snapshots == 1
        assert (await ours.verify()).snapshots_checked == 1
        assert (await ours.gc(grace=0)).objects_deleted == 0
        assert await docker.inspect_volume(data_volume(torn)) is not None
        assert (await ours.get(other.id)).id == other.id
        assert (await theirs.gc(grace=0)).objects_deleted == 1
    finally:
        for store, info in zip((ours, theirs), saved, strict=False):
            await store.delete(info.id)
        await docker.remove_volume(data_volume(torn))
        await docker.aclose()

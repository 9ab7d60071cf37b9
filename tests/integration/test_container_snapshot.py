"""Whole-container snapshots on the real engine, and across two daemons (issue 15, item 2)."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from typing import Any

import pytest

import docksnap
from docksnap.errors import ImageNotFoundError, InvalidArgumentError, SnapshotNotFoundError
from tests.conftest import (
    ALT_IMAGE,
    SESSION_LABELS,
    TEST_IMAGE,
    read_file,
    sleeper,
    unique_name,
)
from tests.integration.test_s3 import host_b, leftovers
from tests.s3support import S3Server

pytestmark = pytest.mark.docker

# Deletes a file of the image, changes one, adds a file in a new directory.
CHANGES = (
    "rm /bin/vi && echo changed >> /etc/passwd && "
    "mkdir -p /opt/app && echo added > /opt/app/new.txt"
)


async def changed_box(client: docksnap.Client) -> docksnap.Container:
    box = client.container(unique_name("ds-cs"))
    await box.start(TEST_IMAGE, entrypoint=sleeper(CHANGES + " && touch /ready"))
    for _ in range(200):
        if await read_file(client, box.name, "/ready") is not None:
            return box
        await asyncio.sleep(0.05)
    raise AssertionError("container did not get ready")


async def assert_changes_applied(client: docksnap.Client, name: str) -> None:
    assert await read_file(client, name, "/bin/vi") is None  # deleted stays deleted
    assert await client.docker.stat_path(name, "/bin/ls") is not None  # the rest of the image
    passwd = await read_file(client, name, "/etc/passwd")
    assert passwd is not None
    assert passwd.endswith(b"changed\n")
    assert await read_file(client, name, "/opt/app/new.txt") == b"added\n"


async def owned_images(client: docksnap.Client, owner: str) -> list[dict[str, Any]]:
    return await client.docker.list_images({"io.docksnap.container": owner})


async def test_container_snapshot_restores_changes_and_deletions(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await changed_box(client)
    containers.append(box)
    snap = await box.snapshot_container(name="whole")
    assert snap.dir == "/"
    assert snap.report is not None
    assert snap.report.ok
    assert await client.snapshots.kind(snap.id) == "container"
    names = {entry.path for entry in await client.snapshots.files(snap.id)}
    assert {"bin/.wh.vi", "etc/passwd", "opt/app/new.txt"} <= names
    assert "bin/ls" not in names  # unchanged image files are not stored
    assert (await client.snapshots.verify(snap.id)).ok

    restored = client.container(unique_name("ds-cs-r"))
    containers.append(restored)
    await restored.start(TEST_IMAGE, entrypoint=sleeper(), container_snapshot=snap)
    await assert_changes_applied(client, restored.name)
    assert len(await owned_images(client, restored.name)) == 1
    await restored.destroy()
    assert await owned_images(client, restored.name) == []
    # Collected like any snapshot.
    await client.snapshots.delete(snap.id)
    if not client.store.url.startswith("docker-volume:"):
        # (Never gc the engine-wide volume store: other sessions write there too.)
        assert (await client.snapshots.gc(grace=0)).objects_deleted > 0
    with pytest.raises(SnapshotNotFoundError):
        await client.snapshots.get(snap.id)


async def test_directory_snapshots_are_listed_as_such(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await changed_box(client)
    containers.append(box)
    snap = await box.snapshot_directory("/opt")
    assert await client.snapshots.kind(snap.id) == "directory"


async def test_a_missing_or_different_image_is_refused_and_nothing_is_left(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await changed_box(client)
    containers.append(box)
    snap = await box.snapshot_container()
    target = client.container(unique_name("ds-cs-x"))
    containers.append(target)
    with pytest.raises(ImageNotFoundError, match="docksnap-no-such-image") as caught:
        await target.start(
            "docksnap-no-such-image:latest", entrypoint=sleeper(), container_snapshot=snap
        )
    assert caught.value.image == "docksnap-no-such-image:latest"
    with pytest.raises(InvalidArgumentError, match="was taken from image"):
        await target.start(ALT_IMAGE, entrypoint=sleeper(), container_snapshot=snap)
    assert not await target.refresh()
    assert await owned_images(client, target.name) == []


async def test_export_carries_the_whiteouts(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await changed_box(client)
    containers.append(box)
    snap = await box.snapshot_container()
    async with client.snapshots.export(snap.id) as reader:
        raw = b"".join([piece async for piece in reader])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = {member.name.removeprefix("./").rstrip("/") for member in tar.getmembers()}
    assert "bin/.wh.vi" in names


async def test_the_two_kinds_are_not_confused_on_restore(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await changed_box(client)
    containers.append(box)
    whole = await box.snapshot_container()
    directory = await box.snapshot_directory("/opt")
    target = client.container(unique_name("ds-cs-k"))
    containers.append(target)
    with pytest.raises(InvalidArgumentError, match="whole-container snapshot"):
        await target.start(
            TEST_IMAGE,
            entrypoint=sleeper(),
            snapshots=[docksnap.SnapshotRestore(whole, merge=True)],
        )
    with pytest.raises(InvalidArgumentError, match="is a directory snapshot"):
        await target.start(TEST_IMAGE, entrypoint=sleeper(), container_snapshot=directory)
    assert not await target.refresh()


@pytest.mark.s3
async def test_container_snapshot_on_daemon_a_restores_on_daemon_b(
    docker_engine: None, s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot of one daemon's container, through the shared bucket, on the other."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    url = s3_server.url(s3_prefix)
    host_a = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    async with (
        docksnap.Client(docker_host=host_a, store=url, labels=SESSION_LABELS) as on_a,
        docksnap.Client(docker_host=host_b(), store=url, labels=SESSION_LABELS) as on_b,
    ):
        box = await changed_box(on_a)
        try:
            snap = await box.snapshot_container(name="cross-host-container")
        finally:
            await box.destroy()
        assert await on_b.snapshots.kind(snap.id) == "container"
        restored = on_b.container(unique_name("ds-cs-b"))
        try:
            await restored.start(TEST_IMAGE, entrypoint=sleeper(), container_snapshot=snap)
            await assert_changes_applied(on_b, restored.name)
        finally:
            await restored.destroy()
        assert await owned_images(on_b, restored.name) == []
    assert leftovers(host_b()) == []

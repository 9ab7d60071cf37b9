"""Issue 10, defect 2: no restore passes through a symlink that restored data planted.

Snapshot A of /mnt holds ``sub -> /etc`` (the container planted the link itself
before it was snapshotted); snapshot B of /mnt/sub restored after A must not be
mounted over, or extracted into, the container's /etc. Every combination of the
volume (default) and merge modes is refused before anything is created.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
from collections.abc import AsyncIterator

import pytest

import docksnap
from docksnap import DirectorySnapshot, SnapshotRestore
from tests.conftest import (
    SESSION_ID,
    SESSION_LABELS,
    TEST_IMAGE,
    read_file,
    running,
    sleeper,
    unique_name,
)
from tests.integration.test_core import _containers_named, _restore_volumes_of

pytestmark = pytest.mark.docker

Boxes = list[docksnap.Container]


async def _planted(client: docksnap.Client, boxes: Boxes) -> tuple[DirectorySnapshot, ...]:
    """A: /mnt with ``sub -> /etc`` and ``d/link -> /etc``; B: /mnt/sub; C: /mnt/d."""
    box = await running(
        client,
        boxes,
        "mkdir -p /mnt/d && ln -s /etc /mnt/sub && ln -s /etc /mnt/d/link"
        " && mkdir -p /src/sub /src/d/link"
        " && echo pwned > /src/sub/pwned && echo pwned > /src/d/link/pwned",
    )
    planted = await box.snapshot_directory("/mnt")
    into_link = await box.snapshot_directory("/src/sub")
    through_link = await box.snapshot_directory("/src/d")
    return planted, into_link, through_link


async def _refused(
    client: docksnap.Client, boxes: Boxes, restores: list[SnapshotRestore], link: str
) -> None:
    target = client.container(unique_name("ds-symlink"))
    boxes.append(target)
    with pytest.raises(docksnap.RestoreThroughSymlinkError) as caught:
        await target.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=restores)
    assert caught.value.link == link
    assert caught.value.link_target == "/etc"
    assert link in str(caught.value)
    assert isinstance(caught.value, ValueError)
    # Refused before anything was created.
    assert _containers_named(target.name) == []
    assert _restore_volumes_of(target.name) == []


@pytest.mark.parametrize(
    ("parent_merge", "child_merge"),
    [(False, False), (True, True), (False, True), (True, False)],
    ids=["volume", "merge", "volume-then-merge", "merge-then-volume"],
)
async def test_mount_point_through_planted_link_is_refused(
    client: docksnap.Client, containers: Boxes, parent_merge: bool, child_merge: bool
) -> None:
    planted, into_link, _ = await _planted(client, containers)
    restores = [
        SnapshotRestore(into_link, mount_point="/mnt/sub", merge=child_merge),
        SnapshotRestore(planted, merge=parent_merge),  # applied first: parent first
    ]
    await _refused(client, containers, restores, "/mnt/sub")


async def test_deeper_mount_point_through_planted_link_is_refused(
    client: docksnap.Client, containers: Boxes
) -> None:
    """A link in the middle of the mount point's path counts too."""
    planted, into_link, _ = await _planted(client, containers)
    restores = [
        SnapshotRestore(planted),
        SnapshotRestore(into_link, mount_point="/mnt/d/link/x/y"),
    ]
    await _refused(client, containers, restores, "/mnt/d/link")


async def test_merged_member_through_planted_link_is_refused(
    client: docksnap.Client, containers: Boxes
) -> None:
    """Merging C at /mnt/d writes ``link/pwned``: through A's ``d/link -> /etc``."""
    planted, _, through_link = await _planted(client, containers)
    restores = [
        SnapshotRestore(planted, merge=True),
        SnapshotRestore(through_link, mount_point="/mnt/d", merge=True),
    ]
    await _refused(client, containers, restores, "/mnt/d/link")


async def test_links_off_the_path_do_not_block(client: docksnap.Client, containers: Boxes) -> None:
    """Restored links are data: only passing through one is refused."""
    planted, into_link, through_link = await _planted(client, containers)
    box = client.container(unique_name("ds-symlink"))
    containers.append(box)
    await box.start(
        TEST_IMAGE,
        entrypoint=sleeper(),
        snapshots=[
            planted,
            SnapshotRestore(into_link, mount_point="/mnt/real"),
            # C's members land in a fresh volume over /mnt/d, which masks A's d/link.
            SnapshotRestore(through_link, mount_point="/mnt/d"),
        ],
    )
    assert await read_file(client, box.name, "/mnt/real/pwned") == b"pwned\n"
    assert await read_file(client, box.name, "/mnt/d/link/pwned") == b"pwned\n"
    assert await read_file(client, box.name, "/etc/pwned") is None
    merged = client.container(unique_name("ds-symlink"))
    containers.append(merged)
    await merged.start(
        TEST_IMAGE,
        entrypoint=sleeper(),
        snapshots=[
            SnapshotRestore(planted, merge=True),
            SnapshotRestore(into_link, mount_point="/mnt/real", merge=True),
        ],
    )
    assert await read_file(client, merged.name, "/mnt/real/pwned") == b"pwned\n"
    assert await read_file(client, merged.name, "/etc/pwned") is None


async def test_imported_link_is_refused_too(client: docksnap.Client, containers: Boxes) -> None:
    """An imported archive plants the same link: ``sub -> /etc`` as data, refused on the path."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        link = tarfile.TarInfo("sub")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tar.addfile(link)

    async def stream() -> AsyncIterator[bytes]:
        yield buffer.getvalue()

    planted = await client.snapshots.import_tar(stream(), dir="/mnt", image=TEST_IMAGE)
    _, into_link, _ = await _planted(client, containers)
    for merge in (False, True):
        restores = [
            SnapshotRestore(planted, merge=merge),
            SnapshotRestore(into_link, mount_point="/mnt/sub", merge=merge),
        ]
        await _refused(client, containers, restores, "/mnt/sub")


# --- symlinks of the image under a merge target ----------------------------------------


@pytest.fixture
async def linked_image(client: docksnap.Client, containers: Boxes) -> AsyncIterator[str]:
    """An image whose /mnt/data is a symlink to /etc (what many images do: a data
    directory linked elsewhere), labelled for this session and removed after."""
    box = await running(client, containers, "mkdir -p /mnt && ln -s /etc /mnt/data")
    image = f"docksnap-test-linked-{SESSION_ID}:latest"
    labels = {**SESSION_LABELS, "io.docksnap.managed": "true", "io.docksnap.role": "app"}
    changes = [arg for k, v in labels.items() for arg in ("--change", f"LABEL {k}={v}")]
    commit = ["docker", "commit", *changes, box.name, image]
    await asyncio.to_thread(subprocess.run, commit, check=True, capture_output=True)
    try:
        yield image
    finally:
        for made in containers:  # an image a container uses would only be untagged
            await made.destroy()
        rmi = ["docker", "rmi", image]
        await asyncio.to_thread(subprocess.run, rmi, check=True, capture_output=True)


def _archive(*members: tuple[str, bytes | None]) -> bytes:
    """Members in order: (name, data) files, (name/, None) directories."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_the_engine_writes_through_an_image_symlink_when_merging(
    client: docksnap.Client, containers: Boxes, linked_image: str
) -> None:
    """The threat: a member under an implied parent that the image made a symlink
    lands wherever the link points (moby only checks names lexically)."""
    box = client.container(unique_name("ds-linked"))
    containers.append(box)
    await box.start(linked_image, entrypoint=sleeper())
    raw = _archive(("data/pwned", b"pwned\n"))
    await client.docker.put_archive(box.name, "/mnt", _once(raw), size=len(raw))
    assert await read_file(client, box.name, "/etc/pwned") == b"pwned\n"


async def test_a_merge_through_an_image_symlink_is_refused(
    client: docksnap.Client, containers: Boxes, linked_image: str
) -> None:
    raw = _archive(("ok", b"fine\n"), ("data/pwned", b"pwned\n"))
    snap = await client.snapshots.import_tar(_once(raw), dir="/mnt", image=TEST_IMAGE)
    target = client.container(unique_name("ds-linked"))
    containers.append(target)
    if client.store.url.startswith("docker-volume:"):
        # That store keeps the engine's re-archiving, with a "data/" member before
        # its content: the engine itself refuses to put a directory over the link.
        with pytest.raises(docksnap.DockerError, match="cannot overwrite non-directory"):
            await target.start(
                linked_image, entrypoint=sleeper(), snapshots=[SnapshotRestore(snap, merge=True)]
            )
    else:
        with pytest.raises(docksnap.RestoreThroughSymlinkError) as caught:
            await target.start(
                linked_image, entrypoint=sleeper(), snapshots=[SnapshotRestore(snap, merge=True)]
            )
        assert (caught.value.link, caught.value.link_target) == ("/mnt/data", "/etc")
        assert caught.value.in_image
        assert "image" in str(caught.value)
    assert _containers_named(target.name) == []  # the failed start removed what it made
    # In volume mode the image's /mnt is masked: nothing to pass through.
    fresh = client.container(unique_name("ds-linked"))
    containers.append(fresh)
    await fresh.start(linked_image, entrypoint=sleeper(), snapshots=[snap])
    assert await read_file(client, fresh.name, "/mnt/data/pwned") == b"pwned\n"
    assert await read_file(client, fresh.name, "/etc/pwned") is None


async def test_a_merge_never_replaces_an_image_symlink_by_a_directory(
    client: docksnap.Client, containers: Boxes, linked_image: str
) -> None:
    """A directory member where the image has a symlink (as an engine archive of
    a directory that was a real one has): the engine refuses it
    (``noOverwriteDirNonDir``), so nothing goes through the link either."""
    raw = _archive(("data/", None), ("data/pwned", b"pwned\n"))
    snap = await client.snapshots.import_tar(_once(raw), dir="/mnt", image=TEST_IMAGE)
    box = client.container(unique_name("ds-linked"))
    containers.append(box)
    with pytest.raises(docksnap.DockerError, match="cannot overwrite non-directory"):
        await box.start(
            linked_image, entrypoint=sleeper(), snapshots=[SnapshotRestore(snap, merge=True)]
        )
    assert _containers_named(box.name) == []


async def test_a_merge_that_implies_directories_lands_every_file(
    client: docksnap.Client, containers: Boxes
) -> None:
    """Implied parents are checked between extractions (the engine's stat waits for
    an extraction into the same container): the files all arrive, in place."""
    # The first member already needs a stat: the first extraction is an empty archive.
    raw = _archive(("c/i", b"4"), ("f", b"1" * 5000), ("a/b/g", b"2"), ("a/b/h", b"3"))
    snap = await client.snapshots.import_tar(_once(raw), dir="/mnt", image=TEST_IMAGE)
    box = client.container(unique_name("ds-implied"))
    containers.append(box)
    await box.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[SnapshotRestore(snap, merge=True)])
    for path, data in (("f", b"1" * 5000), ("a/b/g", b"2"), ("a/b/h", b"3"), ("c/i", b"4")):
        assert await read_file(client, box.name, f"/mnt/{path}") == data

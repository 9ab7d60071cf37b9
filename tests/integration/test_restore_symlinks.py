"""Issue 10, defect 2: no restore passes through a symlink that restored data planted.

Snapshot A of /mnt holds ``sub -> /etc`` (the container planted the link itself
before it was snapshotted); snapshot B of /mnt/sub restored after A must not be
mounted over, or extracted into, the container's /etc. Every combination of the
volume (default) and merge modes is refused before anything is created.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator

import pytest

import docksnap
from docksnap import DirectorySnapshot, SnapshotRestore
from tests.conftest import TEST_IMAGE, read_file, sleeper, unique_name
from tests.integration.test_core import _containers_named, _restore_volumes_of, running

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

"""Incremental host capture on the real engine (issue 12, item 3).

A host capture with a parent reuses, unread, every regular file whose inode,
size, mtime and ctime (nanoseconds) are those of the parent's file at the same
path; everything else is read. These tests change files in the ways that keep
some of those four equal, and check both the counters (what was read) and the
restored content (what the snapshot holds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import docksnap
from docksnap.errors import InvalidArgumentError, SnapshotNotFoundError
from tests.conftest import (
    SESSION_ID,
    SESSION_LABEL,
    TEST_IMAGE,
    exported,
    root_of,
    running,
    session_client,
    sleeper,
    unique_name,
)

pytestmark = pytest.mark.docker

BIG = 3 * 1024 * 1024  # several content chunks
SETUP = (
    "mkdir -p /w/sub && echo keep > /w/keep && echo edit > /w/edit && "
    "echo same-size-1 > /w/inplace && echo same-size-1 > /w/renamed && "
    "echo mode > /w/chmod && echo gone > /w/gone && "
    "for i in 1 2 3; do echo sub$i > /w/sub/f$i; done && "
    f"head -c {BIG} /dev/urandom > /w/big && ln /w/keep /w/keep-link && ln -s keep /w/sym"
)
# keep, sub/f1..f3, big (keep-link is a hard link: no content of its own)
UNCHANGED = {"keep": 5, "sub/f1": 5, "sub/f2": 5, "sub/f3": 5, "big": BIG}


@pytest.fixture
async def client(docker_engine: None, tmp_path: Path) -> AsyncIterator[docksnap.Client]:
    """A client on a private chunked store (per-file: what incremental capture needs);
    the session's ``containers`` fixture destroys what the tests start on it."""
    async with session_client((tmp_path / "store").as_uri()) as client:
        yield client


def change_files(top: Path) -> dict[str, bytes]:
    """Change files in every way the comparison must catch; return their new content."""
    # Edited: size, mtime and ctime move.
    with open(top / "edit", "ab") as handle:
        handle.write(b"more\n")
    # Rewritten in place with as many bytes and touched back to its old mtime:
    # the inode, size and mtime are the parent's, only the ctime tells.
    before = (top / "inplace").stat()
    (top / "inplace").write_bytes(b"same-size-2\n")
    os.utime(top / "inplace", ns=(before.st_atime_ns, before.st_mtime_ns))
    after = (top / "inplace").stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert after.st_ctime_ns != before.st_ctime_ns
    # Replaced by another file of the same size and mtime (a new inode).
    old = (top / "renamed").stat()
    (top / "renamed.new").write_bytes(b"same-size-3\n")
    os.utime(top / "renamed.new", ns=(old.st_atime_ns, old.st_mtime_ns))
    os.rename(top / "renamed.new", top / "renamed")
    # Mode only: the content is read again (ctime moved), the header has the new mode.
    os.chmod(top / "chmod", 0o600)
    (top / "gone").unlink()
    return {
        "edit": b"edit\nmore\n",
        "inplace": b"same-size-2\n",
        "renamed": b"same-size-3\n",
        "chmod": b"mode\n",
    }


async def restored_tree(
    client: docksnap.Client,
    containers: list[docksnap.Container],
    snap: docksnap.DirectorySnapshot,
) -> Path:
    copy = client.container(unique_name("ds-incr-r"))
    containers.append(copy)
    await copy.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    return await root_of(client, copy) / "w"


async def test_changed_files_are_read_and_unchanged_ones_reused(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await running(client, containers, SETUP)
    first = await box.snapshot_directory("/w", capture="host")
    assert first.reuse is not None
    assert first.reuse.parent is None  # nothing to compare with: a full read
    assert first.reuse.reused_files == 0
    assert first.reuse.read_files == len(UNCHANGED) + 5

    top = await root_of(client, box) / "w"
    changed = change_files(top)
    second = await box.snapshot_directory("/w", capture="host")
    assert second.capture == "host"
    assert second.reuse is not None
    assert second.reuse.parent == first.id  # the newest snapshot of this directory
    assert second.reuse.reused_files == len(UNCHANGED)
    assert second.reuse.reused_bytes == sum(UNCHANGED.values())
    assert second.reuse.read_files == len(changed)
    assert second.reuse.read_bytes == sum(len(data) for data in changed.values())

    restored = await restored_tree(client, containers, second)
    for name, data in changed.items():
        assert (restored / name).read_bytes() == data, name
    assert (restored / "big").read_bytes() == (top / "big").read_bytes()
    for name in ("keep", "sub/f1", "sub/f2", "sub/f3"):
        assert (restored / name).read_bytes() == (top / name).read_bytes()
    assert not (restored / "gone").exists()
    assert (restored / "chmod").stat().st_mode & 0o777 == 0o600
    assert (restored / "keep-link").stat().st_ino == (restored / "keep").stat().st_ino
    assert os.readlink(restored / "sym") == "keep"
    for name in ("big", "inplace", "renamed"):
        assert (restored / name).stat().st_mtime_ns == (top / name).stat().st_mtime_ns


async def test_an_incremental_snapshot_is_the_full_capture_of_the_same_state(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    """Byte for byte: reused content is the chunks a fresh read cuts, and headers are
    always rebuilt from the walk's stat, so nothing tells the two apart."""
    box = await running(client, containers, SETUP)
    first = await box.snapshot_directory("/w", capture="host")
    change_files(await root_of(client, box) / "w")
    incremental = await box.snapshot_directory("/w", capture="host", parent=first)
    full = await box.snapshot_directory("/w", capture="host", parent=None)
    assert incremental.reuse is not None
    assert full.reuse is not None
    assert incremental.reuse.reused_files == len(UNCHANGED)
    assert (full.reuse.parent, full.reuse.reused_files) == (None, 0)
    assert full.reuse.read_files == incremental.reuse.read_files + len(UNCHANGED)
    assert await exported(client, incremental.id) == await exported(client, full.id)
    assert incremental.digest == full.digest
    assert incremental.size == full.size


async def test_a_parent_made_by_the_archive_api_gives_a_full_read(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await running(client, containers, SETUP)
    archive = await box.snapshot_directory("/w", capture="archive")
    assert archive.reuse is None  # the archive path reads everything, always
    for parent in (archive.id, "auto"):  # "auto" finds it: the newest of /w
        snap = await box.snapshot_directory("/w", capture="host", parent=parent)
        assert snap.reuse is not None
        assert (snap.reuse.parent, snap.reuse.reused_files) == (None, 0)
        assert snap.reuse.read_files == len(UNCHANGED) + 5
        await client.snapshots.delete(snap.id)


async def test_a_parent_of_another_directory_gives_a_full_read(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await running(client, containers, SETUP + " && mkdir /w2 && cp -a /w/keep /w2/keep")
    other = await box.snapshot_directory("/w2", capture="host")
    snap = await box.snapshot_directory("/w", capture="host", parent=other.id)
    assert snap.reuse is not None
    assert (snap.reuse.parent, snap.reuse.reused_files) == (None, 0)
    # "auto" looks only at snapshots of this directory (none yet).
    again = await box.snapshot_directory("/w", capture="host")
    assert again.reuse is not None
    assert again.reuse.parent == snap.id


async def test_a_missing_parent_is_a_typed_error_naming_it(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await running(client, containers, SETUP)
    missing = "0f1e2d3c-4b5a-4968-8776-655443322110"
    with pytest.raises(SnapshotNotFoundError, match=missing) as caught:
        await box.snapshot_directory("/w", capture="host", parent=missing)
    assert caught.value.snapshot_id == missing
    with pytest.raises(InvalidArgumentError, match="not-an-id"):
        await box.snapshot_directory("/w", parent="not-an-id")
    assert [s async for s in client.snapshots.list()] == []  # nothing stored
    state = (await client.docker.inspect_container(box.name))["State"]
    assert state["Paused"] is False


async def test_gc_after_the_parent_is_deleted_keeps_the_childs_reused_chunks(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await running(client, containers, SETUP)
    first = await box.snapshot_directory("/w", capture="host")
    top = await root_of(client, box) / "w"
    (top / "edit").write_bytes(b"changed\n")
    second = await box.snapshot_directory("/w", capture="host")
    assert second.reuse is not None
    assert second.reuse.reused_bytes >= BIG
    await client.snapshots.delete(first.id)
    report = await client.snapshots.gc(grace=0)
    assert report.objects_deleted >= 0
    verified = await client.snapshots.verify(second.id)
    assert verified.ok, verified.problems
    restored = await restored_tree(client, containers, second)
    assert (restored / "big").read_bytes() == (top / "big").read_bytes()
    assert (restored / "edit").read_bytes() == b"changed\n"


async def test_excludes_and_the_size_limit_hold_on_the_members_path(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await running(client, containers, SETUP)
    first = await box.snapshot_directory("/w", capture="host", exclude=["sub/", "big"])
    assert first.reuse is not None
    assert first.reuse.read_files == 6  # keep, edit, inplace, renamed, chmod, gone
    paths = {entry.path for entry in await client.snapshots.files(first.id)}
    assert not any(p.startswith("sub") or p == "big" for p in paths)
    assert first.report is not None
    assert first.report.excluded == 5  # sub, its three files, big
    second = await box.snapshot_directory("/w", capture="host", exclude=["sub/", "big"])
    assert second.reuse is not None
    assert (second.reuse.parent, second.reuse.reused_files) == (first.id, 6)
    with pytest.raises(docksnap.SnapshotTooLargeError):
        await box.snapshot_directory("/w", capture="host", size_limit=BIG)
    assert {s.id async for s in client.snapshots.list()} == {first.id, second.id}
    state = (await client.docker.inspect_container(box.name))["State"]
    assert state["Paused"] is False


async def test_cli_reports_the_parent_and_what_was_reused(
    client: docksnap.Client, containers: list[docksnap.Container], tmp_path: Path
) -> None:
    box = await running(client, containers, SETUP)
    store = (tmp_path / "store").as_uri()

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "docksnap", *args, "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={
                **os.environ,
                "DOCKSNAP_STORE": store,
                "DOCKSNAP_LABELS": f"{SESSION_LABEL}={SESSION_ID}",
            },
        )
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout)
        assert isinstance(document, dict)
        return document

    first = cli("snapshot", box.name, "/w", "--capture", "host", "--parent", "none")
    assert first["parent"] is None
    assert first["reused_files"] == 0
    second = cli("snapshot", box.name, "/w", "--capture", "host")
    assert second["parent"] == first["snapshot"]["id"]
    assert second["reused_files"] == len(UNCHANGED) + 5
    assert second["read_files"] == 0
    assert second["reused_bytes"] == first["read_bytes"]
    assert second["read_bytes"] == 0

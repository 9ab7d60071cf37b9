"""Imported archives on the real engine: what docksnap checks is what the engine writes.

Issue 10, defect 1: docksnap's tar reader once merged headers differently from the
engine's (Go's ``archive/tar``), so a crafted archive could hide a symlink from the
safety check. These tests run the issue's archive through the engine itself (to
show the threat is real here), then through ``import_tar`` and ``docksnap import``.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import docksnap
from docksnap.errors import DockerError, UnsafeArchiveError
from docksnap.tarstream import AmbiguousArchiveError
from tests.conftest import SESSION_LABELS, TEST_IMAGE, read_file, sleeper, unique_name
from tests.integration.test_cli import Cli
from tests.tarcraft import END, GNU, USTAR, gnu_long, header, pax, with_data
from tests.unit.test_go_tar_differential import issue_repro

pytestmark = pytest.mark.docker


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_the_engine_writes_the_issue_archive_through_its_hidden_symlink(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    """The threat on this engine: extracted as is, the archive writes /etc/pwned."""
    box = client.container(unique_name("ds-repro"))
    containers.append(box)
    await box.start(TEST_IMAGE, entrypoint=sleeper())
    raw = issue_repro()
    await client.docker.put_archive(box.name, "/tmp", _once(raw), size=len(raw))
    assert await read_file(client, box.name, "/etc/pwned") == b"pwned\n"


async def test_import_tar_refuses_the_issue_archive_before_storing_anything(
    client: docksnap.Client,
) -> None:
    directory = f"/{unique_name('mnt')}"
    with pytest.raises(AmbiguousArchiveError) as caught:
        await client.snapshots.import_tar(_once(issue_repro()), dir=directory, image=TEST_IMAGE)
    # Named as the engine reads it: the symlink that the global header hid.
    assert caught.value.path == "evil"
    assert "global header sets path" in str(caught.value)
    assert [info async for info in client.snapshots.list(dir=directory)] == []


@pytest.fixture
def chunked(docker_engine: None, tmp_path: Path) -> Iterator[Cli]:
    runner = Cli((tmp_path / "store").as_uri())
    yield runner
    runner.cleanup()


def test_cli_import_refuses_the_issue_archive_so_no_merge_restore_can_follow(
    chunked: Cli,
) -> None:
    refused = chunked("import", "-", "--dir", "/mnt", code=11, stdin=issue_repro())
    assert b"'evil'" in refused.stderr
    assert b"nothing was stored" in refused.stderr
    assert chunked.json("ls") == []
    # The store holds nothing to restore: `run --restore ID --merge` has no ID to use.


def _quirky_archive() -> bytes:
    """Unambiguous, but in every dialect Go reads: what the engine writes must be
    what docksnap lists, after re-encoding."""
    star = header(b"f", size=3, prefix=b"deep/er", magic=USTAR, trailer=b"tar\x00")
    return b"".join(
        [
            header(b"deep/", b"5", mode=0o755, uid=0, gid=0),
            header(b"deep/er/", b"5", mode=0o755, uid=0, gid=0),
            with_data(star, b"abc"),
            gnu_long(b"L", b"deep/" + b"n" * 150),
            with_data(header(b"ignored", size=2, magic=GNU, uid=0, gid=0), b"xy"),
            pax({b"comment": b"made by hand"}, b"g"),
            pax({b"SCHILY.xattr.user.note": b"kept", b"uname": b"who", b"atime": b"5"}),
            header(b"link", b"2", link=b"deep/er/f", uid=0, gid=0),
            gnu_long(b"K", b"deep/er/f"),
            header(b"hard", b"1", uid=0, gid=0),
            END,
            b"trailing bytes the engine never reads",
        ]
    )


def test_imported_archive_is_restored_exactly_as_listed(chunked: Cli, tmp_path: Path) -> None:
    raw = _quirky_archive()
    snap = chunked.import_tar("-", "--dir", "/mnt", stdin=raw)["snapshot"]
    listed = chunked.json("files", snap["id"])
    paths = {f["path"] for f in listed}
    assert paths == {"deep", "deep/er", "deep/er/f", "deep/" + "n" * 150, "link", "hard"}
    assert next(f for f in listed if f["path"] == "link")["xattrs"] == {"user.note": '"kept"'}
    assert '    user.note="kept"' in chunked("files", snap["id"]).stdout.decode()
    # Stored re-encoded: the size is the canonical archive's, and an export is it.
    exported = chunked("export", snap["id"]).stdout
    assert snap["size"] == len(exported) != len(raw)

    box = chunked.run_box("", "--restore", f"{snap['id']}", "--merge")
    found = subprocess.run(
        ["docker", "exec", box, "find", "/mnt", "-mindepth", "1"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split()
    assert {p.removeprefix("/mnt/") for p in found} == paths
    cat = ["docker", "exec", box, "cat", "/mnt/deep/er/f", "/mnt/hard", "/mnt/link"]
    assert subprocess.run(cat, capture_output=True, check=True).stdout == b"abc" * 3


ENGINE_REFUSES = [
    ("hard link to a missing target", header(b"h", b"1", link=b"nowhere") + END, "h"),
    ("hard link to a directory", header(b"d/", b"5") + header(b"h", b"1", link=b"d") + END, "h"),
    ("unknown type flag", with_data(header(b"u", b"Z", size=1), b"z") + END, "u"),
    ("contiguous file", header(b"c", b"7") + END, "c"),
    ("file replacing a directory", header(b"a/", b"5") + header(b"a") + END, "a"),
    ("directory replacing a file", header(b"a") + header(b"a/", b"5") + END, "a"),
    ("member under a file", header(b"a") + header(b"a/b") + END, "a/b"),
    ("symlink climbing out", header(b"up", b"2", link=b"../../etc") + END, "up"),
    # The engine creates a member's missing parents as directories, so a later member
    # at a parent's path replaces a directory ("cannot overwrite directory").
    (
        "file replacing an implied directory",
        with_data(header(b"a/f", size=1), b"x") + header(b"a") + END,
        "a",
    ),
    (
        "symlink replacing an implied directory",
        with_data(header(b"a/f", size=1), b"x") + header(b"a", b"2", link=b"/etc") + END,
        "a",
    ),
    # moby removes the path before link(2), so the link's target is gone: ENOENT
    # (and in a merge restore the container's own file at that path is deleted).
    (
        "hard link to itself",
        with_data(header(b"f", size=1), b"x") + header(b"f", b"1", link=b"f") + END,
        "f",
    ),
    (
        "hard link to itself, spelt ./f",
        with_data(header(b"f", size=1), b"x") + header(b"./f", b"1", link=b"f") + END,
        "f",
    ),
    ("empty symlink target", header(b"l", b"2", link=b"") + END, "l"),  # symlink(2): ENOENT
]
CASES = pytest.mark.parametrize(
    ("case", "raw", "member"), ENGINE_REFUSES, ids=[c for c, _, _ in ENGINE_REFUSES]
)


@CASES
async def test_the_engine_refuses_these_archives_at_restore(
    docker_engine: None, tmp_path: Path, case: str, raw: bytes, member: str
) -> None:
    """Why import refuses them: extracted by the engine (as a restore does), they fail."""
    async with docksnap.Client(store=tmp_path.as_uri(), labels=SESSION_LABELS) as client:
        box = client.container(unique_name("ds-refuse"))
        await box.start(TEST_IMAGE, entrypoint=sleeper())
        try:
            with pytest.raises(DockerError):
                await client.docker.put_archive(box.name, "/tmp", _once(raw), size=len(raw))
        finally:
            await box.destroy()


@CASES
def test_cli_import_refuses_what_the_engine_would_refuse_at_restore(
    chunked: Cli, case: str, raw: bytes, member: str
) -> None:
    refused = chunked("import", "-", "--dir", "/d", code=11, stdin=raw)
    assert f"unsafe tar member {member!r}".encode() in refused.stderr, case
    assert chunked.json("ls") == []


def test_device_nodes_need_allow_devices(chunked: Cli) -> None:
    box = chunked.run_box("mkdir -p /d && mknod /d/null c 1 3 && mkfifo /d/pipe && echo x > /d/f")
    snap = chunked.snapshot(box, "/d")["snapshot"]
    exported = chunked("export", snap["id"]).stdout
    refused = chunked("import", "-", "--dir", "/d", code=11, stdin=exported)
    assert b"char members are not allowed" in refused.stderr or b"fifo members" in refused.stderr
    allowed = chunked.import_tar("-", "--dir", "/d", "--allow-devices", stdin=exported)
    kinds = {f["path"]: f["type"] for f in chunked.json("files", allowed["snapshot"]["id"])}
    assert (kinds["null"], kinds["pipe"], kinds["f"]) == ("char", "fifo", "file")


async def test_import_tar_allow_devices_keyword(client: docksnap.Client) -> None:
    raw = header(b"null", b"3", devmajor=1, devminor=3) + END
    directory = f"/{unique_name('dev')}"
    with pytest.raises(UnsafeArchiveError, match="'null'"):
        await client.snapshots.import_tar(_once(raw), dir=directory, image=TEST_IMAGE)
    snap = await client.snapshots.import_tar(
        _once(raw), dir=directory, image=TEST_IMAGE, allow_devices=True
    )
    files = await client.snapshots.files(snap.id)
    # The volume store lists its own root directory too.
    assert [(e.path, e.type) for e in files if e.path != "."] == [("null", "char")]
    await client.snapshots.delete(snap.id)


def test_snapshots_from_the_engine_are_stored_byte_for_byte(chunked: Cli) -> None:
    """Only imports are re-encoded: an export of a snapshot is what the engine gave."""
    box = chunked.run_box(
        "mkdir -p /app/" + "d" * 120 + " && echo hi > /app/f && ln -s /etc /app/l"
    )
    # The archive path; host capture's own byte-for-byte test is in test_host_capture.py.
    snap = chunked.snapshot(box, "/app", "--capture", "archive")["snapshot"]
    exported = chunked("export", snap["id"]).stdout
    engine = subprocess.run(
        ["docker", "cp", f"{box}:/app/.", "-"], capture_output=True, check=True
    ).stdout
    assert exported == engine
    assert snap["size"] == len(engine)

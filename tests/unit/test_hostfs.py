"""Resolution inside a root and the descriptor walk, on real files in a temporary tree."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from docksnap.docker import DockerClient
from docksnap.hostfs import resolve
from docksnap.hostfs.tree import HostTree, parse_owners, tar_pieces
from docksnap.model import (
    CaptureReuse,
    DirectorySnapshot,
    SnapshotInfo,
    SnapshotSource,
    new_snapshot_id,
)
from docksnap.service.capture import Capture, SizeLimit
from docksnap.service.hostcapture import HostCapture, ParentFiles, find_parent, save_host_members
from docksnap.service.spool import read_ahead
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from docksnap.tarstream import TarIndexer
from docksnap.tarstream.build import pax_record
from docksnap.tarstream.goheader import GoHeader, encode, host_stat


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fake container root, beside a host directory it must never reach."""
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret").write_text("HOST-ONLY-SECRET")
    top = tmp_path / "root"
    (top / "b" / "c").mkdir(parents=True)
    (top / "host").mkdir()
    (top / "host" / "secret").write_text("container")
    (top / "a").symlink_to("/b")
    (top / "up").symlink_to("../../../..")
    (top / "hostlink").symlink_to(str(tmp_path / "host"))
    (top / "magic").symlink_to("/proc/self/root" + str(tmp_path / "host"))
    (top / "loop1").symlink_to("loop2")
    (top / "loop2").symlink_to("loop1")
    (top / "f").write_text("file")
    return top


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/a/c", "/b/c"),
        ("/up/b", "/b"),
        ("/../../b/../a", "/b"),
        ("/b/c/../../up/up/a", "/b"),
        ("/", "/"),
    ],
)
def test_symlinks_resolve_inside_the_root(root_fd: int, path: str, canonical: str) -> None:
    assert resolve.resolve_in_root(root_fd, path) == canonical


def test_absolute_and_magic_links_land_inside(root_fd: int, tmp_path: Path) -> None:
    # Both aim at tmp_path/host on the host; inside the root that path does not exist.
    for name in ("/hostlink", "/magic"):
        with pytest.raises(FileNotFoundError):
            resolve.resolve_in_root(root_fd, name)


def test_loops_and_files_fail_as_open_would(root_fd: int) -> None:
    with pytest.raises(OSError, match="symbolic links") as loop:
        resolve.resolve_in_root(root_fd, "/loop1")
    assert loop.value.errno == errno.ELOOP
    with pytest.raises(NotADirectoryError):
        resolve.resolve_in_root(root_fd, "/f/x")


@pytest.mark.parametrize("opener", ["openat2", "walk"])
def test_open_in_root_follows_nothing(root_fd: int, opener: str) -> None:
    def open_(path: str) -> int:
        if opener == "walk":
            return resolve.open_nofollow_walk(root_fd, path.lstrip("/").encode(), os.O_RDONLY)
        return resolve.open_in_root(root_fd, path, os.O_RDONLY)

    fd = open_("/host/secret")
    try:
        assert os.read(fd, 100) == b"container"
    finally:
        os.close(fd)
    # A symlink where a canonical path should have none: refused, not followed.
    with pytest.raises(OSError, match=r"symbolic links|Not a directory") as caught:
        open_("/a/c")
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_openat2_in_root_never_climbs(root_fd: int) -> None:
    fd = resolve.openat2(root_fd, b"up/host/secret", os.O_RDONLY, resolve.RESOLVE_IN_ROOT)
    try:
        assert os.read(fd, 100) == b"container"
    finally:
        os.close(fd)


def walk(directory: Path) -> bytes:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    tree = HostTree(fd, parse_owners(b"root:x:0:0::/:/bin/sh\n", b"root:x:0:\n"))
    try:
        return b"".join(tar_pieces(tree, recheck=True))
    finally:
        tree.close()


def test_walk_records_symlinks_without_following_them(root: Path) -> None:
    data = walk(root)
    assert b"HOST-ONLY-SECRET" not in data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["./hostlink"].issym()
    assert members["./magic"].issym()
    assert members["./host/secret"].isfile()
    assert members["."].uname == "root"


def test_walk_carries_nanoseconds_and_user_xattrs(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    os.utime(tmp_path / "f", ns=(0, 1_700_000_000_123_456_789))
    try:
        os.setxattr(tmp_path / "f", "user.k", b"\x00v")
    except OSError as exc:
        pytest.skip(f"no user xattrs on {tmp_path}: {exc}")
    os.link(tmp_path / "f", tmp_path / "g")
    os.mkfifo(tmp_path / "p")
    data = walk(tmp_path)
    indexer = TarIndexer()
    indexer.feed(data)
    indexer.finish()
    entries = {e.path: e for e in indexer.entries}
    assert entries["f"].xattrs == (("user.k", b"\x00v"),)
    assert entries["g"].type == "hardlink"
    assert entries["g"].link == "f"
    assert entries["p"].type == "fifo"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getmember("./f").pax_headers["mtime"] == "1700000000.123456789"


def test_a_file_that_shrinks_while_read_keeps_the_stream_whole(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 5000)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    tree = HostTree(fd, parse_owners(b"", b""))
    pieces = tar_pieces(tree, recheck=True)
    out = [next(pieces), next(pieces)]  # the root, then f's header
    os.truncate(tmp_path / "f", 10)
    out += list(pieces)
    tree.close()
    data = b"".join(out)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmember("./f")
        handle = tar.extractfile(member)
        assert handle is not None
        assert handle.read() == b"x" * 10 + bytes(4990)
    assert [(p.path, p.reason) for p in tree.problems] == [("f", "changed"), ("f", "changed")]


@pytest.mark.parametrize(
    ("header", "expect"),
    [
        (GoHeader(b"./" + b"d" * 120 + b"/f", "file", 0o100644, 0, 0, 3, 1), "ustar-split"),
        (GoHeader("./ünï".encode(), "file", 0o100644, 0, 0, 3, 1), "pax"),
        (GoHeader(b"./a", "file", 0o100644, 0, 0, 3, 1, mtime_ns=5), "pax"),
        (GoHeader(b"./a", "file", 0o100644, 2**21, 0, 3, 1), "pax"),
        (GoHeader(b"./a", "file", 0o100644, 0, 0, 3, -1, mtime_ns=5), "pax"),
        (GoHeader(b"./a", "file", 0o100644, 0, 0, 3, 1), "ustar"),
    ],
)
def test_headers_read_back_as_written(header: GoHeader, expect: str) -> None:
    raw = encode(header)
    assert len(raw) % 512 == 0
    assert (len(raw) > 512) == (expect == "pax")
    data = raw + b"abc" + bytes(509) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        assert member is not None
        assert member.name.encode() == header.name
        assert member.uid == header.uid
        assert member.mtime == pytest.approx(header.mtime + header.mtime_ns / 1e9)
    indexer = TarIndexer()
    indexer.feed(data)
    indexer.finish()
    assert indexer.entries[0].mtime == header.mtime


async def test_cancelled_stream_waits_for_the_worker_then_closes_every_descriptor(
    tmp_path: Path,
) -> None:
    """Closing the tree's descriptors under a worker thread mid-read could hand their
    numbers to other files: cancellation waits for the batch, then closes them all."""
    for n in range(3):
        (tmp_path / f"f{n}").write_bytes(os.urandom(3 * 1024 * 1024))
    before = set(os.listdir("/proc/self/fd"))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    tree = HostTree(fd, parse_owners(b"", b""))
    stream = host_capture(tree).frames()

    async def consume() -> None:
        async for _ in stream:
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
    assert tree.dir_fd == -1
    assert set(os.listdir("/proc/self/fd")) <= before


def host_capture(tree: HostTree, parent: Any = None, limit: int = 2**40) -> HostCapture:
    """Host capture of ``tree`` without an engine (the walk's report needs none)."""
    capture = Capture(cast(DockerClient, None), "box", "/d", walked=tree.problems)
    return HostCapture(tree, capture, SizeLimit(limit, "/d"), parent, recheck=False)


def _walk_as_nobody(top: Path) -> dict[str, list[Any]]:
    """Walk ``top`` in a forked child that dropped root (root reads everything)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            # Opened as root, as docksnap holds the container's directory; the
            # walk below it then runs with nobody's rights.
            tree = HostTree(os.open(top, os.O_RDONLY | os.O_DIRECTORY), parse_owners(b"", b""))
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            data = b"".join(tar_pieces(tree, recheck=False))
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                names = [m.name for m in tar.getmembers()]
            problems = [[p.path, p.reason] for p in tree.problems]
            os.write(write_end, json.dumps({"names": names, "problems": problems}).encode())
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": [repr(exc)]}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        out = reader.read()
    os.waitpid(pid, 0)
    result: dict[str, list[Any]] = json.loads(out)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to walk as another user")
def test_a_file_that_cannot_be_read_is_reported_not_skipped(tmp_path: Path) -> None:
    top = tmp_path / "shared"
    top.mkdir()
    tmp_path.chmod(0o755)
    (top / "open").write_text("x")
    (top / "closed").write_text("secret")
    (top / "closed").chmod(0o000)
    (top / "locked").mkdir(mode=0o000)
    result = _walk_as_nobody(top)
    assert "./open" in result["names"]
    assert "./closed" not in result["names"]
    assert "./locked" in result["names"]  # the directory is there, its contents unknown
    assert sorted(result["problems"]) == [["closed", "unreadable"], ["locked", "unreadable"]]


def _tree(top: Path) -> HostTree:
    """As :func:`walk` opens it (the same owner names)."""
    owners = parse_owners(b"root:x:0:0::/:/bin/sh\n", b"root:x:0:\n")
    return HostTree(os.open(top, os.O_RDONLY | os.O_DIRECTORY), owners)


async def _save_host(
    store: ChunkedStore, top: Path, parent: ParentFiles | None, memory: int
) -> tuple[SnapshotInfo, HostCapture]:
    """A host capture of ``top`` through a read-ahead whose memory is ``memory`` bytes
    (small: the frames cross the spool file)."""
    host = host_capture(_tree(top), parent)
    record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/d")
    frames = host.frames()

    async def unpaused() -> None:
        return None

    async with read_ahead(
        frames, on_end=unpaused, directory=top.parent, memory=memory, hold=True
    ) as stream:
        info = await save_host_members(
            store, record, host.members(stream), source=SnapshotSource("box", "img"), ttl=None
        )
    return info, host


async def _export(store: ChunkedStore, snapshot_id: str) -> bytes:
    async with store.open(snapshot_id) as reader:
        return b"".join([piece async for piece in reader])


async def test_host_members_through_the_spool_are_the_walks_tar_stream(tmp_path: Path) -> None:
    """Frames of every size (a header alone, small files joined, pieces of a 3 MiB
    file) cross a spool file and come back as the members of the walk's stream."""
    top = tmp_path / "d"
    (top / "sub").mkdir(parents=True)
    (top / "empty").write_bytes(b"")
    (top / "small").write_bytes(b"s" * 700)
    (top / "mid").write_bytes(os.urandom(100 * 1024))
    (top / "sub/big").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    os.symlink("small", top / "link")
    store = ChunkedStore(LocalObjectStore(tmp_path / "store"))
    try:
        info, host = await _save_host(store, top, None, memory=64 * 1024)
        assert await _export(store, info.id) == walk(top)
        assert host.reuse == CaptureReuse(None, 0, 0, 4, 700 + 100 * 1024 + 3 * 1024 * 1024 + 5)
    finally:
        await store.close()


async def test_only_files_with_the_parents_inode_size_mtime_and_ctime_are_reused(
    tmp_path: Path,
) -> None:
    top = tmp_path / "d"
    top.mkdir()
    for name in ("same", "edited", "ctime", "replaced"):
        (top / name).write_bytes(name.encode() * 1000)
    store = ChunkedStore(LocalObjectStore(tmp_path / "store"))
    try:
        first, _ = await _save_host(store, top, None, memory=2**20)
        (top / "edited").write_bytes(b"edited" * 1000 + b"!")
        before = (top / "ctime").stat()
        (top / "ctime").write_bytes(b"C" * before.st_size)
        os.utime(top / "ctime", ns=(before.st_atime_ns, before.st_mtime_ns))
        old = (top / "replaced").stat()
        (top / "new").write_bytes(b"R" * old.st_size)
        os.utime(top / "new", ns=(old.st_atime_ns, old.st_mtime_ns))
        os.rename(top / "new", top / "replaced")
        parent = await find_parent(store, "auto", container="box", path="/d")
        assert parent is not None
        assert parent.id == first.id
        second, host = await _save_host(store, top, parent, memory=2**20)
        assert host.reuse.reused_files == 1  # same
        assert host.reuse.read_files == 3
        full, _ = await _save_host(store, top, None, memory=2**20)
        assert await _export(store, second.id) == await _export(store, full.id) == walk(top)
        assert second.snapshot.digest == full.snapshot.digest
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("records", "expect"),
    [
        (
            {b"DOCKSNAP.ino": b"42", b"ctime": b"1700000000.5"},
            (42, 3 * 10**9, 1_700_000_000_500_000_000),
        ),
        (
            {b"DOCKSNAP.ino": b"7", b"ctime": b"-1.25", b"mtime": b"-2.5"},
            (7, -2_500_000_000, -1_250_000_000),
        ),
        ({b"DOCKSNAP.ino": b"7"}, None),
        ({b"ctime": b"5"}, None),
        ({b"DOCKSNAP.ino": b"x7", b"ctime": b"5"}, None),
    ],
)
def test_host_stat_reads_back_the_records(
    records: dict[bytes, bytes], expect: tuple[int, int, int] | None
) -> None:
    header = GoHeader(b"./f", "file", 0o100644, 0, 0, 3, 3)
    raw = encode(header)
    if records:
        data = b"".join(pax_record(k, v) for k, v in sorted(records.items()))
        pax = tarfile.TarInfo("./PaxHeaders.0/f")
        pax.type = tarfile.XHDTYPE
        pax.size = len(data)
        raw = pax.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512) + raw
    assert host_stat(raw) == expect
    assert host_stat(encode(header)) is None  # a plain ustar header: the engine's

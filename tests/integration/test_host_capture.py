"""Host capture on the real engine (issue 12, items 1, 2 and 4).

Host capture reads a directory through ``/proc/<pid>/root`` and writes the tar
stream itself; these tests hold it to the engine's own ``GET /archive`` of the
same tree (byte for byte where the engine keeps everything), to restores that
give back what the archive path cannot, and to never reading the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import docksnap
from docksnap.errors import HostCaptureUnavailableError
from docksnap.service.hostcapture import open_host_tree
from tests.conftest import (
    SESSION_ID,
    SESSION_LABEL,
    SESSION_LABELS,
    TEST_IMAGE,
    exported,
    read_file,
    root_of,
    running,
    session_client,
    sleeper,
    unique_name,
)

pytestmark = pytest.mark.docker

# Everything the engine archives, in shapes that stress the header encoding:
# a name past 100 bytes (ustar prefix), a directory name past 100 (PAX path), a
# UTF-8 name (PAX path), a hard link, symlinks out of the container and up a
# `..` chain, a fifo, a character device (busybox's mknod; Docker grants
# CAP_MKNOD by default), a file owned by a uid the container has no name for.
LONG = "L" * 120
TREE = (
    "mkdir -p /w/d/e /w/" + LONG + " && echo hi > /w/a && ln /w/a /w/d/hl && "
    "ln -s /etc/shadow /w/shadow && ln -s ../.. /w/d/e/up && ln -s ../../../../.. /w/d/out && "
    "mkfifo /w/fifo && mknod /w/null c 1 3 && printf 'ünï' > '/w/ünïcødé' && "
    "touch /w/" + LONG + "/x && echo deep > /w/d/e/f && chown 1000:1000 /w/a && "
    "chmod 4755 /w/d/e/f"
)


@pytest.fixture
async def client(docker_engine: None, tmp_path: Path) -> AsyncIterator[docksnap.Client]:
    """A client on a private chunked store: it keeps the stream byte for byte (and
    the session's ``containers`` fixture destroys what the tests start on it)."""
    async with session_client((tmp_path / "store").as_uri()) as client:
        yield client


@pytest.fixture
def chunked(client: docksnap.Client) -> docksnap.Client:
    return client


def whole_seconds(top: Path) -> None:
    """Drop sub-second mtimes, which the engine's archive cannot carry."""
    for path in [top, *top.rglob("*")]:
        seconds = path.lstat().st_mtime_ns // 10**9 * 10**9
        os.utime(path, ns=(seconds, seconds), follow_symlinks=False)


async def test_host_stream_is_the_engines_archive_plus_inodes_and_ctimes(
    chunked: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    """Member for member, field for field and byte for byte of content, the host
    stream is the engine's; its only additions are each regular file's inode and
    ctime (which make the header PAX: the name moves into a ``path`` record)."""
    box = await running(chunked, containers, TREE)
    root = await root_of(chunked, box) / "w"
    whole_seconds(root)
    archive = await box.snapshot_directory("/w", capture="archive")
    host = await box.snapshot_directory("/w", capture="host")
    assert (archive.capture, host.capture) == ("archive", "host")
    assert host.report is not None
    assert host.report.ok, host.report
    assert host.report.checked == ("walk", "xattrs")
    host_members = tar_members(await exported(chunked, host.id))
    assert _without_host_records(host_members) == tar_members(await exported(chunked, archive.id))
    records = {m[0]["name"]: m[1] for m in host_members if m[0]["type"] == tarfile.REGTYPE}
    st = (root / "d/e/f").stat()
    assert records["./d/e/f"]["DOCKSNAP.ino"] == str(st.st_ino)
    seconds, nanoseconds = divmod(st.st_ctime_ns, 10**9)
    assert records["./d/e/f"]["ctime"] == f"{seconds}.{nanoseconds:09d}".rstrip("0").rstrip(".")
    assert all("DOCKSNAP.ino" in r and "ctime" in r for r in records.values())


Member = tuple[dict[str, Any], dict[str, str], bytes]


def tar_members(data: bytes) -> list[Member]:
    """Each member's fields, PAX records and content (no checksum: the header
    blocks may differ while saying the same)."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            info = dict(member.get_info())
            info.pop("chksum")
            handle = tar.extractfile(member) if member.isfile() else None
            out.append((info, dict(member.pax_headers), handle.read() if handle else b""))
    return out


def _without_host_records(members: list[Member]) -> list[Member]:
    """What the engine's archive would hold: no inode or ctime records, and names
    as ustar holds them (a PAX ``path`` only where ustar cannot)."""
    out = []
    for info, records, data in members:
        kept = {k: v for k, v in records.items() if k not in ("DOCKSNAP.ino", "ctime")}
        if "path" in kept and _ustar_can_hold(kept["path"]):
            del kept["path"]
        out.append((info, kept, data))
    return out


def _ustar_can_hold(name: str) -> bool:
    if not name.isascii():
        return False
    if len(name) <= 100:
        return True
    prefix = name[:156].rpartition("/")[0]
    return bool(prefix) and len(prefix) <= 155 and 0 < len(name) - len(prefix) - 1 <= 100


async def test_restores_of_host_and_archive_captures_agree(
    chunked: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    """Both restore the same tree; host capture also gives back what the archive drops."""
    tree = TREE.replace(" && ln -s ../../../../.. /w/d/out", "")  # the engine refuses it
    box = await running(chunked, containers, tree)
    root = await root_of(chunked, box) / "w"
    acl = _acl_user(1000)
    os.setxattr(root / "a", "user.origin", b"host\x00\xffbinary")
    os.setxattr(root / "a", "system.posix_acl_access", acl)
    # A default ACL on a directory without children: the engine sets it before
    # creating the children, which would inherit it (docs/METADATA.md).
    (root / "inherits").mkdir()
    os.setxattr(root / "inherits", "system.posix_acl_default", acl)
    os.utime(root / "d/e/f", ns=(0, 1_577_836_800_123_456_789))
    os.utime(root / "d", ns=(0, 1_577_836_800_987_654_321))
    caps = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+p
    (root / "ping").write_bytes(b"#!/bin/sh\n")
    os.setxattr(root / "ping", "security.capability", caps)
    host = await box.snapshot_directory("/w", capture="host")
    archive = await box.snapshot_directory("/w", capture="archive")
    assert host.report is not None
    assert host.report.ok, host.report

    restored = {}
    for snap in (host, archive):
        copy = chunked.container(unique_name("ds-host-r"))
        containers.append(copy)
        await copy.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
        restored[snap.capture] = await root_of(chunked, copy) / "w"

    original = _listing(root)
    # The engine's extraction never applies the archive root's own header (moby
    # skips "."): the restored directory has the mount point's metadata.
    original.pop(".")
    assert _listing(restored["host"], root=False) == original
    # The archive path keeps all but sub-second mtimes and the attributes it drops.
    assert _listing(restored["archive"], root=False) == _without_extras(original)
    assert _listing(restored["host"], root=False) != _listing(restored["archive"], root=False)
    assert (restored["host"] / "d/e/f").stat().st_mtime_ns == 1_577_836_800_123_456_789
    assert os.getxattr(restored["host"] / "a", "user.origin") == b"host\x00\xffbinary"
    assert os.getxattr(restored["host"] / "ping", "security.capability") == caps


def _acl_user(uid: int) -> bytes:
    """A POSIX ACL xattr value (version 2): owner rw, user ``uid`` r, group r, mask r, other r."""
    entries = [(0x01, 6, 2**32 - 1), (0x02, 4, uid), (0x04, 4, 2**32 - 1)]
    entries += [(0x10, 4, 2**32 - 1), (0x20, 4, 2**32 - 1)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _listing(top: Path, *, root: bool = True) -> dict[str, tuple[Any, ...]]:
    """Everything a restore should give back, per relative path (atime and ctime aside)."""
    out = {}
    for path in sorted([top, *top.rglob("*")] if root else top.rglob("*")):
        st = path.lstat()
        kind = st.st_mode & 0o170000
        content: Any = None
        if path.is_symlink():
            content = os.readlink(path)
        elif kind == 0o100000:
            content = path.read_bytes()
        elif kind in (0o020000, 0o060000):
            content = (os.major(st.st_rdev), os.minor(st.st_rdev))
        xattrs = {}
        if kind in (0o100000, 0o040000):
            xattrs = {k: os.getxattr(path, k) for k in os.listxattr(path)}
        links = st.st_nlink if kind != 0o040000 else None
        out[str(path.relative_to(top))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            links,
            content,
            xattrs,
        )
    return out


def _without_extras(listing: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """What the archive path keeps: whole-second mtimes and only security.capability."""
    out = {}
    for name, (mode, uid, gid, mtime, links, content, xattrs) in listing.items():
        kept = {k: v for k, v in xattrs.items() if k == "security.capability"}
        out[name] = (mode, uid, gid, mtime // 10**9 * 10**9, links, content, kept)
    return out


@pytest.fixture
def host_canary(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A directory on the host, outside every container, holding a secret."""
    directory = Path("/tmp") / f"docksnap-canary-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    secret = f"HOST-SECRET-{uuid.uuid4().hex}".encode()
    (directory / "secret").write_bytes(secret)
    try:
        yield str(directory), secret
    finally:
        (directory / "secret").unlink()
        directory.rmdir()


async def test_nothing_of_the_host_is_read(
    chunked: docksnap.Client,
    containers: list[docksnap.Container],
    host_canary: tuple[str, bytes],
) -> None:
    """Symlinks aimed at a host directory, in the tree and as the directory itself,
    lead to the container's own files (or nowhere), never the host's."""
    canary, secret = host_canary
    script = (
        f"mkdir -p /w /inside{canary} && echo container > /inside{canary}/secret && "
        f"ln -s {canary} /w/abs && ln -s ../../../../../../..{canary} /w/rel && "
        f"ln -s /proc/1/root{canary} /w/magic && ln -s ../../../../..{canary} /lnk && "
        f"ln -s /inside{canary} /w/ok"
    )
    box = await running(chunked, containers, script)
    snap = await box.snapshot_directory("/w", capture="host")
    data = await exported(chunked, snap.id)
    assert secret not in data
    files = {e.path: e for e in await chunked.snapshots.files(snap.id)}
    assert {files[n].type for n in ("abs", "rel", "magic", "ok")} == {"symlink"}
    assert not any(path.endswith("secret") for path in files)
    # The directory itself through a symlink climbing out: resolved inside the
    # container, where that path does not exist.
    with pytest.raises(docksnap.DirectoryNotFoundError):
        await box.snapshot_directory("/lnk", capture="host")
    # Through a symlink that stays inside: the container's directory of that name.
    inside = await box.snapshot_directory("/w/ok", capture="host")
    assert b"container\n" in await exported(chunked, inside.id)
    assert secret not in await exported(chunked, inside.id)


async def test_a_directory_swapped_for_a_symlink_mid_capture_does_not_escape(
    chunked: docksnap.Client,
    containers: list[docksnap.Container],
    host_canary: tuple[str, bytes],
) -> None:
    """Unpaused, a loop swaps ``sw`` between a directory and a symlink to a path
    that exists only on the host: whatever the walk meets, it stays inside."""
    canary, secret = host_canary
    script = (
        "mkdir -p /w/sw && echo mine > /w/sw/file && "
        "(while :; do mv /w/sw /w/sw.d; ln -s "
        + canary
        + " /w/sw; rm /w/sw; mv /w/sw.d /w/sw; done) >/dev/null 2>&1 & true"
    )
    box = await running(chunked, containers, script)
    seen = set()
    for _ in range(25):
        snap = await box.snapshot_directory("/w", pause=False, capture="host")
        files = {e.path: e.type for e in await chunked.snapshots.files(snap.id)}
        assert not any("secret" in path for path in files), files
        assert secret not in await exported(chunked, snap.id)
        seen.add(files.get("sw"))
        await chunked.snapshots.delete(snap.id)
    assert seen & {"dir", "symlink", None}


async def test_sockets_are_reported_by_the_walk(
    chunked: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    script = "mkdir -p /w/jail/dev && cp /bin/busybox /w/jail/ && chroot /w/jail /busybox syslogd"
    box = await running(chunked, containers, script)
    snap = await box.snapshot_directory("/w", capture="host")
    assert snap.report is not None
    assert [(e.path, e.reason) for e in snap.report.entries] == [("jail/dev/log", "socket")]
    with pytest.raises(docksnap.CaptureIncompleteError):
        await box.snapshot_directory("/w", capture="host", strict=True)


async def test_host_capture_unavailable_reasons(
    chunked: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await running(chunked, containers, "mkdir -p /w && echo x > /w/f")
    # A runtime mount the engine's archive never shows: auto falls back.
    with pytest.raises(HostCaptureUnavailableError, match="/proc"):
        await box.snapshot_directory("/", capture="host")
    await box.signal(9)
    await box.monitor()
    # Stopped: no process, no root to read.
    with pytest.raises(HostCaptureUnavailableError, match="no running process") as caught:
        await box.snapshot_directory("/w", capture="host")
    assert caught.value.container == box.name
    fallback = await box.snapshot_directory("/w")
    assert fallback.capture == "archive"


async def test_a_pid_that_is_not_the_containers_is_refused(chunked: docksnap.Client) -> None:
    """An engine in another pid namespace reports pids that here are other processes."""
    state = {"Pid": os.getpid(), "Id": "f" * 64, "Mounts": []}
    with pytest.raises(HostCaptureUnavailableError, match="not the container's process"):
        await open_host_tree(chunked.docker, "elsewhere", state, "/", "host")
    assert await open_host_tree(chunked.docker, "elsewhere", state, "/", "auto") is None


def run_cli(docker_host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "DOCKSNAP_STORE": "docker-volume:",
        "DOCKSNAP_LABELS": f"{SESSION_LABEL}={SESSION_ID}",
    }
    return subprocess.run(
        [sys.executable, "-m", "docksnap", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def tcp_to_unix(path: str) -> Iterator[int]:
    """A loopback TCP port forwarding to a unix socket: the engine as a remote host."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(path)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


async def test_capture_host_on_a_remote_engine_fails_naming_the_reason() -> None:
    """The second engine over TCP: its containers' files are not ours to read."""
    host_b = os.environ.get("DOCKSNAP_TEST_DOCKER_HOST_B")
    if not host_b:
        pytest.fail("DOCKSNAP_TEST_DOCKER_HOST_B is not set: run the tests with /work/devtest")
    path = host_b.removeprefix("unix://")
    with tcp_to_unix(path) as port:
        async with docksnap.Client(
            docker_host=f"tcp://127.0.0.1:{port}",
            store="docker-volume:",
            labels=SESSION_LABELS,
        ) as remote:
            box = remote.container(unique_name("ds-host-remote"))
            try:
                await box.start(TEST_IMAGE, entrypoint=sleeper("mkdir -p /w && echo x > /w/f"))
                with pytest.raises(HostCaptureUnavailableError, match="remote engine"):
                    await box.snapshot_directory("/w", capture="host")
                cli = await asyncio.to_thread(
                    run_cli,
                    f"tcp://127.0.0.1:{port}",
                    "snapshot",
                    box.name,
                    "/w",
                    "--capture",
                    "host",
                )
                assert cli.returncode == 18
                assert "remote engine" in cli.stderr
                snap = await box.snapshot_directory("/w")
                assert snap.capture == "archive"
                await remote.snapshots.delete(snap.id)
            finally:
                await box.destroy()
    # The same engine on its unix socket is on this host: host capture works there.
    async with docksnap.Client(
        docker_host=host_b, store="docker-volume:", labels=SESSION_LABELS
    ) as local_b:
        box = local_b.container(unique_name("ds-host-b"))
        try:
            await box.start(TEST_IMAGE, entrypoint=sleeper("mkdir -p /w && echo x > /w/f"))
            for _ in range(100):
                if await read_file(local_b, box.name, "/w/f") is not None:
                    break
                await asyncio.sleep(0.05)
            cli = await asyncio.to_thread(
                run_cli, host_b, "--json", "snapshot", box.name, "/w", "--capture", "host"
            )
            assert cli.returncode == 0, cli.stderr
            document = json.loads(cli.stdout)
            assert document["capture"] == "host"
            await local_b.snapshots.delete(document["snapshot"]["id"])
        finally:
            await box.destroy()

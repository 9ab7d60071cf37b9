"""Host capture: read a container's directory through its own root, not the archive API.

When the engine runs on this host and its containers' processes are ours to
look at, ``/proc/<pid>/root`` is the container's root directory as the
container sees it (bind mounts and volumes included). Reading it here skips
the engine's archive pipe (a process chrooted into the container, writing a
tar stream through the daemon and a unix socket) and lets docksnap keep what
that archive drops: sub-second mtimes, ``user.*`` attributes and POSIX ACLs.

:func:`open_host_tree` decides whether host capture is possible and says why
not in words (the reason ``capture="auto"`` logs and ``capture="host"``
raises as :class:`~docksnap.errors.HostCaptureUnavailableError`):

- the engine is not on a unix socket (``tcp://``, ``ssh://``: another host);
- the container has no process (stopped or created: pid 0);
- ``/proc/<pid>`` here is not that container's process: its cgroup does not
  name the container (an engine in another pid namespace, e.g. a dockerd
  inside a container whose socket was mounted here);
- ``/proc/<pid>/root`` cannot be opened (not root, no ``CAP_SYS_PTRACE``);
- the directory is, holds or lies in a mount the engine's archive would not
  show (``/proc``, ``/sys``, ``/dev``, ``/etc/hosts``: the runtime's mounts in
  the container's namespace, which ``docker cp`` does not see).

Every path below the root is resolved inside it (:mod:`docksnap.hostfs.resolve`)
and the walk holds descriptors (:mod:`docksnap.hostfs.tree`): nothing of the
host is reachable through anything the container controls.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any, Literal

from docksnap.docker import DockerClient
from docksnap.errors import (
    DirectoryNotFoundError,
    HostCaptureUnavailableError,
    InvalidArgumentError,
)
from docksnap.hostfs.resolve import open_in_root, resolve_in_root
from docksnap.hostfs.tree import HostTree, Owners, parse_owners, tar_pieces

log = logging.getLogger(__name__)

CaptureMode = Literal["auto", "host", "archive"]
CAPTURE_MODES: tuple[str, ...] = ("auto", "host", "archive")
_OWNER_FILE_LIMIT = 1024 * 1024
_BATCH = 4 * 1024 * 1024
_PROC = "/proc"


def capture_mode(value: object) -> CaptureMode:
    """Validate a ``capture=`` argument."""
    if value not in CAPTURE_MODES:
        raise InvalidArgumentError(
            f"capture must be one of {', '.join(CAPTURE_MODES)}, got {value!r}"
        )
    return value  # type: ignore[return-value]


class _Unavailable(Exception):
    """Why host capture cannot run (internal; turned into a log line or a typed error)."""


async def open_host_tree(
    docker: DockerClient,
    container: str,
    state: Mapping[str, Any],
    path: str,
    mode: CaptureMode,
) -> HostTree | None:
    """The directory ``path`` of the container, opened for host capture, or None.

    ``None`` for ``mode="archive"``, and for ``"auto"`` when host capture is
    not possible (the reason is logged). ``"host"`` raises
    :class:`HostCaptureUnavailableError` naming the reason instead.
    :class:`DirectoryNotFoundError` when ``path`` is missing or not a directory.
    """
    if mode == "archive":
        return None
    try:
        return await asyncio.to_thread(_open, docker.address.uds, container, state, path)
    except _Unavailable as exc:
        reason = str(exc)
        if mode == "host":
            raise HostCaptureUnavailableError(container, reason) from None
        log.info(
            "host capture of %s in %r not possible (%s): using the archive API",
            path,
            container,
            reason,
        )
        return None


def _open(uds: str | None, container: str, state: Mapping[str, Any], path: str) -> HostTree:
    if not uds:
        raise _Unavailable("the engine is not on a local unix socket (a remote engine)")
    pid = int(state.get("Pid") or 0)
    if pid <= 0:
        raise _Unavailable("the container has no running process whose root could be read")
    _check_is_container(pid, str(state.get("Id") or ""))
    try:
        root_fd = os.open(f"{_PROC}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unavailable(f"cannot open /proc/{pid}/root: {exc.strerror}") from None
    try:
        os.close(os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd))
        canonical = _resolve(root_fd, container, path)
        _check_mounts(pid, canonical, state.get("Mounts") or [])
        dir_fd = _open_dir(root_fd, container, path, canonical)
        owners = _read_owners(root_fd)
    except PermissionError as exc:
        raise _Unavailable(f"no permission to read /proc/{pid}/root: {exc.strerror}") from None
    finally:
        os.close(root_fd)
    return HostTree(dir_fd, owners)


def _check_is_container(pid: int, container_id: str) -> None:
    """``/proc/<pid>`` must be the container's own process: its cgroup names the container.

    The engine reports pids in its own pid namespace; an engine elsewhere
    (a dockerd in a container, its socket mounted here) gives a pid that here
    is some other process, whose root must not be read as the container's.
    """
    try:
        with open(f"{_PROC}/{pid}/cgroup", "rb") as handle:
            cgroups = handle.read(1024 * 1024)
    except OSError as exc:
        raise _Unavailable(f"pid {pid} is not visible here ({exc.strerror})") from None
    if not container_id or container_id.encode() not in cgroups:
        raise _Unavailable(
            f"pid {pid} on this host is not the container's process "
            "(the engine runs in another pid namespace or on another host)"
        )


def _resolve(root_fd: int, container: str, path: str) -> str:
    try:
        return resolve_in_root(root_fd, path)
    except (FileNotFoundError, NotADirectoryError):
        raise DirectoryNotFoundError(container, path) from None


def _open_dir(root_fd: int, container: str, path: str, canonical: str) -> int:
    try:
        return open_in_root(root_fd, canonical, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DirectoryNotFoundError(container, path) from None
        if exc.errno == errno.ELOOP:
            raise _Unavailable(f"{path} changed into a symlink while being opened") from None
        raise


def _check_mounts(pid: int, directory: str, mounts: list[Any]) -> None:
    """Refuse directories that are, hold or lie in a mount ``docker cp`` would not show.

    The engine archives the container's root filesystem plus its volumes and
    bind mounts (inspect's ``Mounts``); the runtime's own mounts (``/proc``,
    ``/dev``, ``/sys``, ``/etc/hosts``...) exist only in the container's mount
    namespace, which is what ``/proc/<pid>/root`` shows.
    """
    allowed = {"/"} | {str(m.get("Destination", "")) for m in mounts if isinstance(m, dict)}
    for point in _mount_points(pid):
        if point in allowed:
            continue
        if _within(point, directory) or _within(directory, point):
            raise _Unavailable(
                f"{point} is a mount of the container's runtime, not archived by the engine"
            )


def _mount_points(pid: int) -> Iterator[str]:
    with open(f"{_PROC}/{pid}/mountinfo", "rb") as handle:
        for line in handle:
            fields = line.split(b" ")
            if len(fields) > 4:
                yield _unescape(fields[4]).decode("utf-8", "surrogateescape")


def _unescape(field: bytes) -> bytes:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def _within(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent + "/")


def _read_owners(root_fd: int) -> Owners:
    """The container's user and group names, as the engine's lookup in its root finds them."""
    return parse_owners(_small_file(root_fd, "/etc/passwd"), _small_file(root_fd, "/etc/group"))


def _small_file(root_fd: int, path: str) -> bytes:
    """The first MiB of a regular file inside the root; b"" if it is anything else."""
    try:
        path_fd = open_in_root(root_fd, resolve_in_root(root_fd, path), os.O_PATH)
    except OSError:
        return b""
    try:
        # Opened only once fstat says it is a regular file: a container's
        # /etc/passwd may be a fifo or a device node.
        if not stat.S_ISREG(os.fstat(path_fd).st_mode):
            return b""
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    finally:
        os.close(path_fd)
    try:
        return os.read(fd, _OWNER_FILE_LIMIT)
    finally:
        os.close(fd)


async def host_chunks(tree: HostTree, *, recheck: bool) -> AsyncGenerator[bytes, None]:
    """The tree's archive, read in a worker thread a batch (about 4 MiB) at a time.

    The walk and the reads block, so they run off the event loop; a batch
    bounds what is held in memory. The tree is closed when the stream ends or
    is abandoned.
    """
    pieces = tar_pieces(tree, recheck=recheck)

    def batch() -> list[bytes]:
        out: list[bytes] = []
        held = 0
        for piece in pieces:
            out.append(piece)
            held += len(piece)
            if held >= _BATCH:
                break
        return out

    in_flight: asyncio.Future[list[bytes]] | None = None
    try:
        while True:
            in_flight = asyncio.ensure_future(asyncio.to_thread(batch))
            got = await asyncio.shield(in_flight)
            if not got:
                return
            for piece in got:
                yield piece
    finally:
        if in_flight is not None and not in_flight.done():
            # Cancelled mid-batch: the worker thread still walks with the tree's
            # descriptors. Closing them under it could hand their numbers to other
            # files while it reads, so wait for the batch (at most ~4 MiB) first.
            await asyncio.wait([in_flight])
        if in_flight is not None and not in_flight.cancelled():
            in_flight.exception()  # retrieved: the error, if any, is already raised
        pieces.close()
        tree.close()

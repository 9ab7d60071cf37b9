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

Host capture is incremental (:func:`find_parent`, :class:`HostCapture`): a
regular file whose inode, size, mtime and ctime equal its parent snapshot's
is saved as the parent's chunks, never opened (docs/FORMAT.md §11.12).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import struct
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from docksnap.docker import DockerClient
from docksnap.errors import (
    DirectoryNotFoundError,
    HostCaptureUnavailableError,
    InvalidArgumentError,
)
from docksnap.hostfs.resolve import open_in_root, resolve_in_root
from docksnap.hostfs.tree import HostMember, HostTree, Owners, parse_owners
from docksnap.model import (
    CaptureReuse,
    DirectorySnapshot,
    SnapshotInfo,
    SnapshotSource,
    is_snapshot_id,
)
from docksnap.service.capture import Capture, SizeLimit
from docksnap.store import SnapshotStore
from docksnap.store.chunked import ChunkedStore, Member, MemberChunkRecord, ReusedContent
from docksnap.store.chunked.members import END_OF_ARCHIVE, member_stream, padded
from docksnap.tarstream.goheader import GoHeader, encode, host_stat

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


# -- incremental capture: the parent ------------------------------------------------

ParentChoice = str | None
AUTO = "auto"


def parent_choice(value: object) -> ParentChoice:
    """Validate a ``parent=`` argument: ``"auto"``, None, a snapshot id or a record."""
    if value is None or value == AUTO:
        return value
    if isinstance(value, DirectorySnapshot):
        return value.id
    if not is_snapshot_id(value):
        raise InvalidArgumentError(f"parent must be a snapshot id, 'auto' or None, got {value!r}")
    return value  # type: ignore[return-value]


class ParentFiles:
    """The regular files of a parent snapshot that host capture can compare, by path.

    Built from the parent's member headers (:meth:`ChunkedStore.member_headers`:
    no byte of any file's data is read). Holds, per file, its inode, size,
    mtime and ctime in nanoseconds and its content's chunk list: memory grows
    with the parent's number of files (about 200 bytes each), as the store's
    member map does.
    """

    def __init__(self, snapshot_id: str) -> None:
        self.id = snapshot_id
        self._files: dict[str, tuple[int, int, int, int, int]] = {}
        self._contents: list[MemberChunkRecord] = []

    def __len__(self) -> int:
        return len(self._contents)

    def add(self, record: MemberChunkRecord, header: bytes) -> None:
        entry = record.entry
        if entry.type != "file":
            return
        found = host_stat(header)
        if found is None:
            return
        inode, mtime_ns, ctime_ns = found
        self._files[entry.path] = (inode, entry.size, mtime_ns, ctime_ns, len(self._contents))
        self._contents.append(record)

    def match(self, member: HostMember) -> int | None:
        """The index of the parent's content for ``member`` when it is unchanged, else None.

        Unchanged means the same inode, size, mtime and ctime (nanoseconds) at
        the same path, restic's test: any write moves mtime and ctime, a chmod
        or chown moves ctime, a file replaced by another has another inode or
        ctime, and ``touch -d`` back to an old mtime still moves ctime.
        """
        found = self._files.get(member.path)
        st = member.stat
        if found is None or found[:4] != (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        return found[4]

    def content(self, index: int) -> ReusedContent:
        return self._contents[index].reused()


async def find_parent(
    store: SnapshotStore, choice: ParentChoice, *, container: str, path: str
) -> ParentFiles | None:
    """The parent an incremental host capture of ``path`` compares with, or None.

    ``choice`` is ``"auto"`` (the newest snapshot in ``store`` of ``container``'s
    ``path``), a snapshot id, or None (a full read). A parent that cannot serve
    (another directory, a store or snapshot not cut per file, no host-captured
    file in it) gives None, with the reason logged. A given id that does not
    exist raises :class:`SnapshotNotFoundError`.
    """
    if choice is None:
        return None
    if choice == AUTO:
        if not _saves_members(store):
            return None  # nothing could be reused: not worth listing the store
        info = _newest(await store.list(), container, path)
        if info is None:
            log.info("no earlier snapshot of %s in %r: full read", path, container)
            return None
    else:
        info = await store.get(choice)
    why = await _unusable(store, info, path)
    if why:
        log.info("parent %s not used (%s): full read", info.id, why)
        return None
    assert isinstance(store, ChunkedStore)
    parent = ParentFiles(info.id)
    async for record, header in store.member_headers(info.id):
        parent.add(record, header)
    if not len(parent):
        log.info(
            "parent %s holds no file with host capture's inode and ctime "
            "(captured through the archive API, or imported): full read",
            info.id,
        )
        return None
    return parent


def _saves_members(store: SnapshotStore) -> bool:
    return isinstance(store, ChunkedStore) and store.per_file


def _newest(infos: list[SnapshotInfo], container: str, path: str) -> SnapshotInfo | None:
    mine = [
        i
        for i in infos
        if i.dir == path and i.source is not None and i.source.container == container
    ]
    return max(mine, key=lambda i: (i.created_at, i.id), default=None)


async def _unusable(store: SnapshotStore, info: SnapshotInfo, path: str) -> str:
    if info.dir != path:
        return f"it is a snapshot of {info.dir}, not of {path}"
    if not isinstance(store, ChunkedStore) or not _saves_members(store):
        return "the store does not save member by member"
    if not await store.is_per_file(info.id):
        return "it was not cut per file (an older format)"
    return ""


# -- host capture as members, through the read-ahead ----------------------------------

#: Before each member in the byte stream between the walk and the store: the size
#: of its header's fields (msgpack of :class:`GoHeader`), of its content, and the
#: parent's content index (-1: the content follows, read now).
_FRAME = struct.Struct("<IQq")
_SMALL_FILE = 64 * 1024
_FIELDS = msgspec.msgpack.Encoder()


@dataclass(slots=True)
class _Counts:
    reused_files: int = 0
    reused_bytes: int = 0
    read_files: int = 0
    read_bytes: int = 0


class HostCapture:
    """One host capture's members: walked and read in a worker thread (the paused
    part), handed to the store through a byte stream (the read-ahead's spool), and
    turned back into :class:`~docksnap.store.chunked.Member` values there.

    The walk (:meth:`frames`) decides each member as the archive path would
    (``capture``: excludes, hard links to what was left out, the report),
    counts its content against ``limit`` and, with a ``parent``, gives an
    unchanged file as the parent's chunks instead of reading it. The byte
    stream carries each member as a frame (:data:`_FRAME`), its header's fields
    and, for a file read, its content, so that the container can be unpaused
    as soon as the walk ends, whatever the speed of the store
    (:func:`~docksnap.service.spool.read_ahead`). :meth:`members` rebuilds the
    members from it (encoding and counting each header there), then adds the
    report.
    """

    def __init__(
        self,
        tree: HostTree,
        capture: Capture,
        limit: SizeLimit,
        parent: ParentFiles | None,
        *,
        recheck: bool,
        advance: Callable[[int], None] | None = None,
    ) -> None:
        self._tree = tree
        self._capture = capture
        self._limit = limit
        self._parent = parent
        self._recheck = recheck
        self._counts = _Counts()
        self._advance = advance
        self._advanced = 0

    def _progress(self) -> None:
        """Report the tar bytes counted so far (content as the walk reads or reuses it,
        headers as they are encoded); on the event loop only, as progress hooks run."""
        if self._advance is not None:
            total = self._limit.total
            if total > self._advanced:
                self._advance(total - self._advanced)
                self._advanced = total

    def close(self) -> None:
        """Close the tree's descriptors (idempotent). Only once :meth:`frames` ended:
        its worker thread walks with them."""
        self._tree.close()

    @property
    def reuse(self) -> CaptureReuse:
        """The counts so far (final once :meth:`members` ended)."""
        c = self._counts
        parent = self._parent.id if self._parent is not None else None
        return CaptureReuse(parent, c.reused_files, c.reused_bytes, c.read_files, c.read_bytes)

    def _pieces(self) -> Generator[bytes, None, None]:
        """The framed stream (blocking: runs in a worker thread, while paused).

        Only what needs the container still happens here: the walk's system
        calls, the decisions, and the reading of files not reused. Headers are
        encoded by :meth:`members` (about 35 us each: most of a file's cost).
        """
        tree = self._tree
        for member in tree.members():
            # Only the root's header is looked at (its PAX mtime, see Selection).
            header = member.header if member.path == "." else b""
            if not self._capture.keep(member.entry, header):
                continue
            fields = _FIELDS.encode(member.go)
            size = member.size
            if member.source_fd is None:
                yield _FRAME.pack(len(fields), 0, -1) + fields
                continue
            index = self._parent.match(member) if self._parent is not None else None
            if index is not None:
                self._limit.take(padded(size))
                self._counts.reused_files += 1
                self._counts.reused_bytes += size
                yield _FRAME.pack(len(fields), size, index) + fields
                continue
            fd = tree.open_content(member, recheck=self._recheck)
            if fd is None:
                self._capture.withdraw(member.entry)  # reported as unreadable by the tree
                continue
            try:
                self._limit.take(padded(size))
                self._counts.read_files += 1
                self._counts.read_bytes += size
                head = _FRAME.pack(len(fields), size, -1) + fields
                if size <= _SMALL_FILE:
                    yield head + b"".join(tree.content(member, fd))
                else:
                    yield head
                    yield from tree.content(member, fd)
            finally:
                os.close(fd)
        if self._recheck:
            tree.recheck()

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The framed stream, read in a worker thread a batch (about 4 MiB) at a time.

        The walk and the reads block, so they run off the event loop; a batch
        bounds what is held in memory. The tree is closed when the stream ends
        or is abandoned.
        """
        pieces = self._pieces()

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
                self._progress()
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
            self._tree.close()

    async def members(self, framed: AsyncIterator[bytes]) -> AsyncIterator[Member]:
        """The members of the framed stream :meth:`frames` made, then the report's."""
        reader = _ExactReader(framed)
        fields = msgspec.msgpack.Decoder(GoHeader)
        while head := await reader.read(_FRAME.size):
            fields_size, size, index = _FRAME.unpack(head)
            header = encode(fields.decode(await reader.read(fields_size)))
            self._limit.take(len(header))
            self._progress()
            if index >= 0:
                assert self._parent is not None
                yield Member(header, self._parent.content(index))
            else:
                yield Member(header, reader.pieces(size))
        trailer = await self._capture.trailer()
        self._limit.take(len(trailer) + len(END_OF_ARCHIVE))
        self._progress()
        if trailer:
            yield Member(trailer)


class _ExactReader:
    """Exact byte counts out of a stream of pieces of any size."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self._piece = b""
        self._at = 0

    async def _fill(self) -> bool:
        while self._at >= len(self._piece):
            try:
                self._piece = await anext(self._pieces)
            except StopAsyncIteration:
                return False
            self._at = 0
        return True

    async def read(self, size: int) -> bytes:
        """``size`` bytes; b"" at the end of the stream (and only there)."""
        at = self._at
        if len(self._piece) - at >= size:  # the common case: a frame within one piece
            self._at = at + size
            return self._piece[at : at + size]
        out = bytearray()
        async for part in self.pieces(size):
            out += part
        if out and len(out) != size:
            raise RuntimeError(f"framed host stream cut short: {len(out)} of {size} bytes")
        return bytes(out)

    async def pieces(self, size: int) -> AsyncIterator[bytes]:
        """The next ``size`` bytes, in pieces (whole pieces passed on without a copy)."""
        left = size
        while left and await self._fill():
            piece, at = self._piece, self._at
            take = min(left, len(piece) - at)
            yield piece if at == 0 and take == len(piece) else piece[at : at + take]
            self._at += take
            left -= take
        if left and left != size:
            raise RuntimeError(f"framed host stream cut short: {left} of {size} bytes missing")


async def save_host_members(
    store: SnapshotStore,
    snapshot: DirectorySnapshot,
    members: AsyncIterator[Member],
    *,
    source: SnapshotSource,
    ttl: float | None,
) -> SnapshotInfo:
    """Save host capture's members: member by member where the store can (reused
    content stays chunks), else as their plain tar stream (then nothing is reused:
    :func:`find_parent` gives no parent for such a store)."""
    if _saves_members(store):
        assert isinstance(store, ChunkedStore)
        return await store.save_members(snapshot, members, source=source, ttl=ttl)
    return await store.save(snapshot, _plain(members), source=source, ttl=ttl)


async def _plain(members: AsyncIterator[Member]) -> AsyncIterator[bytes]:
    async for piece in member_stream(members, END_OF_ARCHIVE):
        assert isinstance(piece, bytes), "reused content given to a store that cannot take it"
        yield piece

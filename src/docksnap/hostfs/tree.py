"""Walk a directory of a container through descriptors and produce its tar members.

The walk never resolves a string path of more than one component: it holds a
descriptor of each directory it is in and opens every entry relative to it
with ``O_PATH | O_NOFOLLOW``, then decides from ``fstat`` of *that* descriptor
what the entry is. A symlink is read (``readlinkat(fd, "")``) and recorded,
never followed; a directory is entered through its own descriptor, so a name
swapped for a symlink after the ``open`` leads nowhere; a regular file is
re-opened for reading from its ``O_PATH`` descriptor (``/proc/self/fd/N``, our
own process's descriptor, which names that inode and nothing else); a device
or fifo is recorded from its descriptor's ``fstat`` and never opened for I/O.

Members come out in the engine's order (Go's ``filepath.Walk``: a directory,
then its entries sorted by name bytes, depth first) with its headers
(:mod:`docksnap.tarstream.goheader`), names ``./``-prefixed as a ``GET
/archive`` of ``DIR/.`` gives them, plus what the engine drops: sub-second
mtimes and the extended attributes in :data:`CARRIED_XATTRS`.

:meth:`HostTree.members` yields :class:`HostMember` values (header bytes, the
entry, and for a regular file the ``O_PATH`` descriptor of its inode) so that
a writer decides per member whether to read its content at all: an incremental
capture reuses a parent's chunks instead, and never opens the file. A regular
file's header carries its inode number and ctime (``DOCKSNAP.ino``, ``ctime``),
what the next capture compares. :meth:`HostTree.open_content` and
:meth:`HostTree.content` read one; :func:`tar_pieces` reads them all into the
plain byte stream.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field

from docksnap.report import ReportEntry
from docksnap.tarstream import TarEntry
from docksnap.tarstream.goheader import BLOCK, GoHeader, encode

from .resolve import open_nofollow_walk, readlink_fd

#: Extended attributes host capture stores (beyond the engine's security.capability).
CARRIED_PREFIXES = ("user.",)
CARRIED_XATTRS = ("security.capability", "system.posix_acl_access", "system.posix_acl_default")
# overlayfs' own bookkeeping, never the container's.
_OVERLAY_PREFIXES = ("trusted.overlay.", "user.overlay.")
_READ_PIECE = 1024 * 1024
_END_OF_ARCHIVE = bytes(2 * BLOCK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class HostMember:
    """One member: its header's fields, its entry, and for a regular file its inode.

    ``path`` is relative to the snapshot's directory ("." for the root); ``go``
    holds the header's fields (:attr:`header` encodes them: the walk itself
    does not, so that a paused container waits for system calls only);
    ``entry`` is what the header says, as :class:`~docksnap.tarstream.TarEntry`;
    ``stat`` is the ``fstat`` of the entry the header describes (inode, size,
    ``st_mtime_ns``, ``st_ctime_ns``: what an incremental capture compares).
    ``source_fd`` (regular files only) is an ``O_PATH`` descriptor of the inode
    fstat'ed, valid until the next member is asked for: nothing has opened the
    file for reading yet. ``size`` bytes of content follow the header (0 for
    anything but a regular file).
    """

    path: str
    go: GoHeader
    entry: TarEntry
    stat: os.stat_result
    size: int
    source_fd: int | None = None

    @property
    def header(self) -> bytes:
        """The header blocks, as the engine would write them (plus host capture's records)."""
        return encode(self.go)


@dataclass(slots=True)
class Owners:
    """uid/gid → name from the container's own /etc/passwd and /etc/group, as the
    engine's ``os/user`` lookup inside the container's root finds them."""

    users: Mapping[int, bytes]
    groups: Mapping[int, bytes]


@dataclass(slots=True)
class HostTree:
    """The directory held by ``dir_fd`` (owned: closed by :meth:`close`), walked once.

    ``problems`` collects what could not be captured faithfully (sockets,
    unreadable files and directories, extended attributes not carried, files
    that changed while read) as :class:`~docksnap.report.ReportEntry` values.
    """

    dir_fd: int
    owners: Owners
    problems: list[ReportEntry] = field(default_factory=list)
    _links: dict[tuple[int, int], bytes] = field(default_factory=dict)
    _read: list[tuple[bytes, os.stat_result]] = field(default_factory=list)

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def members(self) -> Iterator[HostMember]:
        """The members, in the engine's order; descriptors close as the walk moves on."""
        root_stat = os.fstat(self.dir_fd)
        yield from self._directory(self.dir_fd, root_stat, b".")

    def _directory(self, fd: int, st: os.stat_result, name: bytes) -> Iterator[HostMember]:
        yield self._member(name + b"/", "dir", st, fd=None, xattr_fd=fd)
        try:
            entries = sorted(os.fsencode(n) for n in os.listdir(fd))
        except OSError as exc:
            self._problem(name, "unreadable", f"directory not listed: {exc.strerror}")
            return
        for entry in entries:
            yield from self._entry(fd, name + b"/" + entry, entry)

    def _entry(self, parent: int, name: bytes, base: bytes) -> Iterator[HostMember]:
        try:
            path_fd = os.open(base, _PATH_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # gone since listed: nothing to capture
                self._problem(name, "unreadable", exc.strerror or str(exc))
            return
        try:
            st = os.fstat(path_fd)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                yield from self._enter(path_fd, st, name)
            elif stat.S_ISREG(mode):
                yield from self._regular(path_fd, st, name)
            elif stat.S_ISLNK(mode):
                target = readlink_fd(path_fd)
                yield self._linked(name, "symlink", st, link=target)
            elif stat.S_ISSOCK(mode):
                self._problem(name, "socket", "sockets cannot be archived")
            elif stat.S_ISFIFO(mode):
                yield self._linked(name, "fifo", st)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                yield self._linked(name, "char" if stat.S_ISCHR(mode) else "block", st)
        finally:
            os.close(path_fd)

    def _enter(self, path_fd: int, st: os.stat_result, name: bytes) -> Iterator[HostMember]:
        try:
            # "." of the O_PATH descriptor: the very directory fstat'ed, whatever
            # its name points to now.
            dir_fd = os.open(".", _DIR_FLAGS, dir_fd=path_fd)
        except OSError as exc:
            yield self._member(name + b"/", "dir", st)
            self._problem(name, "unreadable", f"directory not entered: {exc.strerror}")
            return
        try:
            yield from self._directory(dir_fd, st, name)
        finally:
            os.close(dir_fd)

    def _regular(self, path_fd: int, st: os.stat_result, name: bytes) -> Iterator[HostMember]:
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in self._links:
                yield self._hardlink(name, st)
                return
            self._links[(st.st_dev, st.st_ino)] = name
        # Attributes through our own descriptor's magic link: it names the inode
        # fstat'ed and nothing else (an O_PATH descriptor has no f*xattr calls).
        yield self._member(name, "file", st, fd=path_fd, xattr_path=f"/proc/self/fd/{path_fd}")

    def _linked(self, name: bytes, kind: str, st: os.stat_result, link: bytes = b"") -> HostMember:
        """A header-only member, or a hard link to an earlier name of the same inode."""
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self._links:
                return self._hardlink(name, st)
            self._links[key] = name
        return self._member(name, kind, st, link=link)

    def _hardlink(self, name: bytes, st: os.stat_result) -> HostMember:
        # moby: TypeLink to the first name seen, size 0, the inode's own mode and owner.
        return self._member(name, "hardlink", st, link=self._links[(st.st_dev, st.st_ino)])

    def _member(
        self,
        name: bytes,
        kind: str,
        st: os.stat_result,
        *,
        link: bytes = b"",
        fd: int | None = None,
        xattr_fd: int | None = None,
        xattr_path: str | None = None,
    ) -> HostMember:
        size = st.st_size if kind == "file" else 0
        device = kind in ("char", "block")
        xattrs: tuple[tuple[bytes, bytes], ...] = ()
        if xattr_fd is not None or xattr_path is not None:
            xattrs = self._xattrs(name, xattr_path if xattr_path is not None else xattr_fd)
        regular = kind == "file"
        header = GoHeader(
            name=name,
            type=kind,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=size,
            mtime=st.st_mtime_ns // 10**9,
            mtime_ns=st.st_mtime_ns % 10**9,
            link=link,
            uname=self.owners.users.get(st.st_uid, b""),
            gname=self.owners.groups.get(st.st_gid, b""),
            devmajor=os.major(st.st_rdev) if device else 0,
            devminor=os.minor(st.st_rdev) if device else 0,
            xattrs=xattrs,
            inode=st.st_ino if regular else None,
            ctime_ns=st.st_ctime_ns if regular else None,
        )
        path = _relative(name)
        entry = TarEntry(
            path,
            kind,
            st.st_mode & 0o7777,
            st.st_uid,
            st.st_gid,
            header.mtime,
            size,
            _relative(link) if kind == "hardlink" else os.fsdecode(link),
            -1,
            tuple((k.decode("utf-8", "surrogateescape"), v) for k, v in xattrs if v),
        )
        return HostMember(path, header, entry, st, size, fd)

    def _xattrs(self, name: bytes, fd: int | str | None) -> tuple[tuple[bytes, bytes], ...]:
        """The carried attributes of an open directory (or of the inode a magic link
        names); the others are reported."""
        assert fd is not None
        try:
            names = os.listxattr(fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self._problem(name, "xattrs", f"not listed: {exc.strerror}")
            return ()
        kept: list[tuple[bytes, bytes]] = []
        lost: list[str] = []
        for key in sorted(names):
            if key.startswith(_OVERLAY_PREFIXES):
                continue
            if key in CARRIED_XATTRS or key.startswith(CARRIED_PREFIXES):
                try:
                    kept.append((key.encode(), os.getxattr(fd, key)))
                except OSError as exc:
                    if exc.errno != errno.ENODATA:
                        lost.append(key)
            else:
                lost.append(key)
        if lost:
            self._problem(name, "xattrs", ", ".join(lost))
        return tuple(kept)

    def _problem(self, name: bytes, reason: str, detail: str) -> None:
        self.problems.append(ReportEntry(_relative(name), reason, detail))

    def note_changed(self, member: HostMember, detail: str) -> None:
        self.problems.append(ReportEntry(member.path, "changed", detail))

    def open_content(self, member: HostMember, *, recheck: bool) -> int | None:
        """A descriptor to read a regular file's content (the caller closes it), or None
        when it cannot be opened (reported as ``unreadable``).

        The inode of ``source_fd`` is re-opened through our own descriptor: a name
        swapped for a fifo or a device since it was fstat'ed cannot be opened by
        accident. With ``recheck`` (an unpaused capture) the file is stat'ed again
        by :meth:`recheck` once the walk is over.
        """
        assert member.source_fd is not None
        try:
            fd = os.open(f"/proc/self/fd/{member.source_fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._problem(
                member.path.encode("utf-8", "surrogateescape"),
                "unreadable",
                exc.strerror or str(exc),
            )
            return None
        if recheck:
            self._read.append((member.path.encode("utf-8", "surrogateescape"), member.stat))
        return fd

    def content(self, member: HostMember, fd: int) -> Iterator[bytes]:
        """Exactly ``member.size`` bytes of the file open as ``fd``, in pieces of at most 1 MiB.

        The header promised ``size`` bytes, so a file that shrank while read is
        padded with zeros and one that grew is cut; both are reported.
        """
        left = member.size
        failed = ""
        while left:
            try:
                piece = os.read(fd, min(left, _READ_PIECE))
            except OSError as exc:
                failed = exc.strerror or str(exc)
                piece = b""
            if not piece:
                break
            left -= len(piece)
            yield piece
        if not left:
            return
        # The header promised member.size bytes: keep the stream well-formed.
        while left:
            step = min(left, _READ_PIECE)
            yield bytes(step)
            left -= step
        if failed:
            self.problems.append(ReportEntry(member.path, "unreadable", f"read failed: {failed}"))
        else:
            self.note_changed(member, f"shrank below {member.size} bytes while read")

    def recheck(self) -> None:
        """Stat every remembered file again, through descriptors from the directory."""
        for path, before in self._read:
            relative = path.decode("utf-8", "surrogateescape")
            try:
                fd = open_nofollow_walk(self.dir_fd, path, os.O_PATH)
            except OSError:
                self.problems.append(ReportEntry(relative, "vanished", "deleted after it was read"))
                continue
            try:
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if after.st_ino != before.st_ino or not stat.S_ISREG(after.st_mode):
                detail = "replaced after it was read"
            elif after.st_size != before.st_size:
                detail = f"size {before.st_size} read, {after.st_size} after"
            elif after.st_mtime_ns != before.st_mtime_ns:
                detail = f"mtime {before.st_mtime_ns} ns read, {after.st_mtime_ns} ns after"
            elif after.st_ctime_ns != before.st_ctime_ns:
                detail = "ctime changed after it was read"
            else:
                continue
            self.problems.append(ReportEntry(relative, "changed", detail))
        self._read.clear()


def tar_pieces(tree: HostTree, *, recheck: bool) -> Generator[bytes, None, None]:
    """The whole archive as pieces of at most 1 MiB: headers, content, padding, end marker.

    Every regular file is read (no parent), and an unreadable one is left out
    and reported. With ``recheck`` (an unpaused container) every file read is
    stat'ed again once the walk is over, as the archive path does after the
    engine's stream, and a change of size, mtime or ctime (nanoseconds) is
    reported.
    """
    for member in tree.members():
        fd = None
        if member.source_fd is not None:
            fd = tree.open_content(member, recheck=recheck)
            if fd is None:
                continue
        yield member.header
        if fd is None:
            continue
        try:
            yield from tree.content(member, fd)
        finally:
            os.close(fd)
        yield bytes(-member.size % BLOCK)
    if recheck:
        tree.recheck()
    yield _END_OF_ARCHIVE


def parse_owners(passwd: bytes, group: bytes) -> Owners:
    """Names by id from /etc/passwd and /etc/group text (first match wins, as os/user)."""
    return Owners(_id_names(passwd), _id_names(group))


def _id_names(text: bytes) -> dict[int, bytes]:
    names: dict[int, bytes] = {}
    for line in text.splitlines():
        if not line or line.startswith(b"#"):
            continue
        fields = line.split(b":")
        if len(fields) < 3 or not fields[0] or not fields[2].isdigit():
            continue
        names.setdefault(int(fields[2]), fields[0])
    return names


def _relative(name: bytes) -> str:
    text = name.decode("utf-8", "surrogateescape").rstrip("/")
    return "." if text == "." else text.removeprefix("./")

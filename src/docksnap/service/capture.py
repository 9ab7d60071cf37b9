"""The capture pipeline between the engine's archive and the store: excludes and the report.

:class:`Capture` filters the archive stream (:mod:`docksnap.service.tarfilter`)
and, once the engine has sent its last byte, works out what the archive did not
carry faithfully. What the archive path can and cannot see:

- **Sockets and unreadable files** never appear in the engine's archive, which
  drops them without a word. docksnap finds them by comparing the archive with
  the engine's list of the container's changes against its image
  (``GET /containers/{id}/changes``) and asking the engine for the mode of each
  path it did not send (``HEAD /archive``): a socket is reported as one, any
  other as unreadable. This sees every path the container created or changed in
  its own filesystem; it cannot see paths that came unchanged from the image or
  live in a mounted volume (neither is in the changes list).
- **Extended attributes and ACLs**: the engine's archive carries only
  ``security.capability``. When the engine is local and its overlay upper
  directory is readable from here, docksnap lists the attributes of each
  changed path there and reports any others; otherwise it cannot know, and the
  report's ``checked`` does not include ``"xattrs"``.
- **Files that changed while read** (``pause=False`` only): after the stream,
  each regular file is stat'ed again through the engine and compared with its
  tar header; a different size or mtime (whole seconds, as the header has it)
  is reported. The engine does not expose ctime, so a rewrite of the same size
  within the same second goes unseen.
- **Hard links** whose target was excluded are left out and reported.

With ``strict`` any problem raises :class:`~docksnap.errors.CaptureIncompleteError`
from inside the stream, before its end-of-archive marker, so the store's save
fails and nothing is stored.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import tarfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

from docksnap.docker import DockerClient
from docksnap.errors import (
    CaptureIncompleteError,
    DockerError,
    InvalidArgumentError,
    SnapshotTooLargeError,
)
from docksnap.report import CaptureReport, ReportEntry, build_report
from docksnap.service.excludes import IGNORE_FILE, Excludes, MemberExcluder
from docksnap.service.tarfilter import (
    DROP,
    KEEP,
    Decision,
    Drop,
    Selection,
    TarFilter,
    root_with_records,
)
from docksnap.tarstream import TarEntry

# Go's os.FileMode bits, as the engine's stat header carries them.
_MODE_SOCKET = 1 << 24
_CARRIED_XATTRS = ("security.capability",)
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_RECHECK_CONCURRENCY = 8
_MAX_IGNORE_FILE = 1024 * 1024
_STAT_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)")


class Capture:
    """One capture's filter and report; single use.

    ``select`` (optional) keeps only the members it accepts (the whole-container
    capture keeps the changed paths); ``excludes`` then leaves out matches.
    ``paused`` says whether the container was paused while read (then nothing can
    have changed under the reader, and no re-check runs).

    ``walked`` is given for a host capture (:mod:`docksnap.service.hostcapture`):
    the list its walk fills with what it could not capture (sockets, unreadable
    files, attributes it does not carry, files that changed while read), read
    once the stream ended. It replaces the engine-side checks, which would only
    guess at what the walk saw.
    """

    def __init__(
        self,
        docker: DockerClient,
        container: str,
        path: str,
        *,
        excludes: Excludes | None = None,
        paused: bool = True,
        strict: bool = False,
        select: Callable[[TarEntry], bool] | None = None,
        walked: list[ReportEntry] | None = None,
    ) -> None:
        self._docker = docker
        self._container = container
        self._path = path
        self._excluder: MemberExcluder | None = excludes.member_filter() if excludes else None
        self._excludes = excludes
        self._paused = paused
        self._strict = strict
        self._select = select
        self._walked = walked
        self._selection = Selection(self._decide)
        self._filter = TarFilter(selection=self._selection)
        self.report: CaptureReport | None = None
        self._changed: list[str] | None = None

    @property
    def kept(self) -> list[TarEntry]:
        """Members that went into the snapshot (valid once the stream ended)."""
        return self._selection.entries

    def keep(self, entry: TarEntry, header: bytes) -> bool:
        """Whether a member given one by one (host capture) goes into the snapshot:
        the same decision :meth:`stream` makes of a member of a tar stream."""
        return not isinstance(self._selection.choose(entry, header), Drop)

    def withdraw(self, entry: TarEntry) -> None:
        """Take back the member :meth:`keep` just kept: it could not be read."""
        self._selection.withdraw(entry)

    async def trailer(self) -> bytes:
        """Once every member was given to :meth:`keep`: the report's member (the root
        again, carrying the report; b"" when there is nothing to say).

        Raises :class:`CaptureIncompleteError` in strict mode when something
        could not be captured faithfully.
        """
        return await self._finish()

    def stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        on_source_end: Callable[[], Awaitable[None]] | None = None,
        extra: Callable[[], Awaitable[bytes]] | None = None,
    ) -> AsyncIterator[bytes]:
        """The filtered archive; ``extra`` adds members after the last one (before the report)."""

        async def trailer() -> bytes:
            more = await extra() if extra is not None else b""
            return more + await self._finish()

        return self._filter.run(chunks, on_source_end=on_source_end, trailer=trailer)

    def _decide(self, entry: TarEntry) -> Decision:
        if self._select is not None and not self._select(entry):
            return DROP
        if self._excluder is not None and self._excluder.excluded(entry):
            return DROP
        return KEEP

    async def _finish(self) -> bytes:
        """Build the report; raise in strict mode; return its pax header (or nothing)."""
        problems: list[ReportEntry] = [
            ReportEntry(entry.path, "hardlink", reason)
            for entry, reason in self._selection.dropped
            if reason is not None
        ]
        if self._walked is not None:
            problems += [p for p in self._walked if not self._excluded_by_pattern(p.path)]
            checked = ["walk", "xattrs"] if self._paused else ["walk", "xattrs", "reread"]
        else:
            checked = ["changes"]
            problems += await self._missing_from_archive()
            if await self._check_xattrs(problems):
                checked.append("xattrs")
            if not self._paused:
                checked.append("reread")
                problems += await self._changed_while_read()
        excluded = self._excluder.count if self._excluder else 0
        self.report = build_report(problems, excluded=excluded, checked=tuple(checked))
        if self._strict and not self.report.ok:
            raise CaptureIncompleteError(self._path, self.report)
        root = self._selection.root
        if (self.report.ok and not excluded) or root is None:
            return b""
        # The repeated root entry is applied after the first: it must carry the
        # first one's sub-second mtime too (host capture), or a restore loses it.
        kept = {k: v for k, v in self._selection.root_pax.items() if k == "mtime"}
        return root_with_records(root, {**kept, **self.report.to_pax()})

    # -- what the archive did not carry --------------------------------------------

    def _relative(self, absolute: str) -> str | None:
        """``absolute`` relative to the snapshot's directory, or None when outside it."""
        if self._path == "/":
            return absolute.lstrip("/") or "."
        if absolute == self._path:
            return "."
        if absolute.startswith(self._path + "/"):
            return absolute[len(self._path) + 1 :]
        return None

    def _absolute(self, relative: str) -> str:
        if relative == ".":
            return self._path
        return ("" if self._path == "/" else self._path) + "/" + relative

    async def _changed_paths(self) -> list[str]:
        """Relative paths the container added or modified under the directory (asked once)."""
        if self._changed is not None:
            return self._changed
        changes = await self._docker.container_changes(self._container)
        found = []
        for change in changes:
            if change.get("Kind") in (0, 1):
                relative = self._relative(str(change.get("Path", "")))
                if relative is not None:
                    found.append(relative)
        self._changed = found
        return found

    async def _missing_from_archive(self) -> list[ReportEntry]:
        seen = {entry.path for entry in self._selection.entries}
        seen.update(entry.path for entry, _ in self._selection.dropped)
        missing = [
            rel
            for rel in await self._changed_paths()
            if rel not in seen and not self._excluded_by_pattern(rel)
        ]
        found = []
        for relative in missing:
            stat = await self._docker.stat_path(self._container, self._absolute(relative))
            if stat is None:
                continue  # gone again: nothing exists that the snapshot lacks
            mode = int(stat.get("mode", 0))
            if mode & _MODE_SOCKET:
                found.append(ReportEntry(relative, "socket", "sockets cannot be archived"))
            elif not self._paused:
                found.append(ReportEntry(relative, "appeared", "not in the archive"))
            else:
                found.append(ReportEntry(relative, "unreadable", "the engine did not archive it"))
        return found

    def _excluded_by_pattern(self, relative: str) -> bool:
        if self._excludes is None:
            return False
        parts = relative.split("/")
        return any(
            self._excludes.matches("/".join(parts[:n]), is_dir=n < len(parts))
            for n in range(1, len(parts) + 1)
        )

    async def _check_xattrs(self, problems: list[ReportEntry]) -> bool:
        """Report extended attributes the archive drops, where the overlay is visible here."""
        upper = await self._upper_dir()
        if upper is None:
            return False
        kept = {entry.path for entry in self._selection.entries}
        paths = [rel for rel in await self._changed_paths() if rel in kept]
        root = self._path

        def scan() -> list[ReportEntry]:
            found = []
            for relative in paths:
                host = os.path.join(upper, (root + "/" + relative).lstrip("/"))
                try:
                    names = os.listxattr(host, follow_symlinks=False)
                except OSError:
                    continue
                lost = sorted(
                    n
                    for n in names
                    if n not in _CARRIED_XATTRS and not n.startswith(_OVERLAY_XATTRS)
                )
                if lost:
                    found.append(ReportEntry(relative, "xattrs", ", ".join(lost)))
            return found

        problems += await asyncio.to_thread(scan)
        return True

    async def _upper_dir(self) -> str | None:
        if not self._docker.address.uds:
            return None  # a remote engine's directories are not ours to read
        try:
            info = await self._docker.inspect_container(self._container)
        except DockerError:
            return None
        driver = info.get("GraphDriver") or {}
        upper = (driver.get("Data") or {}).get("UpperDir")
        if driver.get("Name") not in ("overlay2", "overlay") or not upper:
            return None
        if self._inside_a_mount(info):
            return None  # a volume's files are not in the upper directory
        return str(upper) if os.access(upper, os.R_OK | os.X_OK) else None

    def _inside_a_mount(self, info: dict[str, object]) -> bool:
        mounts = info.get("Mounts") or []
        assert isinstance(mounts, list)
        for mount in mounts:
            target = str(mount.get("Destination", ""))
            if self._relative(target) is not None or (self._path + "/").startswith(target + "/"):
                return True
        return False

    async def _changed_while_read(self) -> list[ReportEntry]:
        """Stat each regular file again and compare with its header."""
        files = [entry for entry in self._selection.entries if entry.type == "file"]
        limit = asyncio.Semaphore(_RECHECK_CONCURRENCY)

        async def check(entry: TarEntry) -> ReportEntry | None:
            async with limit:
                stat = await self._docker.stat_path(self._container, self._absolute(entry.path))
            if stat is None:
                return ReportEntry(entry.path, "vanished", "deleted after it was read")
            size = int(stat.get("size", -1))
            if size != entry.size:
                return ReportEntry(entry.path, "changed", f"size {entry.size} read, {size} after")
            mtime = _stat_seconds(str(stat.get("mtime", "")))
            if mtime is not None and mtime != entry.mtime:
                return ReportEntry(
                    entry.path, "changed", f"mtime {entry.mtime} read, {mtime} after"
                )
            return None

        results = await asyncio.gather(*(check(entry) for entry in files))
        return [result for result in results if result is not None]


class SizeLimit:
    """A snapshot's size limit: the bytes of its tar stream, counted as they are handed on.

    The one place the limit is checked, for a tar byte stream (:meth:`stream`)
    and for members given one by one (:meth:`take`, host capture): both fail
    with :class:`SnapshotTooLargeError` before the byte past the limit is
    handed to a store.
    """

    def __init__(self, limit: int, path: str) -> None:
        self.limit = limit
        self.path = path
        self.total = 0
        # Host capture counts content in its walk's thread and headers where they
        # are encoded, beside the event loop.
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        """Count ``size`` more bytes of the stream; raise if they go past the limit.
        Thread-safe."""
        with self._lock:
            self.total += size
            over = self.total > self.limit
        if over:
            raise SnapshotTooLargeError(self.path, self.limit)

    async def stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` passed through, each counted before it is handed on."""
        async for piece in chunks:
            self.take(len(piece))
            yield piece


def _stat_seconds(text: str) -> int | None:
    """Whole Unix seconds of the engine's RFC 3339 stat time (nanoseconds dropped)."""
    match = _STAT_TIME.fullmatch(text)
    if match is None:
        return None
    zone = "+00:00" if match.group(2) == "Z" else match.group(2)
    return int(datetime.fromisoformat(match.group(1) + zone).timestamp())


async def read_ignore_file(docker: DockerClient, container: str, path: str) -> list[str]:
    """The lines of ``<path>/.docksnapignore`` in the container; none when it is absent.

    The file is small by nature; more than 1 MiB is refused rather than read.
    """
    target = ("" if path == "/" else path) + "/" + IGNORE_FILE
    stat = await docker.stat_path(container, target)
    if stat is None:
        return []
    if int(stat.get("size", 0)) > _MAX_IGNORE_FILE:
        raise InvalidArgumentError(f"{target} is larger than {_MAX_IGNORE_FILE} bytes")
    async with docker.get_archive(container, target) as archive:
        raw = b"".join([piece async for piece in archive.chunks])
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member is not None and member.isfile() else None
        data = handle.read() if handle is not None else b""
    return data.decode("utf-8", "replace").splitlines()

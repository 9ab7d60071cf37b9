"""No restore passes through a symlink that an earlier restore of the same start planted.

The engine resolves a mount point, and the path a merge extracts into, inside
the container, following symlinks. Restored data is untrusted: a snapshot of
``/mnt`` holding ``sub -> /etc`` followed by a snapshot restored at ``/mnt/sub``
would be mounted over the container's ``/etc`` (or, merged, written into it).
A container can plant such a link itself before it is snapshotted, so this is
checked at every start, against the stored indexes of the snapshots applied
before, and refused before anything is created.

A merge also must not write through a symlink of the *container's own* files
(the image's: ``/mnt/data -> /etc`` with a member ``data/x``): moby checks member
names only lexically, then creates a missing parent with ``MkdirAll`` and opens
the member, following whatever link the image has there. :class:`ImageLinkGuard`
stats, in the container, each parent directory the archive uses before (or
without) creating it, and refuses the merge at the first that is a symlink. A
directory member over an image symlink is refused by the engine itself
(``noOverwriteDirNonDir``), and any other member replaces the link, so those
need no call: an archive of the engine (every directory before its content)
costs none at all.
"""

from __future__ import annotations

import posixpath
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from docksnap.errors import RestoreThroughSymlinkError
from docksnap.model import SnapshotRestore
from docksnap.store.base import SnapshotStore
from docksnap.tarstream import TarEntry, TarIndexer
from docksnap.tarstream.keyset import KeySet, path_key

# os.ModeSymlink of Go, in the mode the engine's path stat reports.
_GO_MODE_SYMLINK = 1 << 27
BLOCK = 512
_END_OF_ARCHIVE = bytes(2 * BLOCK)

Stat = Callable[[str], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class _Link:
    target: str  # what the link points to, as stored
    snapshot_id: str  # the snapshot that restores it


async def check_restored_symlinks(
    store: SnapshotStore, restores: Sequence[SnapshotRestore]
) -> None:
    """Raise :class:`RestoreThroughSymlinkError` if any restore would follow a restored link.

    ``restores`` are in the order they will be applied (parent first). Checked:
    every component of each mount point, and for a merge every member's parent
    directories. A volume-mode restore masks what earlier restores put below its
    mount point, so their links stop counting there. Read-only; reads the index
    only of the snapshots that another restore could pass through.
    """
    links: dict[str, _Link] = {}  # absolute path in the container -> the link there
    for position, restore in enumerate(restores):
        _check_path(restore.target, restore.target, links)
        later_below = any(_is_under(r.target, restore.target) for r in restores[position + 1 :])
        needs_members = restore.merge and any(_is_under(path, restore.target) for path in links)
        if not (later_below or needs_members):
            if not restore.merge:
                _mask(links, restore.target)
            continue
        entries = await store.index(restore.snapshot.id)
        if needs_members:
            for entry in entries:
                member = _absolute(restore.target, entry.path)
                _check_path(posixpath.dirname(member), member, links)
        if not restore.merge:
            _mask(links, restore.target)
        links.update(_links_in(restore, entries))


def _check_path(directory: str, path: str, links: dict[str, _Link]) -> None:
    """Refuse if ``directory`` or any of its ancestors is a restored link."""
    for ancestor in _self_and_ancestors(directory):
        link = links.get(ancestor)
        if link is not None:
            raise RestoreThroughSymlinkError(ancestor, link.target, link.snapshot_id, path)


def _links_in(restore: SnapshotRestore, entries: list[TarEntry]) -> Iterator[tuple[str, _Link]]:
    """The snapshot's symlinks (and hard links to them) at their absolute paths."""
    symlinks = {entry.path: entry.link for entry in entries if entry.type == "symlink"}
    snapshot_id = restore.snapshot.id
    for entry in entries:
        if entry.type == "symlink":
            yield _absolute(restore.target, entry.path), _Link(entry.link, snapshot_id)
        elif entry.type == "hardlink" and entry.link in symlinks:
            target = symlinks[entry.link]
            yield _absolute(restore.target, entry.path), _Link(target, snapshot_id)


def _mask(links: dict[str, _Link], mount_point: str) -> None:
    """A fresh volume at ``mount_point`` hides whatever was below it."""
    for path in [p for p in links if _is_under(p, mount_point)]:
        del links[path]


def _absolute(root: str, member: str) -> str:
    return posixpath.normpath(posixpath.join(root, member))


def _is_under(path: str, directory: str) -> bool:
    """Whether ``path`` is strictly below ``directory`` (both absolute, normalized)."""
    return path != directory and path.startswith(directory.rstrip("/") + "/")


def _self_and_ancestors(path: str) -> Iterator[str]:
    while path not in ("/", ""):
        yield path
        path = posixpath.dirname(path)


class ImageLinkGuard:
    """Extracts a merge's tar stream, unchanged, never through a symlink that the
    container's own files have; raises :class:`RestoreThroughSymlinkError` at the
    first member that would be written through one.

    The engine's path stat cannot run while an extraction into the same container
    is in progress (both take the container's lock), so a member whose parents
    need a stat ends the current extraction just before it (with an end-of-archive
    marker); the stats run; a new extraction resumes at that member. An archive of
    the engine needs no stat and goes in one extraction; an archive that implies
    directories takes one more per directory it implies (their mtimes are then
    those of the last extraction that wrote into them). Bytes are handed on only
    up to the end of the last member whose header was read, so a split never cuts
    a header. Memory: one piece, one header, and a ~12-byte key per directory.
    """

    def __init__(self, pieces: AsyncIterable[bytes], stat: Stat, restore: SnapshotRestore) -> None:
        self._pieces = aiter(pieces)
        self._stat = stat
        self._restore = restore
        self._members = _Members()
        self._buffer = bytearray()
        self._buffer_start = 0  # stream offset of self._buffer[0]
        self._checked_until = 0  # bytes before this belong to members already checked
        self._to_stat: list[tuple[str, str]] = []  # (parent, member) before resuming
        self._safe = KeySet()  # directories the archive made, or checked in the container
        self._links = KeySet()  # symlinks the archive made
        self._done = False

    async def extract(self, put: Callable[[AsyncIterator[bytes]], Awaitable[None]]) -> None:
        """Run ``put`` (one extraction) once per segment of the stream."""
        while not self._done:
            await put(self._segment())
            for parent, member in self._to_stat:
                await self._check_in_container(parent, member)
            self._to_stat = []

    async def _segment(self) -> AsyncIterator[bytes]:
        while True:
            while self._members.queue:
                entry, end = self._members.queue[0]
                unknown = self._unknown_parents(entry)
                if unknown:
                    if before := self._take(entry.offset):
                        yield before
                    self._to_stat = unknown
                    yield _END_OF_ARCHIVE
                    return
                self._note(entry)
                self._members.queue.popleft()
                self._checked_until = end
            if checked := self._take(self._checked_until):
                yield checked
            piece = await anext(self._pieces, None)
            if piece is None:
                self._done = True
                if rest := self._take(self._buffer_start + len(self._buffer)):
                    yield rest
                return
            self._buffer += piece
            self._members.feed(piece)

    def _take(self, until: int) -> bytes:
        """The buffered bytes before stream offset ``until``, removed from the buffer."""
        count = min(max(0, until - self._buffer_start), len(self._buffer))
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        self._buffer_start += count
        return taken

    def _unknown_parents(self, entry: TarEntry) -> list[tuple[str, str]]:
        """Parents of the member (and of a hard link's target) not known to be real
        directories: each needs a stat before the engine may see the member."""
        unknown: list[tuple[str, str]] = []
        paths = [entry.path, entry.link] if entry.type == "hardlink" else [entry.path]
        for path in paths:
            parts = _parts(path)
            for end in range(1, len(parts)):
                parent = "/".join(parts[:end])
                key = path_key(parent)
                if key in self._links:
                    raise self._refusal(parent, "(a symlink of the same snapshot)", entry.path)
                if key not in self._safe and (parent, entry.path) not in unknown:
                    unknown.append((parent, entry.path))
        return unknown

    def _note(self, entry: TarEntry) -> None:
        parts = _parts(entry.path)
        if parts and entry.type == "dir":
            self._safe.add(path_key("/".join(parts)))
        elif parts and entry.type == "symlink":
            self._links.add(path_key("/".join(parts)))

    async def _check_in_container(self, parent: str, member: str) -> None:
        if path_key(parent) in self._safe:
            return
        stat = await self._stat(_absolute(self._restore.target, parent))
        if stat is not None and int(stat.get("mode", 0)) & _GO_MODE_SYMLINK:
            raise self._refusal(parent, str(stat.get("linkTarget", "?")), member)
        self._safe.add(path_key(parent))

    def _refusal(self, parent: str, target: str, member: str) -> RestoreThroughSymlinkError:
        return RestoreThroughSymlinkError(
            _absolute(self._restore.target, parent),
            target,
            self._restore.snapshot.id,
            _absolute(self._restore.target, member),
            in_image=True,
        )


def _parts(path: str) -> list[str]:
    """A member's components as the engine resolves them (``..`` lexically, at the root)."""
    return [part for part in posixpath.normpath("/" + path).split("/") if part]


class _Members(TarIndexer):
    """The engine's reading of a stream: members parsed and not yet handled, each
    with the stream offset where its data (and padding) ends."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: deque[tuple[TarEntry, int]] = deque()

    def _on_member(self, entry: TarEntry, devices: tuple[int, int], data_start: int) -> None:
        self.queue.append((entry, data_start + entry.size + -entry.size % BLOCK))

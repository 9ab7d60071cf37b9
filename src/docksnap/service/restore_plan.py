"""No restore passes through a symlink that an earlier restore of the same start planted.

The engine resolves a mount point, and the path a merge extracts into, inside
the container, following symlinks. Restored data is untrusted: a snapshot of
``/mnt`` holding ``sub -> /etc`` followed by a snapshot restored at ``/mnt/sub``
would be mounted over the container's ``/etc`` (or, merged, written into it).
A container can plant such a link itself before it is snapshotted, so this is
checked at every start, against the stored indexes of the snapshots applied
before, and refused before anything is created.

Symlinks that come with the image are the image's business and are not checked
here; only links that came from restored data are.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from docksnap.errors import RestoreThroughSymlinkError
from docksnap.model import SnapshotRestore
from docksnap.store.base import SnapshotStore
from docksnap.tarstream import TarEntry


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

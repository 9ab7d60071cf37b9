"""Snapshots as plain tar archives: import with safety checks, and diffs of file indexes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from docksnap.tarstream import RestorableChecker, TarCanonicalizer, TarEntry

# Fields whose change makes a file "changed" in a diff. ``offset`` is where the
# entry sits in the stream, which shifts whenever anything before it changes.
COMPARED_FIELDS = ("type", "size", "mode", "uid", "gid", "mtime", "link", "xattrs")


@dataclass(frozen=True, slots=True)
class FileChange:
    """A path in both snapshots whose metadata differs.

    ``fields`` names what changed, in the order of :data:`COMPARED_FIELDS`.
    Unpacks as the ``(old, new)`` pair that diffs returned before ``fields``
    existed, so ``for old, new in diff.changed`` keeps working.
    """

    old: TarEntry
    new: TarEntry
    fields: tuple[str, ...]

    def __iter__(self) -> Iterator[TarEntry]:
        return iter((self.old, self.new))


@dataclass(frozen=True, slots=True)
class SnapshotDiff:
    """Paths added, removed and changed from one snapshot to another, each sorted."""

    added: tuple[TarEntry, ...]
    removed: tuple[TarEntry, ...]
    changed: tuple[FileChange, ...]


def changed_fields(old: TarEntry, new: TarEntry) -> tuple[str, ...]:
    """The names of the compared fields whose values differ from ``old`` to ``new``."""
    return tuple(f for f in COMPARED_FIELDS if getattr(old, f) != getattr(new, f))


def diff_indexes(old: list[TarEntry], new: list[TarEntry]) -> SnapshotDiff:
    """Compare two file indexes by path; metadata or size differences count as changed.

    Content is compared through size and mtime, as ``rsync`` does by default:
    a same-size rewrite within the same second is not seen.
    """
    before = {entry.path: entry for entry in old}
    after = {entry.path: entry for entry in new}
    changed = []
    for path in sorted(before.keys() & after.keys()):
        fields = changed_fields(before[path], after[path])
        if fields:
            changed.append(FileChange(before[path], after[path], fields))
    return SnapshotDiff(
        added=tuple(after[p] for p in sorted(after.keys() - before.keys())),
        removed=tuple(before[p] for p in sorted(before.keys() - after.keys())),
        changed=tuple(changed),
    )


async def checked_tar(
    chunks: AsyncIterator[bytes], *, allow_devices: bool = False
) -> AsyncIterator[bytes]:
    """Re-encode an untrusted tar stream canonically, refusing it at the first bad member.

    The output is what gets stored: one canonical header per member, written from
    what was checked (:class:`~docksnap.tarstream.TarCanonicalizer`), so the engine
    later reads exactly the names docksnap judged. A member is checked before any
    of its bytes are handed on, so a store never receives a member that is
    absolute, climbs out with ``..``, writes through an earlier symlink, is a
    device file (unless ``allow_devices``), or that the engine would refuse to
    extract (:class:`~docksnap.tarstream.RestorableChecker`): it raises
    :class:`~docksnap.errors.UnsafeArchiveError` naming the member, and a store
    commits nothing when its stream raises. An archive that tar readers read
    differently raises :class:`~docksnap.tarstream.AmbiguousArchiveError`; a
    malformed or truncated one :class:`~docksnap.tarstream.TarFormatError`.
    """
    checker = RestorableChecker(allow_devices=allow_devices)
    canonical = TarCanonicalizer(checker.check)
    async for piece in chunks:
        out = canonical.feed(piece)
        if out:
            yield out
    yield canonical.finish()

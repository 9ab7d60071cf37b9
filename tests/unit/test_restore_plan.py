"""The restored-symlink check of a start's restore plan, over stored indexes (pure logic).

The real-engine proof is tests/integration/test_restore_symlinks.py; these pin
the rules: which paths count, masking by a later volume, hard links to links.
"""

from __future__ import annotations

import uuid

import pytest

from docksnap import DirectorySnapshot, RestoreThroughSymlinkError, SnapshotRestore
from docksnap.service.restore_plan import check_restored_symlinks
from docksnap.tarstream import TarEntry


def entry(path: str, type: str = "dir", link: str = "") -> TarEntry:
    return TarEntry(path, type, 0o755, 0, 0, 0, 0, link, 0)


class Indexes:
    """Just enough of a SnapshotStore: ``index`` from a dict, counting reads."""

    def __init__(self) -> None:
        self.entries: dict[str, list[TarEntry]] = {}
        self.reads: list[str] = []

    def add(self, directory: str, *entries: TarEntry) -> DirectorySnapshot:
        snapshot = DirectorySnapshot(id=str(uuid.uuid4()), size=0, dir=directory)
        self.entries[snapshot.id] = [entry("."), *entries]
        return snapshot

    async def index(self, snapshot_id: str) -> list[TarEntry]:
        self.reads.append(snapshot_id)
        return self.entries[snapshot_id]


async def check(store: Indexes, *restores: SnapshotRestore) -> None:
    await check_restored_symlinks(store, list(restores))  # type: ignore[arg-type]


async def test_mount_point_below_a_restored_link_is_refused() -> None:
    store = Indexes()
    parent = store.add("/mnt", entry("a"), entry("a/b", "symlink", "../../etc"))
    child = store.add("/x")
    with pytest.raises(RestoreThroughSymlinkError) as caught:
        await check(
            store, SnapshotRestore(parent), SnapshotRestore(child, mount_point="/mnt/a/b/c")
        )
    assert (caught.value.link, caught.value.link_target) == ("/mnt/a/b", "../../etc")
    assert caught.value.path == "/mnt/a/b/c"
    assert caught.value.snapshot_id == parent.id


async def test_hard_link_to_a_restored_link_counts_as_one() -> None:
    store = Indexes()
    parent = store.add("/mnt", entry("s", "symlink", "/etc"), entry("h", "hardlink", "s"))
    child = store.add("/x")
    with pytest.raises(RestoreThroughSymlinkError, match="/mnt/h -> /etc"):
        await check(store, SnapshotRestore(parent), SnapshotRestore(child, mount_point="/mnt/h"))


async def test_a_volume_masks_the_links_below_it() -> None:
    """A fresh volume at /mnt/d hides the parent's d/link: /mnt/d/link/x is then safe."""
    store = Indexes()
    parent = store.add("/mnt", entry("d"), entry("d/link", "symlink", "/etc"))
    middle = store.add("/mnt/d", entry("link"))
    child = store.add("/x")
    deep = SnapshotRestore(child, mount_point="/mnt/d/link/x")
    await check(store, SnapshotRestore(parent), SnapshotRestore(middle), deep)
    with pytest.raises(RestoreThroughSymlinkError):
        await check(store, SnapshotRestore(parent), SnapshotRestore(middle, merge=True), deep)


async def test_merge_members_through_a_link_are_refused_but_replacing_one_is_not() -> None:
    store = Indexes()
    parent = store.add("/mnt", entry("d"), entry("d/link", "symlink", "/etc"))
    replaces = store.add("/y", entry("link", "file"))
    through = store.add("/z", entry("link"), entry("link/pwned", "file"))
    await check(store, SnapshotRestore(parent), SnapshotRestore(replaces, "/mnt/d", merge=True))
    with pytest.raises(RestoreThroughSymlinkError, match="/mnt/d/link/pwned"):
        await check(store, SnapshotRestore(parent), SnapshotRestore(through, "/mnt/d", merge=True))


async def test_indexes_are_read_only_where_a_link_could_matter() -> None:
    store = Indexes()
    first = store.add("/a", entry("s", "symlink", "/etc"))
    second = store.add("/b")
    await check(store, SnapshotRestore(first), SnapshotRestore(second))
    assert store.reads == []  # neither is below the other
    await check(store, SnapshotRestore(first), SnapshotRestore(second, mount_point="/a/t"))
    assert store.reads == [first.id]

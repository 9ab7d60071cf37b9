"""The restored-symlink check of a start's restore plan, over stored indexes (pure logic).

The real-engine proof is tests/integration/test_restore_symlinks.py; these pin
the rules: which paths count, masking by a later volume, hard links to links.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import AsyncIterator

import pytest

from docksnap import DirectorySnapshot, RestoreThroughSymlinkError, SnapshotRestore
from docksnap.service.restore_plan import ImageLinkGuard, check_restored_symlinks
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


# --- the image-link guard of merges ---------------------------------------------------


def _tar(*members: tuple[str, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def _guarded(
    raw: bytes, links: dict[str, str], piece: int = 100
) -> tuple[list[bytes], list[str]]:
    """Run the guard over ``raw`` in pieces of ``piece`` bytes: the extractions it
    makes, and the paths it stats (``links``: the container's symlinks)."""
    stats: list[str] = []
    segments: list[bytes] = []

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), piece):
            yield raw[start : start + piece]

    async def stat(path: str) -> dict[str, object] | None:
        stats.append(path)
        if path in links:
            return {"mode": 1 << 27 | 0o777, "linkTarget": links[path]}
        return {"mode": 1 << 31 | 0o755}

    async def put(segment: AsyncIterator[bytes]) -> None:
        segments.append(b"".join([chunk async for chunk in segment]))

    restore = SnapshotRestore(DirectorySnapshot(id=str(uuid.uuid4()), size=0, dir="/mnt"))
    await ImageLinkGuard(pieces(), stat, restore).extract(put)
    return segments, stats


def _members(segment: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(segment)) as tar:
        return tar.getnames()


@pytest.mark.parametrize("piece", [1, 100, 512, 1 << 20])
async def test_an_archive_with_its_directories_goes_in_one_extraction(piece: int) -> None:
    raw = _tar(("d/", None), ("d/f", b"x" * 700), ("d/e/", None), ("d/e/g", b""), ("h", b"y"))
    segments, stats = await _guarded(raw, {}, piece)
    assert segments == [raw]  # unchanged, and no stat (the engine's lock is free)
    assert stats == []


@pytest.mark.parametrize("piece", [1, 100, 512, 1 << 20])
async def test_implied_directories_are_checked_between_extractions(piece: int) -> None:
    raw = _tar(("f", b"1" * 600), ("a/b/g", b"2"), ("a/b/h", b"3"), ("c/i", b"4"))
    segments, stats = await _guarded(raw, {}, piece)
    assert stats == ["/mnt/a", "/mnt/a/b", "/mnt/c"]
    assert [_members(s) for s in segments] == [["f"], ["a/b/g", "a/b/h"], ["c/i"]]
    with tarfile.open(fileobj=io.BytesIO(segments[1])) as tar:
        extracted = tar.extractfile("a/b/h")
        assert extracted is not None
        assert extracted.read() == b"3"


@pytest.mark.parametrize("piece", [1, 100, 1 << 20])
async def test_a_member_through_a_container_symlink_never_reaches_the_engine(piece: int) -> None:
    raw = _tar(("ok", b"fine"), ("data/pwned", b"PWNED"))
    segments: list[bytes] = []
    with pytest.raises(RestoreThroughSymlinkError) as caught:
        segments, _ = await _guarded(raw, {"/mnt/data": "/etc"}, piece)
    assert (caught.value.link, caught.value.link_target) == ("/mnt/data", "/etc")
    assert caught.value.path == "/mnt/data/pwned"
    assert caught.value.in_image
    assert all(b"PWNED" not in s and b"data/pwned" not in s for s in segments)


async def test_a_hard_link_target_through_a_container_symlink_is_refused() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        link = tarfile.TarInfo("h")
        link.type, link.linkname = tarfile.LNKTYPE, "data/passwd"
        tar.addfile(link)
    with pytest.raises(RestoreThroughSymlinkError, match="/mnt/data"):
        await _guarded(buffer.getvalue(), {"/mnt/data": "/etc"})

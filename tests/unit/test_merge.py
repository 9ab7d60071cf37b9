"""Three-way merge of snapshots, on a real chunked store on local disk (issue 15, item 4).

The inputs are tar streams shaped like the engine's (tests/conformance/streams.py);
the merge reads and writes them only through the SnapshotStore contract.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docksnap.errors import InvalidArgumentError, MergeConflictError
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.service.merge import merge_snapshots
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from tests.conformance.streams import build_tar, pieces

SOURCE = SnapshotSource("merge-test", "docksnap-test:latest")
BASE = {"a.txt": b"alpha\n", "b.txt": b"bravo\n", "dir/c.txt": b"charlie\n"}


@pytest.fixture(params=[True, False], ids=["per-file", "whole-stream"])
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ChunkedStore]:
    """Both ways a merge is written: member by member reusing chunks (per-file
    inputs), and streamed through the tar filter (any other inputs)."""
    store = ChunkedStore(LocalObjectStore(tmp_path / "store"), per_file=request.param)
    yield store
    await store.close()


async def save(store: ChunkedStore, files: dict[str, bytes], directory: str = "/w") -> str:
    record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir=directory)
    info = await store.save(record, pieces(build_tar(files)), source=SOURCE)
    return info.id


async def contents(store: ChunkedStore, snapshot_id: str) -> dict[str, bytes]:
    async with store.open(snapshot_id) as reader:
        raw = b"".join([piece async for piece in reader])
    found = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                found[member.name.removeprefix("./")] = handle.read() if handle else b""
    return found


def changed(base: dict[str, bytes], **edits: bytes | None) -> dict[str, bytes]:
    files = dict(base)
    for key, value in edits.items():
        path = key.replace("__", "/").replace("_", ".")
        if value is None:
            files.pop(path, None)
        else:
            files[path] = value
    return files


async def three(
    store: ChunkedStore, ours: dict[str, bytes], theirs: dict[str, bytes]
) -> tuple[str, str, str]:
    return await save(store, BASE), await save(store, ours), await save(store, theirs)


async def test_disjoint_changes_merge_cleanly(store: ChunkedStore) -> None:
    ids = await three(
        store,
        changed(BASE, a_txt=b"ALPHA\n", new_txt=b"ours new\n"),
        changed(BASE, b_txt=None, dir__d_txt=b"theirs new\n"),
    )
    result = await merge_snapshots(store, *ids, name="merged")
    assert result.conflicts == ()
    assert await contents(store, result.snapshot.id) == {
        "a.txt": b"ALPHA\n",
        "dir/c.txt": b"charlie\n",
        "new.txt": b"ours new\n",
        "dir/d.txt": b"theirs new\n",
    }
    assert result.snapshot.name == "merged"
    assert result.snapshot.dir == "/w"
    assert (await store.verify(result.snapshot.id)).ok


async def test_the_same_change_on_both_sides_is_no_conflict(store: ChunkedStore) -> None:
    same = changed(BASE, a_txt=b"same edit\n", b_txt=None)
    ids = await three(store, same, same)
    result = await merge_snapshots(store, *ids)
    assert result.conflicts == ()
    assert await contents(store, result.snapshot.id) == changed(
        BASE, a_txt=b"same edit\n", b_txt=None
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("ours", {"a.txt": b"ours\n"}),
        ("theirs", {"a.txt": b"theirs\n"}),
        ("both", {"a.txt": b"ours\n", "a.txt.theirs": b"theirs\n"}),
    ],
)
async def test_a_same_path_conflict_under_each_policy(
    store: ChunkedStore, policy: str, expected: dict[str, bytes]
) -> None:
    ids = await three(store, changed(BASE, a_txt=b"ours\n"), changed(BASE, a_txt=b"theirs\n"))
    result = await merge_snapshots(store, *ids, on_conflict=policy)
    assert [(c.path, c.kind, c.resolution) for c in result.conflicts] == [
        ("a.txt", "modify/modify", policy)
    ]
    merged = await contents(store, result.snapshot.id)
    assert {k: v for k, v in merged.items() if k.startswith("a.txt")} == expected
    assert merged["b.txt"] == b"bravo\n"


async def test_fail_stores_nothing_and_lists_every_conflict(store: ChunkedStore) -> None:
    ids = await three(
        store,
        changed(BASE, a_txt=b"ours\n", b_txt=None, x_txt=b"1\n"),
        changed(BASE, a_txt=b"theirs\n", b_txt=b"theirs b\n", x_txt=b"2\n"),
    )
    before = {info.id for info in await store.list()}
    with pytest.raises(MergeConflictError) as caught:
        await merge_snapshots(store, *ids)
    assert sorted((c.path, c.kind) for c in caught.value.conflicts) == [
        ("a.txt", "modify/modify"),
        ("b.txt", "delete/modify"),
        ("x.txt", "add/add"),
    ]
    assert {info.id for info in await store.list()} == before


async def test_delete_versus_modify(store: ChunkedStore) -> None:
    ids = await three(store, changed(BASE, b_txt=None), changed(BASE, b_txt=b"edited\n"))
    with pytest.raises(MergeConflictError):
        await merge_snapshots(store, *ids)
    kept = await merge_snapshots(store, *ids, on_conflict="theirs")
    assert (await contents(store, kept.snapshot.id))["b.txt"] == b"edited\n"
    gone = await merge_snapshots(store, *ids, on_conflict="ours")
    assert "b.txt" not in await contents(store, gone.snapshot.id)
    both = await merge_snapshots(store, *ids, on_conflict="both")
    merged = await contents(store, both.snapshot.id)
    assert "b.txt" not in merged
    assert merged["b.txt.theirs"] == b"edited\n"


async def test_a_move_on_one_side_merges_with_an_edit_elsewhere(store: ChunkedStore) -> None:
    ids = await three(
        store,
        changed(BASE, dir__c_txt=None, moved__c_txt=b"charlie\n"),  # a rename: delete + add
        changed(BASE, a_txt=b"theirs a\n"),
    )
    result = await merge_snapshots(store, *ids)
    assert result.conflicts == ()
    merged = await contents(store, result.snapshot.id)
    assert merged == {"a.txt": b"theirs a\n", "b.txt": b"bravo\n", "moved/c.txt": b"charlie\n"}


async def test_text_merge_joins_edits_to_different_lines(store: ChunkedStore) -> None:
    lines = b"".join(b"line %d\n" % n for n in range(10))
    base_files = {**BASE, "notes.txt": lines}
    ours = {**base_files, "notes.txt": lines.replace(b"line 1\n", b"line one\n")}
    theirs = {**base_files, "notes.txt": lines.replace(b"line 8\n", b"line eight\n")}
    ids = (await save(store, base_files), await save(store, ours), await save(store, theirs))
    with pytest.raises(MergeConflictError):
        await merge_snapshots(store, *ids)
    result = await merge_snapshots(store, *ids, text_merge=True)
    assert [(c.path, c.resolution) for c in result.conflicts] == [("notes.txt", "text-merge")]
    merged = (await contents(store, result.snapshot.id))["notes.txt"]
    assert b"line one\n" in merged
    assert b"line eight\n" in merged
    # Edits to the same line still conflict.
    clash = {**base_files, "notes.txt": lines.replace(b"line 1\n", b"line uno\n")}
    ids = (ids[0], ids[1], await save(store, clash))
    with pytest.raises(MergeConflictError):
        await merge_snapshots(store, *ids, text_merge=True)


async def test_inputs_of_different_directories_are_refused(store: ChunkedStore) -> None:
    ids = (await save(store, BASE), await save(store, BASE), await save(store, BASE, "/other"))
    with pytest.raises(InvalidArgumentError, match="one directory"):
        await merge_snapshots(store, *ids)
    with pytest.raises(InvalidArgumentError, match="on_conflict"):
        await merge_snapshots(store, *ids[:2], ids[0], on_conflict="newest")


async def test_a_merge_reuses_the_inputs_chunks(
    store: ChunkedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shown by stats: the merged snapshot stores no new data chunk, and reads none.

    The inputs are per-file snapshots (docs/FORMAT.md §11.11): each member's data
    is in chunks of its own, which the merge gives to ``save_members`` by
    reference. What is new is at most the chunk of bytes after the last member's
    data (its header run and the end-of-archive marker: 1 KiB here, as the inputs
    end with tarfile's record padding instead).
    """
    big = {f"big{n}.bin": os.urandom(2_000_000) for n in range(3)}
    base_files = {**BASE, **big}
    ours = {**base_files, "ours.bin": os.urandom(2_000_000)}
    theirs = {**base_files, "theirs.bin": os.urandom(2_000_000)}
    ids = (await save(store, base_files), await save(store, ours), await save(store, theirs))
    before = await store.stats()

    def no_reading(snapshot_id: str) -> None:
        raise AssertionError(f"the merge read snapshot {snapshot_id}'s data")

    per_file = await store.is_per_file(ids[0])
    with monkeypatch.context() as patch:
        if per_file:
            patch.setattr(store, "open", no_reading)
        result = await merge_snapshots(store, *ids)
    after = await store.stats()
    assert after.snapshots == before.snapshots + 1
    merged_size = result.snapshot.size
    assert merged_size > 10_000_000
    if not per_file:
        # Whole-stream inputs (manifest version 2) go through the tar filter: the
        # few chunks that straddle a boundary between runs of members are new.
        assert after.stored_bytes - before.stored_bytes < 4 * 256 * 1024
        return
    assert after.chunks - before.chunks <= 1
    assert after.extra["unique_bytes"] - before.extra["unique_bytes"] <= 1024
    assert after.stored_bytes - before.stored_bytes <= 1024
    inputs = {ref for i in ids for r in await store.member_chunks(i) for ref in r.content}
    merged = {ref for r in await store.member_chunks(result.snapshot.id) for ref in r.content}
    assert merged <= inputs
    assert await contents(store, result.snapshot.id) == {**ours, "theirs.bin": theirs["theirs.bin"]}
    assert after.logical_bytes - before.logical_bytes == merged_size


def _with_other(files: dict[str, bytes], other: dict[str, bytes]) -> bytes:
    """``files`` as :func:`build_tar` writes them, then ``other`` as members of type
    "other" that carry data (type flag '7', which the indexer does not know)."""
    buffer = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(build_tar(files))) as source,
        tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in source:
            tar.addfile(member, source.extractfile(member) if member.isfile() else None)
        for name, data in other.items():
            info = tarfile.TarInfo(f"./{name}")
            info.type, info.size, info.mode = tarfile.CONTTYPE, len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_a_renamed_member_of_type_other_keeps_its_type_and_size(
    store: ChunkedStore,
) -> None:
    async def other(data: bytes) -> str:
        record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/w")
        tar = _with_other(BASE, {"odd": data})
        return (await store.save(record, pieces(tar), source=SOURCE)).id

    # Both sides change the content, not the size: only the bytes tell them apart.
    ids = (await other(b"base\n"), await other(b"ours!\n"), await other(b"their\n"))
    result = await merge_snapshots(store, *ids, on_conflict="both")
    assert [(c.path, c.resolution) for c in result.conflicts] == [("odd", "both")]
    async with store.open(result.snapshot.id) as reader:
        raw = b"".join([piece async for piece in reader])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name.removeprefix("./"): m for m in tar}
        assert {k: (m.type, m.size) for k, m in members.items() if k.startswith("odd")} == {
            "odd": (tarfile.CONTTYPE, 6),
            "odd.theirs": (tarfile.CONTTYPE, 6),
        }
        handle = tar.extractfile(members["odd.theirs"])
        assert handle is not None
        assert handle.read() == b"their\n"
    assert (await contents(store, result.snapshot.id))["b.txt"] == b"bravo\n"

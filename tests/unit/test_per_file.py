"""Per-file chunking (docs/FORMAT.md §11.11): a member's data is cut on its own,
so its chunks do not depend on what precedes it; the member map and the member
writer that reuses chunks without reading them; older snapshots still read."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docksnap.errors import SnapshotCorruptError, StoreError
from docksnap.store.chunked import ChunkedStore, ChunkerParams
from docksnap.store.chunked.cutter import RegionCutter, RegionSegment, Reused, make_chunker
from docksnap.store.chunked.format import (
    ChunkRef,
    Manifest,
    chunk_list_digest,
    decode_record,
    encode_record,
    manifest_key,
    open_record,
)
from docksnap.store.chunked.members import Member, MemberChunkRecord, ReusedContent
from docksnap.store.chunked.reader import PackFetcher
from docksnap.store.objects.local import LocalObjectStore
from docksnap.tarstream import MemberIndexer, TarFormatError
from tests.chunkedsupport import SOURCE, new_record, read_back, save
from tests.conformance.streams import build_tar, random_files, split, text_files
from tests.s3support import chunked_s3
from tests.tarcraft import gnu_long, header, pax, with_data

SMALL = ChunkerParams(avg_size=256, min_size=64, max_size=1024)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChunkedStore]:
    """The chunked store on local disk and on the S3 server."""
    if request.param == "s3":
        async with chunked_s3(request, tmp_path) as on_s3:
            assert isinstance(on_s3, ChunkedStore)
            yield on_s3
        return
    store = ChunkedStore(LocalObjectStore(tmp_path / "store"))
    yield store
    await store.close()


def manifest_of(store: ChunkedStore, snapshot_id: str) -> Manifest:
    return decode_record(open_record(store.objects.get(manifest_key(snapshot_id))), Manifest)


def content_chunks(records: list[MemberChunkRecord]) -> dict[str, tuple[object, ...]]:
    return {r.entry.path: r.content for r in records if r.entry.type == "file"}


# --- the cutter ----------------------------------------------------------------------------


def cut_regions(data: bytes, cuts: list[int], piece_sizes: list[int], capacity: int) -> list[int]:
    """Chunk lengths the RegionCutter gives for ``data`` fed in pieces, with every
    cut announced once the bytes before it were fed (as the indexer does)."""
    lengths: list[int] = []

    def emit(segment: RegionSegment) -> None:
        for item in segment.items:
            assert not isinstance(item, Reused)
            lengths.append(item[1])

    cutter = RegionCutter(SMALL, capacity, lambda: bytearray(capacity), emit)
    pending = sorted(cuts)
    for pos, piece in split(data, piece_sizes):
        end = pos + len(piece)
        cutter.cut_at([c for c in pending if c <= end])
        pending = [c for c in pending if c > end]
        cutter.feed(piece)
    cutter.finish()
    return lengths


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    length=st.integers(0, 40_000),
    ncuts=st.integers(0, 12),
    piece_sizes=st.lists(st.integers(1, 9_000), min_size=1, max_size=4),
    capacity=st.integers(3072, 12_000),
)
def test_each_region_is_cut_as_if_it_were_the_whole_stream(
    seed: int, length: int, ncuts: int, piece_sizes: list[int], capacity: int
) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(length)
    cuts = sorted({rng.randrange(1, length) for _ in range(ncuts)} if length > 1 else set())
    expected: list[int] = []
    for start, end in zip([0, *cuts], [*cuts, length], strict=True):
        expected += [c.length for c in make_chunker(SMALL).cut_buf(data[start:end])]
    assert cut_regions(data, cuts, piece_sizes, capacity) == expected


# --- the store -------------------------------------------------------------------------------


async def test_a_files_chunks_do_not_depend_on_what_precedes_it(store: ChunkedStore) -> None:
    files = {**text_files(20, 30_000), **random_files(3, 700_000)}
    first = await save(store, build_tar(files), (65536,))
    before = {"aaa/first.bin": random.Random(5).randbytes(123_457)}
    second = await save(store, build_tar({**before, **files}), (1000, 70_001))
    a = content_chunks(await store.member_chunks(first.id))
    b = content_chunks(await store.member_chunks(second.id))
    assert a == {path: b[path] for path in a}
    assert all(len(chunks) == 1 for path, chunks in a.items() if path.endswith(".txt"))
    assert all(len(chunks) > 1 for path, chunks in a.items() if "blob" in path)


def odd_tar() -> bytes:
    """PAX and GNU long names, a global header, a hard link, empty files, xattrs,
    and bytes after the end-of-archive marker (a writer's record padding)."""
    rng = random.Random(7)
    long_name = b"d/" + b"n" * 180
    parts = [
        with_data(header(b"d/", b"5"), b""),
        pax({b"path": long_name, b"SCHILY.xattr.user.k": b"v"}),
        with_data(header(b"short", size=70_000), rng.randbytes(70_000)),
        pax({b"comment": b"hello"}, flag=b"g"),
        gnu_long(b"L", b"d/" + b"g" * 200),
        with_data(header(b"ignored", size=5), b"hello"),
        with_data(header(b"d/empty"), b""),
        with_data(header(b"d/link", b"1", link=b"short"), b""),
        with_data(header(b"d/small", size=3), b"abc"),
    ]
    return b"".join(parts) + bytes(1024) + bytes(8192)


@pytest.mark.parametrize("sizes", [(1,), (511, 513), (65536,)])
async def test_export_is_byte_identical_and_size_is_the_archive_length(
    store: ChunkedStore, sizes: tuple[int, ...]
) -> None:
    data = odd_tar()
    info = await save(store, data if sizes != (1,) else data[:4096] + data[4096:], sizes)
    assert info.size == len(data)
    assert await read_back(store, info.id) == data
    assert (await store.verify(info.id)).ok
    manifest = manifest_of(store, info.id)
    assert manifest.version == 3
    assert manifest.digest == chunk_list_digest(manifest.chunks)


def members_of(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header bytes, data bytes) per member (header: everything since the previous
    member's data), and the bytes after the last member's data."""
    indexer = MemberIndexer()
    indexer.feed(data)
    indexer.finish()
    members: list[tuple[bytes, bytes]] = []
    previous = 0
    for (_, data_start, end), entry in zip(indexer.spans, indexer.entries, strict=True):
        members.append((data[previous:data_start], data[data_start : data_start + entry.size]))
        previous = end
    return members, data[previous:]


def index_object(store: ChunkedStore, snapshot_id: str) -> dict[str, object]:
    manifest = manifest_of(store, snapshot_id)
    assert manifest.index is not None
    raw = msgspec.msgpack.decode(open_record(store.objects.get(manifest.index.key)))
    assert isinstance(raw, dict)
    raw.pop("snapshot_id")
    return raw


async def assert_same_snapshot(store: ChunkedStore, a: str, b: str) -> None:
    ma, mb = manifest_of(store, a), manifest_of(store, b)
    assert (ma.chunks, ma.size, ma.digest, ma.version) == (mb.chunks, mb.size, mb.digest, 3)
    assert index_object(store, a) == index_object(store, b)
    assert await read_back(store, a) == await read_back(store, b)


@pytest.mark.parametrize("kind", ["docker", "odd"])
async def test_members_with_reused_data_save_the_same_snapshot_as_the_bytes(
    store: ChunkedStore, kind: str
) -> None:
    files = {**text_files(30, 5_000), **random_files(2, 600_000), "empty": b""}
    data = build_tar(files) if kind == "docker" else odd_tar()
    parent = await save(store, data)
    records = await store.member_chunks(parent.id)
    members, trailer = members_of(data)
    stats_before = await store.stats()

    reused = [
        Member(head, record.reused()) for (head, _), record in zip(members, records, strict=True)
    ]
    copy = await store.save_members(new_record(), reused, source=SOURCE, trailer=trailer)
    await assert_same_snapshot(store, parent.id, copy.id)
    assert (await store.stats()).stored_bytes == stats_before.stored_bytes  # nothing new

    as_bytes = [Member(head, body) for head, body in members]
    again = await store.save_members(new_record(), as_bytes, source=SOURCE, trailer=trailer)
    await assert_same_snapshot(store, parent.id, again.id)
    assert (await store.verify()).ok


async def test_a_reused_chunk_that_is_not_stored_commits_nothing(
    store: ChunkedStore, tmp_path: Path
) -> None:
    data = build_tar(random_files(1, 100_000))
    elsewhere = ChunkedStore(LocalObjectStore(tmp_path / "elsewhere"))
    try:
        parent = await save(elsewhere, data)
        records = await elsewhere.member_chunks(parent.id)
    finally:
        await elsewhere.close()
    members, trailer = members_of(data)
    given = [Member(h, r.reused()) for (h, _), r in zip(members, records, strict=True)]
    with pytest.raises(StoreError, match="given for reuse is not stored"):
        await store.save_members(new_record(), given, source=SOURCE, trailer=trailer)
    assert await store.list() == []


async def test_reused_data_of_the_wrong_size_is_refused(store: ChunkedStore) -> None:
    data = build_tar({"a": b"x" * 1000, "b": b"y" * 3000})
    parent = await save(store, data)
    records = await store.member_chunks(parent.id)
    members, trailer = members_of(data)
    swapped = [Member(members[0][0], ())] + [
        Member(h, r.reused()) for (h, _), r in zip(members[1:], records[1:], strict=True)
    ]
    swapped[-2] = Member(members[-2][0], records[-1].reused())  # a's header, b's data
    with pytest.raises(TarFormatError, match="declares"):
        await store.save_members(new_record(), swapped, source=SOURCE, trailer=trailer)
    assert [i.id for i in await store.list()] == [parent.id]
    with pytest.raises(ValueError, match="cannot hold"):
        ReusedContent(records[-1].content, 1)


async def test_a_tampered_chunk_list_fails_verify(store: ChunkedStore) -> None:
    info = await save(store, build_tar(text_files(5, 40_000)))
    manifest = manifest_of(store, info.id)
    chunks = (manifest.chunks[1], manifest.chunks[0], *manifest.chunks[2:])
    tampered = msgspec.structs.replace(manifest, chunks=chunks)
    store.objects.put(manifest_key(info.id), encode_record(tampered))
    report = await store.verify(info.id)
    assert not report.ok
    assert "chunk-list digest" in report.problems[0].detail


async def test_older_snapshots_still_read_beside_per_file_ones(tmp_path: Path) -> None:
    """A version-1 store, then whole-stream version-2 snapshots (written before
    per-file chunking), then per-file ones: all restore byte for byte and verify."""
    objects = tmp_path / "store"
    data = {v: build_tar(text_files(10, 20_000, seed=v)) for v in (1, 2, 3)}
    ids: dict[int, str] = {}
    options: list[tuple[int, dict[str, Any]]] = [
        (1, {"format_version": 1}),
        (2, {"per_file": False}),
        (3, {}),
    ]
    for version, kwargs in options:
        writer = ChunkedStore(LocalObjectStore(objects), **kwargs)
        try:
            ids[version] = (await save(writer, data[version])).id
        finally:
            await writer.close()
    store = ChunkedStore(LocalObjectStore(objects))
    try:
        for version, snapshot_id in ids.items():
            assert manifest_of(store, snapshot_id).version == version
            assert await read_back(store, snapshot_id) == data[version]
        assert (await store.verify()).ok
        with pytest.raises(StoreError, match="not cut per file"):
            await store.member_chunks(ids[2])
        assert len(await store.member_chunks(ids[3])) == len(members_of(data[3])[0])
    finally:
        await store.close()


async def test_a_damaged_member_map_is_reported(store: ChunkedStore) -> None:
    info = await save(store, build_tar(text_files(3, 1000)))
    manifest = manifest_of(store, info.id)
    assert manifest.index is not None
    store.objects.put(manifest.index.key, b"\x01junk")
    with pytest.raises(SnapshotCorruptError):
        await store.member_chunks(info.id)


def _spans(data: bytes) -> Iterator[tuple[int, int, int]]:
    indexer = MemberIndexer()
    indexer.feed(data)
    indexer.finish()
    yield from indexer.spans


async def test_member_chunks_locate_every_header(store: ChunkedStore) -> None:
    data = odd_tar()
    info = await save(store, data)
    manifest = manifest_of(store, info.id)
    starts = [0]
    for ref in manifest.chunks:
        starts.append(starts[-1] + ref.length)
    records = await store.member_chunks(info.id)
    for rec, (start, data_start, end) in zip(records, _spans(data), strict=True):
        first = manifest.chunks.index(rec.header[0]) if rec.header else None
        assert first is not None
        assert starts[first] + rec.header_offset == start == rec.entry.offset
        assert sum(r.length for r in rec.header) - rec.header_offset >= data_start - start or (
            not rec.content
        )
        assert sum(r.length for r in rec.content) == end - data_start


async def test_member_headers_are_the_raw_header_bytes(
    store: ChunkedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = odd_tar()
    info = await save(store, data)
    fetched: list[int] = []
    fetch_group = PackFetcher.fetch_group

    def counting(self: PackFetcher, refs: Sequence[ChunkRef]) -> bytes:
        fetched.extend(ref.length for ref in refs)
        return fetch_group(self, refs)

    monkeypatch.setattr(PackFetcher, "fetch_group", counting)
    got = [(record.entry.path, header) async for record, header in store.member_headers(info.id)]
    spans = list(_spans(data))
    assert [h for _, h in got] == [data[start:data_start] for start, data_start, _ in spans]
    # Only the chunks between members' data were read, not the 70,000-byte file.
    assert sum(fetched) < 70_000

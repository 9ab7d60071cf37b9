"""Format version 2 of the chunked store: packs, the chunk index, leases, pack gc,
and version-1 stores read and upgraded (on a local directory; S3 runs the
conformance suite and tests/integration/test_s3.py)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from docksnap.errors import SnapshotCorruptError, StoreFormatError
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store import open_store
from docksnap.store.chunked import ChunkedStore, ChunkerParams
from docksnap.store.chunked.format import ChunkRef, GcLease
from docksnap.store.chunked.leases import LEASES, Lease
from docksnap.store.chunked.packs import (
    ENTRY_SIZE,
    LOCAL_PACK_TARGET,
    PACK_INDEX,
    PENDING,
    ChunkIndex,
    Location,
    PackBuffers,
    PackBuilder,
    PackTable,
    read_pack_table,
)
from docksnap.store.chunked.reader import MAX_GAP, STREAM_PIECE, _spans
from docksnap.store.objects import ObjectInfo
from docksnap.store.objects.local import LocalObjectStore
from tests.chunkedsupport import SOURCE, files, new_store, read_back, save
from tests.conformance.streams import (
    build_tar,
    failing_after,
    random_files,
    text_files,
)

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
SRC = str(Path(__file__).resolve().parents[2] / "src")
PROJECT = Path(SRC).parent


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in files(root, "packs"))


# --- the pure parts ------------------------------------------------------------------


def test_a_pack_describes_itself_and_its_index_matches() -> None:
    builder = PackBuilder(target=1 << 30)
    digests = [os.urandom(32) for _ in range(50)]
    for n, digest in enumerate(digests):
        assert builder.add(digest, b"\x00" + bytes([n]) * (n + 1), n + 1) is None
    sealed = builder.seal()
    assert sealed is not None
    assert read_pack_table(sealed.table.pack_id, sealed.data) == sealed.table
    decoded = PackTable.decode_index(sealed.table.pack_id, sealed.table.encode_index())
    assert decoded == sealed.table
    for digest, offset, stored, length in sealed.table:
        n = length - 1
        assert sealed.data[offset : offset + stored] == b"\x00" + bytes([n]) * length
        assert digest == digests[n]


def test_packs_stay_within_the_target_and_reuse_their_buffers() -> None:
    """A pack is sealed when the next chunk would not fit: never larger than the
    target, and its buffer, once released, holds the next pack (no fresh pages)."""
    buffers = PackBuffers(4096, keep=1)
    builder = PackBuilder(4096, buffers)
    sealed = [s for n in range(40) if (s := builder.add(os.urandom(32), bytes([n]) * 300, 300))]
    assert sealed
    assert all(s.table.pack_size <= 4096 for s in sealed)
    first = sealed[0]
    content = bytes(first.data)
    assert read_pack_table(first.table.pack_id, content) == first.table
    first.release()
    first.release()  # idempotent: the buffer is pooled once
    with pytest.raises(ValueError, match="released memoryview"):
        first.data[0]  # a released pack cannot be read by mistake
    assert buffers.take() is first.buffer
    assert buffers.take() is not first.buffer


def test_a_chunk_larger_than_the_target_gets_a_pack_of_its_own() -> None:
    builder = PackBuilder(1024)
    assert builder.add(os.urandom(32), b"a" * 100, 100) is None
    small = builder.add(os.urandom(32), b"b" * 5000, 5000)
    assert small is not None
    assert len(small.table) == 1
    large = builder.seal()
    assert large is not None
    assert large.data[:5000] == b"b" * 5000
    assert len(large.table) == 1
    assert large.table.pack_size > 5000


def test_a_damaged_pack_index_is_refused() -> None:
    builder = PackBuilder()
    builder.add(os.urandom(32), b"\x00abc", 3)
    sealed = builder.seal()
    assert sealed is not None
    damaged = bytearray(sealed.table.encode_index())
    damaged[20] ^= 1
    with pytest.raises(Exception, match="checksum"):
        PackTable.decode_index(sealed.table.pack_id, bytes(damaged))


def test_the_chunk_index_finds_every_chunk_and_costs_52_bytes_each() -> None:
    tables: list[PackTable] = []
    expected: dict[bytes, str | None] = {}
    for _ in range(20):
        builder = PackBuilder(target=1 << 30)
        for _ in range(500):
            digest = os.urandom(32)
            builder.add(digest, b"\x00xy", 2)
            expected[digest] = None
        sealed = builder.seal()
        assert sealed is not None
        tables.append(sealed.table)
        for digest, *_ in sealed.table:
            expected[digest] = sealed.table.pack_id
    index = ChunkIndex(tables[:10])
    merged = ChunkIndex(tables[10:], base=index, drop=frozenset({tables[0].pack_id}))
    assert len(merged) == 19 * 500
    assert merged.nbytes() == 52 * len(merged)
    assert ENTRY_SIZE == 44
    for digest, pack_id in expected.items():
        found = merged.find(digest)
        if pack_id == tables[0].pack_id:
            assert found is None
        else:
            assert found is not None
            assert found.pack_id == pack_id
            assert merged.find(digest, excluded=frozenset({pack_id})) is None
    assert merged.find(b"\xff" * 32) is None


def test_the_chunk_index_tells_apart_digests_that_share_a_prefix() -> None:
    """Lookups search the digests' first 4 bytes, then compare whole digests: every
    digest of a prefix is found, a stranger with that prefix is not, and a chunk in
    two packs is found in the one not excluded."""
    prefix = os.urandom(4)
    digests = sorted(prefix + os.urandom(28) for _ in range(50))
    tables = []
    for members in (digests[:30], digests[20:]):  # digests[20:30] are in both packs
        builder = PackBuilder(target=1 << 30)
        for digest in members:
            builder.add(digest, b"\x00xy", 2)
        sealed = builder.seal()
        assert sealed is not None
        tables.append(sealed.table)
    index = ChunkIndex(tables)
    first, second = (t.pack_id for t in tables)
    for n, digest in enumerate(digests):
        found = index.find(digest)
        assert found is not None
        assert found.pack_id in ({first, second} if 20 <= n < 30 else {first if n < 20 else second})
        elsewhere = index.find(digest, excluded=frozenset({first}))
        assert (elsewhere is None) == (n < 20)
        if elsewhere is not None:
            assert elsewhere.pack_id == second
    assert index.find(prefix + b"\x00" * 28) is None  # one in 2**224 to be among them
    assert index.find(prefix[:3] + bytes([(prefix[3] + 1) % 256]) + digests[0][4:]) is None


# --- saving and reading --------------------------------------------------------------


async def test_round_trip_and_resave_adds_under_one_percent(
    store: ChunkedStore, root: Path
) -> None:
    data = build_tar(text_files(100, 60_000) | random_files(4, 1_000_000))
    first = await save(store, data)
    assert await read_back(store, first.id) == data
    assert files(root, "packs")
    assert files(root, "packindex")
    assert not (root / "chunks").exists()  # format 2 writes no chunk objects
    before = stored_bytes(root)
    second = await save(store, data)
    assert stored_bytes(root) - before < 0.01 * before
    assert await read_back(store, second.id) == data
    assert (await store.verify(read_data=True)).ok
    assert (await store.verify(read_data=False)).ok
    config = msgspec.json.decode((root / "config").read_bytes())
    assert config["version"] == 2


async def test_saving_the_same_data_twice_into_two_stores_never_shares_a_pack_name(
    tmp_path: Path,
) -> None:
    """Pack names are random: a writer never finds "its" pack already stored (one gc
    may have marked for deletion), even when two saves build identical packs."""
    data = build_tar(text_files(5, 10_000))
    names = []
    for n in range(2):
        store = new_store(tmp_path / f"s{n}")
        try:
            await save(store, data)
        finally:
            await store.close()
        names.append({p.name for p in files(tmp_path / f"s{n}", "packs")})
    assert names[0].isdisjoint(names[1])
    assert [p.read_bytes() for p in files(tmp_path / "s0", "packs")] == [
        p.read_bytes() for p in files(tmp_path / "s1", "packs")
    ]


def test_a_group_is_read_with_one_request_per_stretch_of_a_pack() -> None:
    """Chunks of one pack back to back, or at most MAX_GAP apart, in whatever order
    the stream wants them, are one ranged read; another pack, or a wider gap, is
    another. Each chunk is in exactly one read, which covers it."""
    chunk = 40_000

    def at(pack: str, offset: int, stored: int = chunk) -> tuple[ChunkRef, Location]:
        return ChunkRef(os.urandom(32).hex(), stored), Location(pack, offset, stored, stored)

    # The writer finishes segments out of order: the stream wants pack "a" at
    # 0, 1, then "b", then "a" at 3 and 2, a chunk twice, and one far beyond.
    located = [
        at("a", 0),
        at("a", chunk),
        at("b", 0),
        at("a", 3 * chunk),
        at("a", 2 * chunk),
        at("a", chunk),
        at("a", 4 * chunk + MAX_GAP),  # a gap of exactly MAX_GAP: still one read
        at("a", 10 * chunk + 2 * MAX_GAP),  # farther: its own read
    ]
    spans = _spans(located)
    assert [(s.pack_id, s.start, s.end) for s in spans] == [
        ("a", 0, 5 * chunk + MAX_GAP),
        ("a", 10 * chunk + 2 * MAX_GAP, 11 * chunk + 2 * MAX_GAP),
        ("b", 0, chunk),
    ]
    members = sorted(m for s in spans for m in s.members)
    assert members == list(range(len(located)))
    for span in spans:
        for m in span.members:
            where = located[m][1]
            assert where.pack_id == span.pack_id
            assert span.start <= where.offset
            assert where.offset + where.stored <= span.end


async def test_a_restore_reads_each_pack_stretch_once_and_yields_large_pieces(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = build_tar({**random_files(12, 700_000, seed=11), **text_files(300, 3_000, seed=12)})
    store = new_store(root, chunker=SMALL)
    try:
        info = await save(store, data)
        reads: list[int] = []
        get_range = LocalObjectStore.get_range

        def counting(self: LocalObjectStore, key: str, start: int, length: int) -> bytes:
            reads.append(length)
            return get_range(self, key, start, length)

        monkeypatch.setattr(LocalObjectStore, "get_range", counting)
        async with store.open(info.id) as reader:
            got = [piece async for piece in reader]
        assert b"".join(got) == data
        # Every piece but the last is a whole group of at least STREAM_PIECE bytes.
        assert all(len(piece) >= STREAM_PIECE for piece in got[:-1])
        chunks = (await store.stats()).chunks
        assert chunks > 2000
        # Thousands of ~4 KiB chunks in a few reads (a stretch of a pack each, at
        # most a few per piece); the gaps read along are a small part.
        assert len(reads) * 50 < chunks
        assert sum(reads) < 1.5 * stored_bytes(root)
    finally:
        await store.close()


async def test_opening_a_snapshot_starts_its_reads_and_leaving_ends_them(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads begin at open, while the caller still prepares where the stream goes;
    leaving unread cancels them and leaves none of the reader's threads behind."""
    store = new_store(root)
    try:
        info = await save(store, build_tar(random_files(10, 1_000_000)))
        began = threading.Event()
        get_range = LocalObjectStore.get_range

        def noting(self: LocalObjectStore, key: str, start: int, length: int) -> bytes:
            began.set()
            return get_range(self, key, start, length)

        monkeypatch.setattr(LocalObjectStore, "get_range", noting)
        async with store.open(info.id):
            assert await asyncio.to_thread(began.wait, 30)  # nobody has iterated
        assert not [t for t in threading.enumerate() if t.name.startswith("docksnap-read")]
    finally:
        await store.close()


async def test_incompressible_chunks_are_stored_raw(store: ChunkedStore, root: Path) -> None:
    data = build_tar(random_files(2, 2_000_000))
    await save(store, data)
    assert stored_bytes(root) > len(data) * 0.98  # nothing to gain, nothing spent on it


async def test_a_flipped_byte_in_a_pack_is_detected_and_named(
    store: ChunkedStore, root: Path
) -> None:
    info = await save(store, build_tar(random_files(3, 300_000)))
    victim = max(files(root, "packs"), key=lambda p: p.stat().st_size)
    damaged = bytearray(victim.read_bytes())
    damaged[len(damaged) // 3] ^= 0x40
    victim.write_bytes(bytes(damaged))
    with pytest.raises(SnapshotCorruptError, match=victim.name):
        await read_back(store, info.id)
    report = await store.verify(read_data=True)
    assert not report.ok
    assert any(victim.name in problem.detail for problem in report.problems)


async def test_verify_quarantines_a_damaged_chunk_and_the_next_save_heals_it(
    store: ChunkedStore, root: Path
) -> None:
    """Issue 10, defect 7: known corruption must not spread through dedup."""
    data = build_tar(random_files(3, 300_000))
    old = await save(store, data)
    victim = max(files(root, "packs"), key=lambda p: p.stat().st_size)
    damaged = bytearray(victim.read_bytes())
    damaged[len(damaged) // 3] ^= 0x40
    victim.write_bytes(bytes(damaged))

    report = await store.verify(read_data=True)
    assert [p.snapshot_id for p in report.problems] == [old.id]
    assert "quarantined" in report.problems[0].detail
    assert [p.parent.name for p in files(root, "quarantine")] == [report.problems[0].object]

    new = await save(store, data)  # the damaged chunk is stored afresh, not reused
    assert await read_back(store, new.id) == data
    assert await read_back(store, old.id) == data  # readers use the fresh copy too
    assert (await store.verify(read_data=True)).ok
    await store.gc(grace=0)
    assert (await store.verify(read_data=True)).ok
    assert await read_back(store, old.id) == data


async def test_a_transient_read_fault_quarantines_nothing(store: ChunkedStore, root: Path) -> None:
    info = await save(store, build_tar(random_files(2, 200_000)))
    for pack in files(root, "packs"):
        pack.rename(pack.with_name(pack.name + "x"))  # unreadable under its name
    report = await store.verify(read_data=True)
    assert not report.ok
    for pack in files(root, "packs"):
        pack.rename(pack.with_name(pack.name[:-1]))
    assert files(root, "quarantine") == []
    assert (await store.verify(read_data=True)).ok
    assert await read_back(store, info.id) == build_tar(random_files(2, 200_000))


async def test_a_missing_pack_is_reported(store: ChunkedStore, root: Path) -> None:
    info = await save(store, build_tar(random_files(2, 200_000)))
    for pack in files(root, "packs"):
        pack.unlink()
    with pytest.raises(SnapshotCorruptError, match="missing"):
        await read_back(store, info.id)
    assert not (await store.verify(read_data=False)).ok


async def test_a_failed_save_removes_its_packs_at_once(store: ChunkedStore, root: Path) -> None:
    kept = await save(store, build_tar(text_files(5, 10_000, seed=7)))
    packs_before = files(root, "packs")
    data = build_tar(random_files(4, 1_000_000))
    error = RuntimeError("refused")
    with pytest.raises(RuntimeError):
        await store.save(
            DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/d"),
            failing_after(data, 3 << 20, error),
            source=SOURCE,
        )
    assert files(root, "packs") == packs_before  # no gc needed
    assert [p.name for p in files(root, "leases")] == []
    assert await read_back(store, kept.id) == build_tar(text_files(5, 10_000, seed=7))


# --- crashes --------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from pathlib import Path
    from docksnap.model import DirectorySnapshot, new_snapshot_id
    from docksnap.store.base import SnapshotSource
    from docksnap.store.chunked import ChunkedStore
    from docksnap.store.objects.local import LocalObjectStore
    from tests.conformance.streams import build_tar, pieces, random_files

    class StopAt(LocalObjectStore):
        # Announces, then hangs forever, at the first write of a key with this prefix.
        def _hang(self, key):
            if key.startswith(sys.argv[2]):
                Path(sys.argv[3]).write_text(key)
                time.sleep(3600)
        def put(self, key, data):
            self._hang(key)
            super().put(key, data)
        def put_if_absent(self, key, data):
            self._hang(key)
            return super().put_if_absent(key, data)

    async def main():
        store = ChunkedStore(StopAt(Path(sys.argv[1])), pack_size=256 * 1024)
        record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/data")
        data = build_tar(random_files(8, 300_000, seed=11))
        await store.save(record, pieces(data), source=SnapshotSource("victim", "img"))

    asyncio.run(main())
    """
)


def _kill_at(root: Path, prefix: str, flag: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{PROJECT}"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), prefix, str(flag)], env=env, cwd=PROJECT
    )
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert child.poll() is None, "the child ended before reaching its stage"
            assert time.monotonic() < deadline, f"the child never reached {prefix}"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


@pytest.mark.parametrize(
    "stage",
    [
        "packs/",  # while writing the second pack: one pack stored, none indexed
        "packindex/",  # every pack stored, none indexed
        "indexes/",  # packs indexed, tar index not written
        "manifests/",  # everything but the commit
    ],
)
async def test_a_save_killed_at_any_stage_leaves_nothing_visible_and_gc_reclaims_it(
    tmp_path: Path, stage: str
) -> None:
    root = tmp_path / "store"
    setup = new_store(root)
    kept = await save(setup, build_tar(text_files(3, 5_000)))
    await setup.close()
    _kill_at(root, stage, tmp_path / "flag")
    store = new_store(root)
    try:
        assert [info.id for info in await store.list()] == [kept.id]
        assert (await store.verify(read_data=True)).ok
        # grace=0: the killed writer's lease names a process of this host that is gone,
        # so gc does not wait for it to expire.
        await store.gc(grace=0)
        leftovers = {prefix: files(root, prefix) for prefix in ("leases", "pending", "indexes")}
        assert leftovers == {"leases": [], "pending": [], "indexes": files(root, "indexes")}
        assert len(files(root, "indexes")) == 1
        assert len(files(root, "packs")) == len(files(root, "packindex")) == 1
        assert await read_back(store, kept.id) == build_tar(text_files(3, 5_000))
    finally:
        await store.close()


async def test_a_local_store_opened_by_url_writes_packs_of_at_most_8_mib(root: Path) -> None:
    store = open_store(root.as_uri())
    assert isinstance(store, ChunkedStore)
    try:
        info = await save(store, build_tar(random_files(5, 4 << 20, seed=8)))
        packs = files(root, "packs")
        assert len(packs) >= 3
        assert all(p.stat().st_size <= LOCAL_PACK_TARGET == 8 << 20 for p in packs)
        assert await read_back(store, info.snapshot.id) == build_tar(
            random_files(5, 4 << 20, seed=8)
        )
    finally:
        await store.close()


# --- gc -------------------------------------------------------------------------------


async def test_gc_after_delete_drops_only_unshared_packs(root: Path) -> None:
    store = new_store(root, pack_size=64 * 1024, chunker=SMALL)
    try:
        shared = text_files(20, 20_000, seed=3)
        keep = await save(store, build_tar(shared))
        gone = await save(store, build_tar(shared | random_files(3, 200_000, seed=4)))
        before = stored_bytes(root)
        await store.delete(gone.id)
        report = await store.gc(grace=0)
        assert report.objects_deleted > 0
        assert stored_bytes(root) < before - 500_000
        assert files(root, "pending") == []
        assert await read_back(store, keep.id) == build_tar(shared)
        assert (await store.verify(read_data=True)).ok
        stats = await store.stats()
        assert stats.extra["unreferenced_chunks"] == 0
    finally:
        await store.close()


async def test_gc_repacks_mostly_garbage_packs(root: Path) -> None:
    store = new_store(root, pack_size=10 << 20, chunker=SMALL)
    try:
        small = build_tar(text_files(3, 30_000, seed=5))
        big = build_tar(random_files(1, 1_500_000, seed=6))
        # One save puts both in the same packs; deleting it leaves a bit referenced.
        both = await save(store, small[:-1024] + big[512:])
        packs_before = {p.name for p in files(root, "packs")}
        keep = await save(store, small)
        await store.delete(both.id)
        await store.gc(grace=0)
        packs_after = {p.name for p in files(root, "packs")}
        assert packs_after.isdisjoint(packs_before)  # the old pack was repacked away
        assert stored_bytes(root) < 500_000
        assert await read_back(store, keep.id) == small
    finally:
        await store.close()


async def test_repack_is_skipped_when_turned_off(root: Path) -> None:
    store = new_store(root, chunker=SMALL, repack_threshold=None)
    try:
        small = build_tar(text_files(3, 30_000, seed=5))
        both = await save(store, small[:-1024] + build_tar(random_files(1, 900_000))[512:])
        keep = await save(store, small)
        await store.delete(both.id)
        before = {p.name for p in files(root, "packs")}
        await store.gc(grace=0)
        assert {p.name for p in files(root, "packs")} == before
        assert await read_back(store, keep.id) == small
    finally:
        await store.close()


async def _churn(root: Path, rounds: int, seed: int) -> list[str]:
    """Saves (each through its own store, like separate processes) of data that
    shares most chunks with earlier, deleted snapshots; returns the ids kept."""
    store = new_store(root, pack_size=128 * 1024, chunker=SMALL)
    rng = random.Random(seed)
    kept = []
    try:
        for n in range(rounds):
            base = text_files(6, 20_000, seed=rng.randrange(3))
            info = await save(store, build_tar(base | text_files(1, 5_000, seed=seed * 100 + n)))
            if rng.random() < 0.5:
                await store.delete(info.id)
            else:
                kept.append(info.id)
    finally:
        await store.close()
    return kept


async def test_gc_grace_zero_beside_saves_commits_no_broken_snapshot(root: Path) -> None:
    await _churn(root, 4, seed=1)  # garbage to collect from the start
    gc_store = new_store(root, pack_size=128 * 1024, chunker=SMALL)
    stop = asyncio.Event()
    runs = 0

    async def collect() -> None:
        nonlocal runs
        while not stop.is_set():
            await gc_store.gc(grace=0)
            runs += 1

    collector = asyncio.create_task(collect())
    try:
        kept = await asyncio.gather(*(_churn(root, 6, seed=s) for s in (2, 3, 4)))
    finally:
        stop.set()
        await collector
    assert runs >= 2
    try:
        await gc_store.gc(grace=0)
        report = await gc_store.verify(read_data=True)
        assert report.ok, report.problems
        assert {i.id for i in await gc_store.list()} >= {i for ids in kept for i in ids}
    finally:
        await gc_store.close()


async def test_repacking_gc_beside_saves_loses_no_chunk(root: Path) -> None:
    await _churn(root, 6, seed=5)
    gc_store = new_store(root, pack_size=128 * 1024, chunker=SMALL, repack_threshold=0.1)
    stop = asyncio.Event()
    seen_packs: set[str] = set()

    async def collect() -> None:
        while not stop.is_set():
            seen_packs.update(p.name for p in files(root, "packs"))
            await gc_store.gc(grace=0)

    collector = asyncio.create_task(collect())
    try:
        await asyncio.gather(*(_churn(root, 5, seed=s) for s in (6, 7)))
    finally:
        stop.set()
        await collector
    try:
        await gc_store.gc(grace=0)
        assert (await gc_store.verify(read_data=True)).ok
        assert seen_packs - {p.name for p in files(root, "packs")}  # gc did drop packs
    finally:
        await gc_store.close()


class _HookedObjects(LocalObjectStore):
    """A local store that calls ``hook(event, key)`` at two points of its own I/O: a
    put's temporary file written ("written"), a listing begun ("list"). How a test
    puts a gc run at an exact point of a save, without sleeping."""

    def __init__(self, root: Path, hook: Callable[[str, str], None]) -> None:
        super().__init__(root, fsync=False)
        self._hook = hook

    def _write_temp(self, path: Path, data: bytes | memoryview, key: str, op: str) -> Path:
        tmp = super()._write_temp(path, data, key, op)
        self._hook("written", key)
        return tmp

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._hook("list", prefix)
        yield from super().list(prefix)


def _gc_now(gc_store: ChunkedStore, loop: asyncio.AbstractEventLoop) -> None:
    """Run a whole ``gc(grace=0)`` from a store's worker thread, while the save waits."""
    asyncio.run_coroutine_threadsafe(gc_store.gc(grace=0), loop).result()


async def test_gc_grace_zero_leaves_a_write_in_progress_alone(root: Path) -> None:
    """A save's first write, its lease, happens while no lease is live: gc(grace=0)
    run at that moment once swept the lease's temporary file and the save failed
    ("put 'leases/…' failed: No such file or directory")."""
    data = build_tar(text_files(2, 1_000))
    gc_store = new_store(root)
    loop = asyncio.get_running_loop()
    ran: list[str] = []

    def gc_before_the_lease_is_published(event: str, key: str) -> None:
        if event == "written" and key.startswith(LEASES) and not ran:
            ran.append(key)
            _gc_now(gc_store, loop)

    store = ChunkedStore(_HookedObjects(root, gc_before_the_lease_is_published))
    try:
        info = await save(store, data)
        assert ran
        assert await read_back(store, info.id) == data
    finally:
        await store.close()
        await gc_store.close()


async def _a_marked_pack_of(root: Path, data: bytes) -> ChunkedStore:
    """A store in ``root`` whose only pack holds ``data``'s chunks, unreferenced and
    marked by gc for a writer that has ended since (the next gc drops it); the
    store, for running that gc."""
    gc_store = new_store(root, chunker=SMALL)
    gone = await save(gc_store, data)
    await gc_store.delete(gone.id)
    with Lease(gc_store.objects, "save"):  # a writer gc waits for: the pack stays marked
        await gc_store.gc(grace=0)
    assert files(root, "pending")
    return gc_store


def _gc_between_the_two_reads(
    gc_store: ChunkedStore, loop: asyncio.AbstractEventLoop, reads: list[str]
) -> Callable[[str, str], None]:
    """A hook that runs gc once a writer holding its lease has begun both of its reads
    of gc's state (``pending/`` and ``packindex/``), just before the second one."""
    leased = threading.Event()

    def hook(event: str, key: str) -> None:
        if event == "written" and key.startswith(LEASES):
            leased.set()
        elif event == "list" and key in (PENDING, PACK_INDEX) and leased.is_set():
            reads.append(key)
            if len(reads) == 2:
                _gc_now(gc_store, loop)  # the mark's writers are gone: the pack is dropped

    return hook


async def test_a_pack_dropped_as_a_save_starts_is_not_reused(root: Path) -> None:
    """gc drops a marked pack between a starting save's two reads (the chunk index
    and gc's marks): the save must not rely on the pack, whichever read came first.
    It once did (index first, then marks: the pack was in the index, and its mark
    already gone with it), and committed a snapshot whose chunks were deleted."""
    data = build_tar(text_files(4, 20_000, seed=21))
    gc_store = await _a_marked_pack_of(root, data)
    reads: list[str] = []
    hook = _gc_between_the_two_reads(gc_store, asyncio.get_running_loop(), reads)
    store = ChunkedStore(_HookedObjects(root, hook), chunker=SMALL)
    try:
        info = await save(store, data)
        assert sorted(reads[:2]) == sorted([PENDING, PACK_INDEX])
        assert not files(root, "pending")
        assert (await store.verify(read_data=True)).ok
        assert await read_back(store, info.id) == data
    finally:
        await store.close()
        await gc_store.close()


async def test_a_pack_dropped_as_a_copy_starts_is_not_reused(tmp_path: Path) -> None:
    """As for a save, for ``copy_from``: the other writer that deduplicates against
    the target's packs."""
    data = build_tar(text_files(4, 20_000, seed=22))
    source = new_store(tmp_path / "source", chunker=SMALL)
    root = tmp_path / "target"
    gc_store = await _a_marked_pack_of(root, data)
    reads: list[str] = []
    hook = _gc_between_the_two_reads(gc_store, asyncio.get_running_loop(), reads)
    target = ChunkedStore(_HookedObjects(root, hook), chunker=SMALL)
    try:
        info = await save(source, data)
        await target.copy_from(source, info.id)
        assert sorted(reads[:2]) == sorted([PENDING, PACK_INDEX])
        assert not files(root, "pending")
        assert (await target.verify(read_data=True)).ok
        assert await read_back(target, info.id) == data
    finally:
        await target.close()
        await source.close()
        await gc_store.close()


async def test_a_dead_gc_on_this_host_does_not_block_the_next(
    store: ChunkedStore, root: Path
) -> None:
    await save(store, build_tar(text_files(2, 1_000)))
    lease = GcLease(owner=f"{socket.gethostname()}:{_dead_pid()}:x", started_at=0.0)
    (root / "locks").mkdir(exist_ok=True)
    (root / "locks" / "gc").write_bytes(msgspec.json.encode(lease))
    await store.gc(grace=0)  # would raise "another gc is running" if it waited


async def test_a_tar_index_about_to_be_committed_survives_gc_grace_zero(
    store: ChunkedStore, root: Path
) -> None:
    """A save writes indexes/<id> just before its manifest; gc must not take it for
    an orphan while the save's lease is live."""
    await save(store, build_tar(text_files(2, 1_000)))
    pending_id = new_snapshot_id()
    with Lease(store.objects, "save"):
        store.objects.put(f"indexes/{pending_id}", b"not yet committed")
        await store.gc(grace=0)
        assert (root / "indexes" / pending_id).exists()
    await store.gc(grace=0)  # the writer is gone: now it is an orphan
    assert not (root / "indexes" / pending_id).exists()


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


# --- version 1 ------------------------------------------------------------------------


async def test_a_version_1_store_is_read_byte_identically_and_upgraded_on_write(
    root: Path,
) -> None:
    """A store written by the previous release's rules (the version-1 writer, kept
    as format_version=1) restores byte for byte, then takes version-2 snapshots
    beside its version-1 ones."""
    old_data = build_tar(text_files(30, 20_000) | random_files(2, 300_000))
    old = new_store(root, format_version=1)
    v1 = await save(old, old_data)
    await old.close()
    assert files(root, "chunks")
    assert not (root / "packs").exists()

    store = new_store(root)
    try:
        assert [i.id for i in await store.list()] == [v1.id]
        assert await read_back(store, v1.id) == old_data
        assert (await store.verify(read_data=True)).ok
        assert [e.path for e in await store.index(v1.id)]
        new_data = old_data + b"\0" * 0  # the same stream: v2 keeps its own chunks
        v2 = await save(store, new_data)
        config = msgspec.json.decode((root / "config").read_bytes())
        assert config["version"] == 2
        await store.gc(grace=0)
        assert await read_back(store, v1.id) == old_data
        assert await read_back(store, v2.id) == new_data
        assert (await store.verify(read_data=True)).ok
    finally:
        await store.close()
    # The version-1 writer now refuses the store instead of writing v1 into v2.
    again = new_store(root, format_version=1)
    try:
        with pytest.raises(StoreFormatError, match="version 2"):
            await save(again, old_data)
        assert await read_back(again, v1.id) == old_data  # reading is fine
    finally:
        await again.close()


# --- memory ---------------------------------------------------------------------------

_MEMBERS_CHILD = """
import asyncio, sys, time
from pathlib import Path
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore

def peak() -> int:
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's (pytest's) peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")

def header_template() -> bytearray:
    h = bytearray(512)
    h[0:9] = b"d/0000000"
    h[100:108] = b"0000644\\0"; h[108:116] = b"0000000\\0"; h[116:124] = b"0000000\\0"
    h[124:136] = b"00000000000\\0"; h[136:148] = b"14000000000\\0"
    h[156:157] = b"0"; h[257:263] = b"ustar\\0"; h[263:265] = b"00"
    return h

async def members(count: int):
    t = header_template()
    base = sum(t) + 8 * 32 - sum(t[2:9])
    block = bytearray()
    for n in range(count):
        digits = b"%07d" % n
        t[2:9] = digits
        t[148:156] = b"%06o\\0 " % (base + sum(digits))
        block += t
        if len(block) >= 1 << 20:
            yield bytes(block); block.clear()
    yield bytes(block) + bytes(1024)

async def main() -> None:
    count = int(sys.argv[2])
    store = ChunkedStore(LocalObjectStore(Path(sys.argv[1]), fsync=False))
    record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/data")
    before = peak()
    t = time.perf_counter()
    info = await store.save(record, members(count), source=SnapshotSource("m", "i"))
    assert info.size == count * 512 + 1024, info.size
    ref = (await store.index(info.id))[-1] if count <= 10_000 else None
    assert ref is None or ref.path == "d/%07d" % (count - 1)
    print(before, peak(), round(time.perf_counter() - t, 1))
    await store.close()

asyncio.run(main())
"""


def _save_members(tmp_path: Path, count: int) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{PROJECT}"}
    out = subprocess.run(
        [sys.executable, "-c", _MEMBERS_CHILD, str(tmp_path / "store"), str(count)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT,
    ).stdout
    before, after, _ = out.split()
    return int(before), int(after)


def test_the_tar_index_of_a_save_is_spooled_and_read_back(tmp_path: Path) -> None:
    _save_members(tmp_path, 5_000)  # the child checks the size and the last entry


@pytest.mark.slow
def test_a_million_empty_members_save_in_under_150_mib(tmp_path: Path) -> None:
    """Issue 10, defect 10: memory must not grow per tar member (was ~0.4 KiB each)."""
    _, peak = _save_members(tmp_path, 1_000_000)
    assert peak < 150 << 20, f"peak RSS {peak >> 20} MiB"

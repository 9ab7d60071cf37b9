"""The progress hook: plain events, one STARTED and one ending per operation."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import docksnap
from docksnap import Operation, Phase, ProgressEvent
from docksnap.service import progress as progress_module
from docksnap.service.progress import track
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from tests.conformance.streams import build_tar, random_files


async def pieces(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChunkedStore]:
    store = ChunkedStore(LocalObjectStore(tmp_path / "store", fsync=False))
    yield store
    await store.close()


def ops(events: list[ProgressEvent]) -> list[tuple[Operation, Phase]]:
    return [(e.operation, e.phase) for e in events if e.phase is not Phase.ADVANCED]


async def test_import_export_verify_gc_copy_report_around_their_work(
    store: ChunkedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "MIN_INTERVAL", 0.0)  # every piece reported
    events: list[ProgressEvent] = []
    catalogue = docksnap.Catalogue(store, progress=events.append)
    tar = build_tar(random_files(2, 50_000))

    snap = await catalogue.import_tar(pieces(tar), dir="/d", size=len(tar))
    imported = [e for e in events if e.operation is Operation.IMPORT]
    assert {e.snapshot_id for e in imported} == {snap.id}
    assert imported[-1].phase is Phase.FINISHED
    assert imported[-1].bytes_done == len(tar) == imported[-1].bytes_total
    done = [e.bytes_done for e in imported]
    assert done == sorted(done)  # bytes so far only grow

    async with catalogue.export(snap.id) as reader:
        # Imports are stored re-encoded: the export is the canonical archive.
        assert len(b"".join([piece async for piece in reader])) == snap.size
    report = await catalogue.verify()
    await catalogue.gc(grace=0)
    other = ChunkedStore(LocalObjectStore(tmp_path / "other", fsync=False))
    try:
        await catalogue.copy(snap.id, to=other)
    finally:
        await other.close()

    assert ops(events) == [
        (Operation.IMPORT, Phase.STARTED),
        (Operation.IMPORT, Phase.FINISHED),
        (Operation.EXPORT, Phase.STARTED),
        (Operation.EXPORT, Phase.FINISHED),
        (Operation.VERIFY, Phase.STARTED),
        (Operation.VERIFY, Phase.FINISHED),
        (Operation.GC, Phase.STARTED),
        (Operation.GC, Phase.FINISHED),
        (Operation.COPY, Phase.STARTED),
        (Operation.COPY, Phase.FINISHED),
    ]
    exported = [e for e in events if e.operation is Operation.EXPORT]
    assert exported[-1].bytes_done == snap.size
    verified = [e for e in events if e.operation is Operation.VERIFY]
    assert verified[-1].bytes_done == report.bytes_checked
    assert verified[-1].snapshot_id is None
    # One task number per operation, shared by all its events.
    assert len({e.task for e in events}) == 5


async def test_a_failed_operation_ends_with_failed(store: ChunkedStore) -> None:
    events: list[ProgressEvent] = []
    catalogue = docksnap.Catalogue(store, progress=events.append)
    with pytest.raises(docksnap.UnsafeArchiveError):
        await catalogue.import_tar(pieces(build_tar({"../evil": b"x"})), dir="/d")
    assert ops(events) == [(Operation.IMPORT, Phase.STARTED), (Operation.IMPORT, Phase.FAILED)]


async def test_a_failing_hook_cannot_break_an_operation(
    store: ChunkedStore, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("observer bug")

    catalogue = docksnap.Catalogue(store, progress=broken)
    snap = await catalogue.import_tar(pieces(build_tar({"f": b"x"})), dir="/d")
    assert (await catalogue.get(snap.id)).id == snap.id
    assert "progress hook failed" in caplog.text


async def test_without_a_hook_streams_are_not_wrapped() -> None:
    chunks = pieces(b"abc")
    with track(None, Operation.SNAPSHOT, None) as tracker:
        assert tracker.stream(chunks) is chunks


def test_events_are_plain_frozen_values() -> None:
    event = ProgressEvent(1, Operation.RESTORE, Phase.ADVANCED, None, 10, 20)
    with pytest.raises(AttributeError):
        event.bytes_done = 11  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(event)) == event  # noqa: S301 -- our own bytes
    assert str(event.operation) == "restore"

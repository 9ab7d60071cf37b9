"""Copying a snapshot from one store to another, verified on the way.

Between two chunked stores (e.g. a laptop's local store and a team's bucket)
only the chunks the target lacks are transferred, each checked against its
hash, and the manifest is written last (:mod:`docksnap.store.chunked.transfer`).
Between any other pair the snapshot's tar stream is read back, verified, and
saved anew. Either way the snapshot appears on the target complete or not at
all, under the same id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from docksnap.errors import InvalidArgumentError, SnapshotNotFoundError, StoreError
from docksnap.store.base import SnapshotInfo, SnapshotSource, SnapshotStore


@dataclass(frozen=True, slots=True)
class CopyReport:
    """The copied snapshot's record on the target, and what travelled.

    ``chunks_copied``/``bytes_copied`` count stored objects written to the target
    (for a streamed copy: none counted, ``bytes_copied`` is the stream's size);
    ``chunks_present`` counts chunks the target already had.
    """

    snapshot: SnapshotInfo
    chunks_copied: int = 0
    bytes_copied: int = 0
    chunks_present: int = 0
    streamed: bool = False


async def copy_snapshot(
    source: SnapshotStore, target: SnapshotStore, snapshot_id: str
) -> CopyReport:
    """Copy ``snapshot_id`` from ``source`` to ``target``; idempotent.

    Atomic on the target: it shows the complete snapshot or nothing (a failure
    leaves at most orphan data for the target's gc). Copying a snapshot the
    target already holds changes nothing. Raises SnapshotNotFoundError,
    SnapshotCorruptError (a source object fails verification: nothing is
    committed), and StoreError/StoreUnavailableError from either store;
    retrying after a transient failure is safe.
    """
    if source.url == target.url:
        raise InvalidArgumentError(f"source and target are the same store: {source.url}")
    # Imported here, as in open_store: importing docksnap.store loads no backend.
    from docksnap.store.chunked import ChunkedStore
    from docksnap.store.chunked.transfer import ChunkCopier

    if isinstance(source, ChunkedStore) and isinstance(target, ChunkedStore):
        stats = await asyncio.to_thread(ChunkCopier(source, target, snapshot_id).run)
        return CopyReport(
            snapshot=await target.get(snapshot_id),
            chunks_copied=stats.chunks_copied,
            bytes_copied=stats.bytes_copied,
            chunks_present=stats.chunks_present,
        )
    return await _stream_copy(source, target, snapshot_id)


async def _stream_copy(
    source: SnapshotStore, target: SnapshotStore, snapshot_id: str
) -> CopyReport:
    """Read the verified stream back and save it: a store reading damaged data raises
    mid-stream, and a save whose stream raises commits nothing."""
    info = await source.get(snapshot_id)
    existing = await _existing(target, info)
    if existing is not None:
        return CopyReport(snapshot=existing, streamed=True)
    origin = info.source or SnapshotSource(container="", image="")
    async with source.open(snapshot_id) as reader:
        saved = await target.save(info.snapshot, reader.__aiter__(), source=origin, ttl=info.ttl)
    return CopyReport(snapshot=saved, bytes_copied=saved.size, streamed=True)


async def _existing(target: SnapshotStore, info: SnapshotInfo) -> SnapshotInfo | None:
    """The target's record of the same snapshot, if it has one (then nothing to do)."""
    try:
        held = await target.get(info.id)
    except SnapshotNotFoundError:
        return None
    if (
        held.snapshot.digest
        and info.snapshot.digest
        and held.snapshot.digest != info.snapshot.digest
    ):
        raise StoreError(
            target.url, f"snapshot {info.id} already exists here with different content"
        )
    return held

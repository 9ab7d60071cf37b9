"""Copying a snapshot from one store to another, verified on the way.

The target decides how (:meth:`~docksnap.store.base.SnapshotStore.copy_from`):
between two chunked stores (e.g. a laptop's local store and a team's bucket)
only the chunks the target lacks are transferred, each checked against its
hash, and the manifest is written last (:mod:`docksnap.store.chunked.transfer`).
Every other pair uses :func:`stream_copy`: the snapshot's tar stream is read
back, verified, and saved anew. Either way the snapshot appears on the target
complete or not at all, under the same id.
"""

from __future__ import annotations

from docksnap.errors import InvalidArgumentError, SnapshotNotFoundError, StoreError
from docksnap.store.base import CopyReport, SnapshotInfo, SnapshotSource, SnapshotStore

__all__ = ["CopyReport", "copy_snapshot", "stream_copy"]


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
    return await target.copy_from(source, snapshot_id)


async def stream_copy(source: SnapshotStore, target: SnapshotStore, snapshot_id: str) -> CopyReport:
    """The copy any pair of stores can do: read the verified stream back and save it.

    A store reading damaged data raises mid-stream, and a save whose stream raises
    commits nothing. Idempotent (a target already holding the snapshot is left as
    it is); StoreError if it holds a different one under that id.
    """
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

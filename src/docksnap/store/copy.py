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

import blake3

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
    it is, even under a digest of another kind); StoreError if it holds a
    different one under that id.
    """
    info = await source.get(snapshot_id)
    existing = await _existing(source, target, info)
    if existing is not None:
        return CopyReport(snapshot=existing, streamed=True)
    origin = info.source or SnapshotSource(container="", image="")
    async with source.open(snapshot_id) as reader:
        saved = await target.save(info.snapshot, reader.__aiter__(), source=origin, ttl=info.ttl)
    return CopyReport(snapshot=saved, bytes_copied=saved.size, streamed=True)


async def _existing(
    source: SnapshotStore, target: SnapshotStore, info: SnapshotInfo
) -> SnapshotInfo | None:
    """The target's record of the same snapshot, if it has one (then nothing to do).

    Equal digests prove equal content. Unequal ones do not prove a difference: a
    per-file snapshot's digest is over its chunk list, while a version-1 store
    records the stream's BLAKE3 (docs/FORMAT.md §11.11), so a copy of one into
    the other holds the same bytes under another digest. The streams are then
    compared (read, never written) before refusing.
    """
    try:
        held = await target.get(info.id)
    except SnapshotNotFoundError:
        return None
    theirs, ours = held.snapshot.digest, info.snapshot.digest
    if theirs and ours and theirs != ours and not await _same_stream(source, target, info.id):
        raise StoreError(
            target.url, f"snapshot {info.id} already exists here with different content"
        )
    return held


async def _same_stream(source: SnapshotStore, target: SnapshotStore, snapshot_id: str) -> bool:
    """Whether both stores give the same tar stream for ``snapshot_id`` (each verified
    as read; memory bounded: only a running hash of each is kept)."""
    if (await source.get(snapshot_id)).size != (await target.get(snapshot_id)).size:
        return False
    return await _stream_hash(source, snapshot_id) == await _stream_hash(target, snapshot_id)


async def _stream_hash(store: SnapshotStore, snapshot_id: str) -> bytes:
    digest = blake3.blake3()
    async with store.open(snapshot_id) as reader:
        async for piece in reader:
            digest.update(piece)
    return digest.digest()

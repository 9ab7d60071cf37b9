"""The seed's store: one Docker volume per snapshot (workerd #6337's local design).

Layout, per snapshot id:

* ``docksnap-snap-<id>`` holds the directory's contents, without a wrapper
  directory, labelled with docksnap's labels and its creation time. It is
  written and read through a helper container that is never started.
* ``docksnap-snap-<id>-meta`` is an empty volume whose labels hold the record
  (size, dir, name, source). It is created last and is the commit point: Docker
  creates a volume atomically, so a snapshot is visible exactly when its meta
  volume exists. The seed has no such marker, so a crash mid-copy leaves a
  half-filled volume that looks complete; here it stays invisible and
  :meth:`VolumeStore.gc` removes it.

Volume labels cannot change after creation, so this store keeps no last-use
time: a TTL counts from creation. Verification can only check that both
volumes exist; use the content-addressed store for data you must trust.

The store speaks to Docker only through :class:`VolumeEngine`, which the service
layer wires in (``docksnap.docker.HelperVolumes``): nothing here imports the
Docker client. Helper containers are made from the store's ``helper_image`` when
one was given, else from each snapshot's source image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from docksnap import labels as lbl
from docksnap.errors import DockerError, InvalidArgumentError, SnapshotNotFoundError, StoreError
from docksnap.model import DirectorySnapshot, is_snapshot_id
from docksnap.store.base import (
    CopyReport,
    GcReport,
    Problem,
    SnapshotInfo,
    SnapshotSource,
    SnapshotStore,
    StoreStats,
    TarReader,
    VerifyReport,
)
from docksnap.store.copy import stream_copy
from docksnap.tarstream import TarEntry, TarIndexer

log = logging.getLogger(__name__)

VOLUME_PREFIX = "docksnap-snap-"
STALE_AGE = 30 * 24 * 3600
_SIZE = lbl.PREFIX + "size"
_DIR = lbl.PREFIX + "dir"
_NAME = lbl.PREFIX + "name"
_SOURCE_CONTAINER = lbl.PREFIX + "source-container"
_SOURCE_IMAGE = lbl.PREFIX + "source-image"
_TTL = lbl.PREFIX + "ttl"
_META = lbl.PREFIX + "meta"

_stale_check_done = False


def data_volume(snapshot_id: str) -> str:
    return f"{VOLUME_PREFIX}{snapshot_id}"


def meta_volume(snapshot_id: str) -> str:
    return f"{VOLUME_PREFIX}{snapshot_id}-meta"


@dataclass(frozen=True, slots=True)
class _VolumeReader:
    size: int | None  # Docker re-tars the volume: its length is not known in advance
    chunks: AsyncIterator[bytes]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks


class VolumeEngine(Protocol):
    """What the volume store needs from a Docker engine.

    Errors are :class:`~docksnap.errors.DockerError` (with the engine's status) and
    :class:`~docksnap.errors.DockerUnavailableError`. Volume calls are those of the
    Engine API: creating is atomic, removing a missing volume succeeds.
    """

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None: ...

    async def inspect_volume(self, name: str) -> dict[str, Any] | None: ...

    async def list_volumes(self, labels: Mapping[str, str]) -> list[dict[str, Any]]: ...

    async def remove_volume(self, name: str) -> None: ...

    async def fill_volume(
        self, volume: str, tar: AsyncIterable[bytes], *, image: str, labels: Mapping[str, str]
    ) -> None:
        """Extract ``tar`` into ``volume`` through a never-started helper from ``image``.

        Not atomic: the caller removes the volume when this raises.
        """
        ...

    def read_volume(
        self, volume: str, *, image: str, labels: Mapping[str, str]
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """The volume's contents as a tar stream, through a never-started helper."""
        ...


class VolumeStore:
    """Snapshots as Docker volumes on one engine (``docker-volume:``).

    ``helper_image`` is the image helper containers are made from; ``None`` uses
    each snapshot's source image (saving a snapshot without one is refused).

    ``extra_labels`` (the client's ``labels``) go on every volume saved, and scope
    what the store enumerates: :meth:`list` (so expiry and pruning), :meth:`stats`,
    :meth:`verify` of every snapshot and :meth:`gc` see only volumes carrying
    them, so two clients with their own labels on one engine are two stores (as
    the restore cache and ``reap_orphans`` scope by them). Without labels the store
    is every snapshot on the engine. An id names one snapshot on the whole engine,
    whoever saved it: :meth:`get`, :meth:`open` and :meth:`delete` are not scoped,
    as an id in a shared chunked store is not.
    """

    def __init__(
        self,
        engine: VolumeEngine,
        *,
        helper_image: str | None = None,
        extra_labels: Mapping[str, str] | None = None,
    ) -> None:
        if helper_image is not None and (not isinstance(helper_image, str) or not helper_image):
            raise InvalidArgumentError(
                f"helper_image must be a non-empty image name, got {helper_image!r}"
            )
        self._docker = engine
        self._helper_image = helper_image
        self._extra = dict(extra_labels or {})

    @property
    def url(self) -> str:
        return "docker-volume:"

    async def save(
        self,
        snapshot: DirectorySnapshot,
        tar: AsyncIterator[bytes],
        *,
        source: SnapshotSource,
        ttl: float | None = None,
    ) -> SnapshotInfo:
        image = self._image_for(source)
        await self._warn_about_stale_volumes_once()
        created_at = float(int(time.time()))  # labels keep whole seconds, as the seed does
        data = data_volume(snapshot.id)
        if await self._docker.inspect_volume(data) is not None:
            raise StoreError(self.url, f"snapshot {snapshot.id} already exists")
        try:
            # Inside the try: an engine that creates the volume but whose answer is
            # lost must not leave it behind either (removal is idempotent).
            await self._docker.create_volume(data, self._labels(snapshot.id, created_at))
            size = await self._fill(data, image, tar)
            record = DirectorySnapshot(
                id=snapshot.id,
                size=size,
                dir=snapshot.dir,
                name=snapshot.name,
                created_at=created_at,
            )
            await self._docker.create_volume(
                meta_volume(snapshot.id), self._meta_labels(record, source, ttl)
            )
        except BaseException:
            # Roll back, meta first: a meta volume whose creation answer was lost
            # would show a snapshot without data; the data volume without its meta
            # is invisible anyway, but leaving it would leak disk until the next gc.
            await asyncio.shield(self._remove_quietly(meta_volume(snapshot.id)))
            await asyncio.shield(self._remove_quietly(data))
            raise
        return SnapshotInfo(record, created_at, created_at, source, ttl)

    def _image_for(self, source: SnapshotSource | None) -> str:
        image = self._helper_image or (source.image if source else "")
        if not image:
            raise InvalidArgumentError(
                "the docker-volume: store needs an image for its helper containers: "
                "record the snapshot's source image (docksnap import --image IMAGE) "
                "or give the client a helper_image"
            )
        return image

    async def _fill(self, volume: str, image: str, tar: AsyncIterator[bytes]) -> int:
        counted = _Counter(tar)
        labels = lbl.make_labels(lbl.Role.HELPER, self._extra)
        await self._docker.fill_volume(volume, counted, image=image, labels=labels)
        return counted.total

    @contextlib.asynccontextmanager
    async def open(self, snapshot_id: str) -> AsyncIterator[TarReader]:
        info = await self.get(snapshot_id)
        labels = lbl.make_labels(lbl.Role.HELPER, self._extra)
        image = self._image_for(info.source)
        async with self._docker.read_volume(
            data_volume(snapshot_id), image=image, labels=labels
        ) as chunks:
            yield _VolumeReader(None, chunks)

    async def index(self, snapshot_id: str) -> list[TarEntry]:
        """Read the whole stream through the header reader: volumes keep no index."""
        indexer = TarIndexer()
        async with self.open(snapshot_id) as reader:
            async for piece in reader:
                indexer.feed(piece)
        return indexer.finish()

    async def get(self, snapshot_id: str) -> SnapshotInfo:
        if not is_snapshot_id(snapshot_id):
            raise SnapshotNotFoundError(snapshot_id, self.url)
        meta = await self._docker.inspect_volume(meta_volume(snapshot_id))
        if meta is None:
            raise SnapshotNotFoundError(snapshot_id, self.url)
        return _info_from_labels(meta.get("Labels") or {})

    async def list(self) -> list[SnapshotInfo]:
        metas = await self._docker.list_volumes({**self._scope(), _META: "true"})
        return [_info_from_labels(v.get("Labels") or {}) for v in metas]

    async def delete(self, snapshot_id: str) -> None:
        await self.get(snapshot_id)
        # Meta first: the snapshot disappears atomically, then its data goes.
        await self._docker.remove_volume(meta_volume(snapshot_id))
        await self._docker.remove_volume(data_volume(snapshot_id))

    async def touch(self, snapshot_id: str, when: float) -> None:
        """Record nothing: volume labels are immutable, so a TTL here counts from creation."""
        await self.get(snapshot_id)

    async def verify(
        self,
        snapshot_id: str | None = None,
        *,
        read_data: bool = True,
        repair: bool = False,
        sources: Sequence[SnapshotStore] = (),
    ) -> VerifyReport:
        """Check that each snapshot's data volume exists. Nothing here can be
        repaired (a volume holds the only copy): ``repair`` reports the problems."""
        infos = [await self.get(snapshot_id)] if snapshot_id else await self.list()
        problems = [
            Problem(info.id, data_volume(info.id), "data volume is missing")
            for info in infos
            if await self._docker.inspect_volume(data_volume(info.id)) is None
        ]
        return VerifyReport(len(infos), len(infos), 0, tuple(problems))

    async def gc(self, *, grace: float) -> GcReport:
        """Remove data volumes whose meta volume never appeared and that are older than grace."""
        committed = {info.id for info in await self.list()}
        cutoff = time.time() - grace
        deleted = kept = 0
        # Scoped: another client's data volume may be mid-save, its meta still to come.
        scope = {**self._scope(), lbl.ROLE: str(lbl.Role.SNAPSHOT)}
        for volume in await self._docker.list_volumes(scope):
            labels = volume.get("Labels") or {}
            snapshot_id = labels.get(lbl.SNAPSHOT_ID, "")
            if labels.get(_META) == "true" or snapshot_id in committed:
                continue
            if _created_at(labels) > cutoff:
                kept += 1
                continue
            with contextlib.suppress(DockerError):  # in use by a writer's helper: next time
                await self._docker.remove_volume(volume["Name"])
                deleted += 1
        return GcReport(deleted, 0, kept)

    async def stats(self) -> StoreStats:
        infos = await self.list()
        total = sum(info.size for info in infos)
        return StoreStats(snapshots=len(infos), logical_bytes=total, stored_bytes=total)

    async def copy_from(self, source: SnapshotStore, snapshot_id: str) -> CopyReport:
        """Copy by saving the source's verified stream: volumes have no faster way in."""
        return await stream_copy(source, self, snapshot_id)

    async def close(self) -> None:
        """Nothing to release: the engine belongs to the caller."""

    # -- internals ----------------------------------------------------------------

    def _scope(self) -> dict[str, str]:
        """The labels of every volume this store enumerates."""
        return {**self._extra, lbl.MANAGED: "true"}

    def _labels(self, snapshot_id: str, created_at: float) -> dict[str, str]:
        return lbl.make_labels(
            lbl.Role.SNAPSHOT,
            self._extra,
            {lbl.SNAPSHOT_ID: snapshot_id, lbl.CREATED_AT: str(int(created_at))},
        )

    def _meta_labels(
        self, record: DirectorySnapshot, source: SnapshotSource, ttl: float | None
    ) -> dict[str, str]:
        labels = self._labels(record.id, record.created_at or time.time())
        labels.update(
            {
                _META: "true",
                _SIZE: str(record.size),
                _DIR: record.dir,
                _SOURCE_CONTAINER: source.container,
                _SOURCE_IMAGE: source.image,
            }
        )
        if record.name is not None:
            labels[_NAME] = record.name
        if ttl is not None:
            labels[_TTL] = repr(float(ttl))
        return labels

    async def _remove_quietly(self, volume: str) -> None:
        with contextlib.suppress(DockerError):
            await self._docker.remove_volume(volume)

    async def _warn_about_stale_volumes_once(self) -> None:
        """Once per process, log (never delete) snapshot volumes 30 or more days old."""
        global _stale_check_done
        if _stale_check_done:
            return
        _stale_check_done = True
        try:
            stale = [
                volume["Name"]
                for volume in await self._docker.list_volumes({_META: "true"})
                if time.time() - _created_at(volume.get("Labels") or {}) >= STALE_AGE
            ]
        except DockerError as exc:
            log.warning("failed to inspect snapshot volumes for staleness: %s", exc)
            return
        if stale:
            log.warning(
                "the following snapshot volumes were created 30+ days ago and may be stale: %s",
                ", ".join(sorted(stale)),
            )


class _Counter:
    """Passes a byte stream through and counts it."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.total = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        async for piece in self._chunks:
            self.total += len(piece)
            yield piece


def _created_at(labels: dict[str, str]) -> float:
    try:
        return float(labels.get(lbl.CREATED_AT, ""))
    except ValueError:
        return float("inf")  # unparseable: treat as new, never delete or warn


def _info_from_labels(labels: dict[str, str]) -> SnapshotInfo:
    created_at = _created_at(labels)
    record = DirectorySnapshot(
        id=labels[lbl.SNAPSHOT_ID],
        size=int(labels[_SIZE]),
        dir=labels[_DIR],
        name=labels.get(_NAME),
        created_at=created_at,
    )
    source = SnapshotSource(labels.get(_SOURCE_CONTAINER, ""), labels.get(_SOURCE_IMAGE, ""))
    ttl = float(labels[_TTL]) if _TTL in labels else None
    return SnapshotInfo(record, created_at, created_at, source, ttl)

"""The snapshot catalogue: list, look up, delete, verify, collect, and retention.

Filtering, ordering and retention live here, once, over any store; the stores
only keep records and bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from itertools import groupby

from docksnap.errors import AmbiguousSnapshotError, InvalidArgumentError, SnapshotNotFoundError
from docksnap.model import DirectorySnapshot, SnapshotInfo, SnapshotSource, new_snapshot_id
from docksnap.report import CaptureReport
from docksnap.service import metadata, options
from docksnap.service.archive import SnapshotDiff, checked_tar, diff_indexes
from docksnap.service.merge import MergeResult, merge_snapshots
from docksnap.service.progress import Operation, ProgressHook, Tracker, track
from docksnap.store.base import (
    GcReport,
    SnapshotStore,
    StoreStats,
    TarReader,
    VerifyReport,
)
from docksnap.store.copy import CopyReport, copy_snapshot
from docksnap.tarstream import TarEntry

DEFAULT_GC_GRACE = 3600.0
#: The shortest id prefix ``resolve`` accepts, as a guard against matching by accident.
MIN_PREFIX = 4
#: ``name:NAME`` references the newest snapshot called NAME.
NAME_REF = "name:"
_FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PREFIX = re.compile(rf"(?i)[0-9a-f-]{{{MIN_PREFIX},36}}")

# Catalogue.list shadows the builtin inside the class body.
Infos = list[SnapshotInfo]
Ids = list[str]
Entries = list[TarEntry]


class Catalogue:
    """``client.snapshots``: what the store holds, and its lifecycle.

    ``open_store`` turns a URL into a store (for :meth:`copy`); ``progress`` is
    the client's hook, called around every stream and pass (see
    :mod:`docksnap.service.progress`).
    """

    def __init__(
        self,
        store: SnapshotStore,
        *,
        open_store: Callable[[str], SnapshotStore] | None = None,
        progress: ProgressHook | None = None,
    ) -> None:
        self._store = store
        self._open_store = open_store
        self._progress = progress

    async def list(
        self, *, name: str | None = None, dir: str | None = None, container: str | None = None
    ) -> AsyncIterator[SnapshotInfo]:
        """Snapshots matching every given filter, newest first."""
        for info in await self._sorted():
            if name is not None and info.name != name:
                continue
            if dir is not None and info.dir != dir:
                continue
            if container is not None and (
                info.source is None or info.source.container != container
            ):
                continue
            yield info

    async def get(self, snapshot_id: str) -> SnapshotInfo:
        return await self._store.get(snapshot_id)

    async def resolve(self, ref: str) -> SnapshotInfo:
        """The snapshot a reference names: a full id, a unique id prefix, or ``name:NAME``.

        - a full id: that snapshot (:class:`SnapshotNotFoundError` if absent);
        - a prefix of at least 4 characters of an id: the one snapshot whose id
          starts with it; several raise :class:`AmbiguousSnapshotError`, which
          lists them;
        - ``name:NAME``: the newest snapshot called NAME; ``name:NAME~N`` the
          one N before it (``~0`` is the newest), as in git.

        Read-only. A prefix or name needs a listing of the store (one request
        per snapshot on some stores); a full id is one lookup.
        """
        if not isinstance(ref, str) or not ref:
            raise InvalidArgumentError(f"invalid snapshot reference {ref!r}")
        if ref.startswith(NAME_REF):
            return await self._by_name(ref)
        if _FULL_ID.fullmatch(ref):
            return await self._store.get(ref)
        if not _PREFIX.fullmatch(ref):
            raise InvalidArgumentError(
                f"invalid snapshot reference {ref!r}: use an id, a prefix of at least "
                f"{MIN_PREFIX} characters of one, or name:NAME"
            )
        wanted = ref.lower()
        matches = [info for info in await self._sorted() if info.id.startswith(wanted)]
        if not matches:
            raise SnapshotNotFoundError(ref)
        if len(matches) > 1:
            raise AmbiguousSnapshotError(ref, [info.id for info in matches])
        return matches[0]

    async def _by_name(self, ref: str) -> SnapshotInfo:
        name, _, back = ref[len(NAME_REF) :].partition("~")
        if not name or (back and not back.isdigit()):
            raise InvalidArgumentError(
                f"invalid snapshot reference {ref!r}: use name:NAME or name:NAME~N"
            )
        same_name = [info async for info in self.list(name=name)]
        index = int(back or 0)
        if index >= len(same_name):
            raise SnapshotNotFoundError(ref)
        return same_name[index]

    async def delete(self, snapshot_id: str) -> None:
        await self._store.delete(snapshot_id)

    async def verify(
        self,
        snapshot_id: str | None = None,
        *,
        read_data: bool = True,
        repair: bool = False,
        sources: Sequence[SnapshotStore | str] = (),
    ) -> VerifyReport:
        """Check one snapshot or all; problems are listed in the report, not raised.

        ``repair`` rewrites damaged chunks from an intact copy in this store or in
        ``sources`` (stores or store URLs, tried in order; URLs are opened here and
        closed afterwards); the report's ``problems`` are then what stays damaged
        and ``repaired`` what was fixed. A transient store fault raises
        :class:`~docksnap.errors.StoreUnavailableError`.
        """
        async with contextlib.AsyncExitStack() as stack:
            opened: list[SnapshotStore] = []
            for source in sources:
                if isinstance(source, str):
                    store = self._store_from_url(source)
                    stack.push_async_callback(store.close)
                    source = store
                opened.append(source)
            with track(self._progress, Operation.VERIFY, snapshot_id) as progress:
                report = await self._store.verify(
                    snapshot_id, read_data=read_data, repair=repair, sources=opened
                )
                progress.done = report.bytes_checked
        return report

    async def gc(self, *, grace: float = DEFAULT_GC_GRACE) -> GcReport:
        """Reclaim unreferenced data older than ``grace`` seconds; safe beside writers."""
        grace = options.grace(grace)
        with track(self._progress, Operation.GC, None) as progress:
            report = await self._store.gc(grace=grace)
            progress.done = report.bytes_deleted
        return report

    async def stats(self) -> StoreStats:
        return await self._store.stats()

    async def expire(self, *, now: float | None = None) -> Ids:
        """Delete snapshots whose TTL has run out since their last use; return their ids."""
        now = time.time() if now is None else now
        expired = [
            info.id
            for info in await self._store.list()
            if info.ttl is not None and info.last_used_at + info.ttl <= now
        ]
        for snapshot_id in expired:
            await self._store.delete(snapshot_id)
        return expired

    async def prune(
        self,
        *,
        keep_last: int,
        per_name: bool = True,
        name: str | None = None,
        dry_run: bool = False,
    ) -> Ids:
        """Keep the newest ``keep_last`` snapshots (of each name); delete the rest.

        With ``per_name`` each name (unnamed snapshots together) keeps its own
        newest ``keep_last``. ``name`` limits the pruning to the snapshots of
        that name; ``dry_run`` deletes nothing. Returns the (would-be) deleted ids.
        """
        keep_last = options.keep_last(keep_last)
        infos = await self._sorted()
        if name is not None:
            infos = [info for info in infos if info.name == name]
        if per_name:
            infos.sort(key=lambda i: (i.name or "", -i.created_at))
            groups: list[Infos] = [[*g] for _, g in groupby(infos, key=lambda i: i.name or "")]
        else:
            groups = [infos]
        doomed = [info.id for group in groups for info in group[keep_last:]]
        for snapshot_id in [] if dry_run else doomed:
            await self._store.delete(snapshot_id)
        return doomed

    async def files(self, snapshot_id: str) -> Entries:
        """The snapshot's file index, in stream order."""
        entries = await self._store.index(snapshot_id)
        if len(entries) > 1 and entries[0].path == entries[-1].path == ".":
            # The repeated root entry that carries a capture report is not a file.
            entries.pop()
        return entries

    async def diff(self, old_id: str, new_id: str) -> SnapshotDiff:
        """Files added, removed and changed from snapshot ``old_id`` to ``new_id``."""
        return diff_indexes(await self._store.index(old_id), await self._store.index(new_id))

    def export(self, snapshot_id: str) -> AbstractAsyncContextManager[TarReader]:
        """The snapshot as a plain tar stream, verified as it is read."""
        return self._export(snapshot_id)

    @contextlib.asynccontextmanager
    async def _export(self, snapshot_id: str) -> AsyncIterator[TarReader]:
        async with self._store.open(snapshot_id) as reader:
            with track(self._progress, Operation.EXPORT, snapshot_id, reader.size) as progress:
                yield _TrackedReader(reader, progress)

    async def import_tar(
        self,
        tar: AsyncIterator[bytes],
        *,
        dir: str,
        name: str | None = None,
        image: str = "",
        ttl: float | None = None,
        size: int | None = None,
        allow_devices: bool = False,
    ) -> DirectorySnapshot:
        """Store a tar stream as a snapshot of ``dir``; an unsafe archive stores nothing.

        The archive is untrusted: it is stored re-encoded with canonical headers
        (see :func:`~docksnap.service.archive.checked_tar`), so the snapshot's
        ``size`` is the length of the re-encoded archive, not of ``tar``, and an
        export gives the re-encoded archive back. Members that could escape their
        directory, that the engine would refuse to extract, or that tar readers
        read differently raise :class:`~docksnap.errors.UnsafeArchiveError` naming
        the member. Device nodes and fifos are refused unless ``allow_devices``.
        ``image`` is recorded as the snapshot's source image (the ``docker-volume:``
        store also makes its helper containers from it). ``size``, when the
        caller knows the stream's length, is only reported as progress. The
        returned record's ``info`` is the catalogue entry the store committed.
        """
        name = options.snapshot_name(name)
        ttl = options.ttl(ttl)
        record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir=dir, name=name)
        source = SnapshotSource(container="", image=image)
        with track(self._progress, Operation.IMPORT, record.id, size) as progress:
            stream = checked_tar(progress.stream(tar), allow_devices=allow_devices)
            info = await self._store.save(record, stream, source=source, ttl=ttl)
        return dataclasses.replace(info.snapshot, info=info)

    async def copy(self, snapshot_id: str, *, to: SnapshotStore | str) -> CopyReport:
        """Copy a snapshot into another store (a store or a store URL), verified.

        Between chunked stores only the chunks the target lacks travel. The copy
        appears on the target complete or not at all, under the same id; copying
        again is a no-op. A store opened from a URL is closed afterwards.
        """
        if not isinstance(to, str):
            return await self._copy(snapshot_id, to)
        target = self._store_from_url(to)
        try:
            return await self._copy(snapshot_id, target)
        finally:
            await target.close()

    def _store_from_url(self, url: str) -> SnapshotStore:
        if self._open_store is None:
            raise InvalidArgumentError("this catalogue cannot open store URLs; pass a store")
        return self._open_store(url)

    async def _copy(self, snapshot_id: str, target: SnapshotStore) -> CopyReport:
        with track(self._progress, Operation.COPY, snapshot_id) as progress:
            report = await copy_snapshot(self._store, target, snapshot_id)
            progress.done = report.bytes_copied
        return report

    async def report(self, snapshot_id: str) -> CaptureReport | None:
        """The capture report stored with a snapshot (``None``: nothing to report)."""
        return await metadata.read_report(self._store, snapshot_id)

    async def kind(self, snapshot: str | SnapshotInfo) -> str:
        """``"directory"`` or ``"container"`` (a whole-container snapshot).

        Only snapshots of ``/`` can be either; for those the index is read.
        """
        info = snapshot if isinstance(snapshot, SnapshotInfo) else await self._store.get(snapshot)
        return await metadata.snapshot_kind(self._store, info)

    async def merge(
        self,
        base: str | DirectorySnapshot,
        ours: str | DirectorySnapshot,
        theirs: str | DirectorySnapshot,
        *,
        name: str | None = None,
        on_conflict: str = "fail",
        text_merge: bool = False,
        ttl: float | None = None,
    ) -> MergeResult:
        """Merge ``ours`` and ``theirs`` against ``base``: :mod:`docksnap.service.merge`."""
        ids = [s.id if isinstance(s, DirectorySnapshot) else s for s in (base, ours, theirs)]
        return await merge_snapshots(
            self._store,
            *ids,
            name=name,
            on_conflict=on_conflict,
            text_merge=text_merge,
            ttl=ttl,
        )

    async def _sorted(self) -> Infos:
        return sorted(await self._store.list(), key=lambda i: (i.created_at, i.id), reverse=True)


class _TrackedReader:
    """A store's reader whose iteration is counted as an export."""

    def __init__(self, inner: TarReader, progress: Tracker) -> None:
        self._inner = inner
        self._progress = progress

    @property
    def size(self) -> int | None:
        return self._inner.size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._progress.stream(self._inner)

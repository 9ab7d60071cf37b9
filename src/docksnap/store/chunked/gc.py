"""Garbage collection of the chunked store: trash first, purge a grace period later.

The race gc must not lose: a writer asks ``exists(chunks/X)``, is told yes, and so
does not write X; its manifest, committed later, references X. If gc deleted X in
between (X was old and unreferenced), that snapshot would be born broken. X's age
says nothing about whether a writer is relying on it right now.

So gc never deletes a chunk in one step. It *moves* an old unreferenced chunk to
``trash/`` (a fresh object: the move's time is its mtime), and deletes a trash
entry only when (1) it has been in the trash for ``grace`` seconds and (2) no
manifest read at least ``grace`` seconds after it was trashed references it. A
writer that saw X before the move commits within ``grace`` (the store re-checks
what it deduplicated if a save takes longer, see ``ChunkedStore``), so its
manifest is seen by (2) and X is rescued back to ``chunks/``; readers meanwhile
find X in the trash. A writer that looks after the move does not find X and
writes it again. docs/FORMAT.md gives the full argument.

All times are the store's clock (the mtime of a probe object), not this host's,
so hosts sharing one bucket agree on ages. One gc at a time holds ``locks/gc``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec

from docksnap.errors import StoreError
from docksnap.store.base import GcReport
from docksnap.store.chunked.format import (
    CHUNKS,
    CLOCK,
    GC_LOCK_KEY,
    INDEXES,
    MANIFESTS,
    TRASH,
    USED,
    GcLease,
    chunk_key,
    digest_of_key,
    id_of_key,
    manifest_key,
    trash_key,
)
from docksnap.store.chunked.leases import DEFAULT_TTL, live_leases
from docksnap.store.chunked.records import Records
from docksnap.store.objects import ObjectInfo, ObjectNotFoundError, ObjectStore

log = logging.getLogger(__name__)

# Owners of the gc leases this process holds right now. A lease naming this
# process but no running owner belongs to a gc that ended without deleting it
# (its connection died mid-release): it is as dead as a killed process's.
_RUNNING: set[str] = set()
_RUNNING_LOCK = threading.Lock()


def store_now(objects: ObjectStore) -> float:
    """The store's current time: the mtime of an object written now.

    On S3 this is the server's clock, which every host sharing the bucket sees;
    comparing it with object mtimes makes ages immune to client clock skew.
    """
    key = f"{CLOCK}{uuid.uuid4()}"
    objects.put(key, b"")
    try:
        for info in objects.list(key):
            if info.key == key:
                return info.mtime
    finally:
        objects.delete(key)
    return time.time()


@dataclass(slots=True)
class _Tally:
    deleted: int = 0
    freed: int = 0
    young: int = 0

    def report(self) -> GcReport:
        return GcReport(
            objects_deleted=self.deleted, bytes_deleted=self.freed, objects_kept_young=self.young
        )


@dataclass(slots=True)
class _References:
    chunks: set[str] = field(default_factory=set)
    indexes: set[str] = field(default_factory=set)
    manifests_read: set[str] = field(default_factory=set)
    live_ids: set[str] = field(default_factory=set)


class Collector:
    """One gc run over a store. Call :meth:`run` from a thread that may block."""

    def __init__(
        self,
        records: Records,
        io_pool: ThreadPoolExecutor,
        *,
        lease_seconds: float,
        lease_ttl: float = DEFAULT_TTL,
    ) -> None:
        self._objects = records.objects
        self._read_refs = records.refs
        self._io = io_pool
        self._lease_seconds = lease_seconds
        self._lease_ttl = lease_ttl
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def run(
        self, grace: float, then: Callable[[float], tuple[int, int, int]] | None = None
    ) -> GcReport:
        """Trash old unreferenced chunks, purge old trash, drop orphans. Not atomic.

        Safe to interrupt at any point (every step is idempotent and leaves each
        chunk in ``chunks/`` or ``trash/``, or gone only when nothing can need it).
        Raises :class:`StoreError` if another gc holds the lease, and stops without
        deleting anything if a manifest cannot be read: its references are unknown.
        """
        self._acquire_lease()
        with _RUNNING_LOCK:
            _RUNNING.add(self._owner)
        stop = threading.Event()
        refresher = threading.Thread(
            target=self._keep_lease, args=(stop,), name="docksnap-gc-lease", daemon=True
        )
        refresher.start()
        try:
            report = self._collect(grace)
            if then is None:
                return report
            deleted, freed, young = then(grace)
            return GcReport(
                objects_deleted=report.objects_deleted + deleted,
                bytes_deleted=report.bytes_deleted + freed,
                objects_kept_young=report.objects_kept_young + young,
            )
        finally:
            stop.set()
            refresher.join()
            with _RUNNING_LOCK:
                _RUNNING.discard(self._owner)
            self._release_lease()

    def _keep_lease(self, stop: threading.Event) -> None:
        """Refresh the lease often, so that a dead gc's lease goes stale quickly."""
        while not stop.wait(self._lease_seconds / 4):
            try:
                self._refresh_lease()
            except StoreError:
                log.warning("could not refresh the gc lease", exc_info=True)

    def _collect(self, grace: float) -> GcReport:
        tally = _Tally()
        refs = _References()
        started = store_now(self._objects)
        self._read_manifests(refs)
        self._trash_unreferenced(refs, started - grace, tally)
        self._refresh_lease()
        # References are re-read *after* trashing: a trash entry may be purged only
        # if no manifest committed up to `grace` after its move references it.
        now = store_now(self._objects)
        refs.live_ids.clear()
        self._read_manifests(refs)
        self._purge_trash(refs, now - grace, tally)
        self._drop_orphans(refs, now - grace, tally)
        self._sweep_temporaries(grace, tally)
        return tally.report()

    # --- references --------------------------------------------------------------

    def _read_manifests(self, refs: _References) -> None:
        """Add the references of manifests not read before; note every live id."""
        keys = [info.key for info in self._objects.list(MANIFESTS)]
        refs.live_ids.update(i for i in map(id_of_key, keys) if i is not None)
        new = [key for key in keys if key not in refs.manifests_read]
        for key, manifest in zip(new, self._io.map(self._read_refs, new), strict=True):
            refs.manifests_read.add(key)
            if manifest is None:
                continue
            refs.chunks.update(ref.hash for ref in manifest.chunks)
            if manifest.index is not None:
                refs.indexes.add(manifest.index.key)

    # --- chunks ------------------------------------------------------------------

    def _trash_unreferenced(self, refs: _References, cutoff: float, tally: _Tally) -> None:
        doomed: list[str] = []
        for info in self._objects.list(CHUNKS):
            digest = digest_of_key(info.key)
            if digest is None or digest in refs.chunks:
                continue
            if info.mtime > cutoff:
                tally.young += 1
            else:
                doomed.append(digest)
        list(self._io.map(self._move_to_trash, doomed))

    def _move_to_trash(self, digest: str) -> None:
        try:
            stored = self._objects.get(chunk_key(digest))
        except ObjectNotFoundError:
            return
        # put, not put_if_absent: an older trash copy of the same chunk must get a
        # fresh mtime, or it could be purged before this move's grace period ends.
        self._objects.put(trash_key(digest), stored)
        self._objects.delete(chunk_key(digest))

    def _purge_trash(self, refs: _References, cutoff: float, tally: _Tally) -> None:
        doomed: list[ObjectInfo] = []
        rescue: list[str] = []
        for info in self._objects.list(TRASH):
            digest = digest_of_key(info.key)
            if digest is None:
                continue
            if digest in refs.chunks:
                rescue.append(digest)
            elif info.mtime > cutoff:
                tally.young += 1
            else:
                doomed.append(info)
        list(self._io.map(self._rescue, rescue))
        self._delete_all(doomed, tally)

    def _rescue(self, digest: str) -> None:
        """A trashed chunk a manifest references goes back to ``chunks/``."""
        try:
            stored = self._objects.get(trash_key(digest))
        except ObjectNotFoundError:
            return
        self._objects.put_if_absent(chunk_key(digest), stored)
        self._objects.delete(trash_key(digest))

    # --- metadata and leftovers ------------------------------------------------------

    def _drop_orphans(self, refs: _References, cutoff: float, tally: _Tally) -> None:
        """Indexes and use records whose manifest is gone (failed save or delete)."""
        doomed: list[ObjectInfo] = []
        for prefix in (INDEXES, USED):
            for info in self._objects.list(prefix):
                snapshot_id = id_of_key(info.key)
                if snapshot_id in refs.live_ids or info.key in refs.indexes:
                    continue
                if info.mtime > cutoff:
                    tally.young += 1
                else:
                    doomed.append(info)
        if doomed and live_leases(self._objects, store_now(self._objects), self._lease_ttl):
            # A running save writes indexes/<id> just before its manifest: whatever
            # the grace, such an index is not an orphan while a writer may commit it.
            tally.young += len(doomed)
            doomed = []
        # Listed after the manifests were read: a save may have committed since.
        doomed = [info for info in doomed if not self._committed(info.key)]
        doomed.extend(info for info in self._objects.list(CLOCK) if info.mtime <= cutoff)
        self._delete_all(doomed, tally)

    def _committed(self, key: str) -> bool:
        snapshot_id = id_of_key(key)
        return snapshot_id is not None and self._objects.exists(manifest_key(snapshot_id))

    def _sweep_temporaries(self, grace: float, tally: _Tally) -> None:
        sweep = getattr(self._objects, "sweep", None)
        if callable(sweep):
            # A temporary file younger than a lease's ttl may be a write in progress,
            # whatever the grace and whether or not a lease is live: a save's first
            # write is its lease, made while no lease of its own exists yet (and
            # touch and the first config write run under no lease at all). No single
            # write takes as long as a lease lives; only a killed writer's files get
            # older. (Sweeping them at grace=0 when no lease was live once failed a
            # save starting beside gc: its lease's temporary file vanished.)
            removed, freed = sweep(max(grace, self._lease_ttl))
            tally.deleted += removed
            tally.freed += freed

    def _delete_all(self, infos: Iterable[ObjectInfo], tally: _Tally) -> None:
        infos = list(infos)
        list(self._io.map(lambda info: self._objects.delete(info.key), infos))
        tally.deleted += len(infos)
        tally.freed += sum(info.size for info in infos)

    # --- the lease ---------------------------------------------------------------------

    def _acquire_lease(self) -> None:
        lease = msgspec.json.encode(GcLease(owner=self._owner, started_at=time.time()))
        if self._objects.put_if_absent(GC_LOCK_KEY, lease):
            return
        holder, age = self._lease_holder()
        if (age is not None and age > self._lease_seconds) or _dead_here(holder):
            # The holder died without releasing it. Two gcs breaking the same stale
            # lease at once could both proceed; the lease time makes that a
            # once-in-hours event, and two gcs only race on trash purges.
            log.warning("breaking stale gc lease of %s (%.0f s old)", holder, age or 0.0)
            self._objects.delete(GC_LOCK_KEY)
            if self._objects.put_if_absent(GC_LOCK_KEY, lease):
                return
            holder, age = self._lease_holder()
        raise StoreError(
            self._objects.url,
            f"another gc is running (lease {GC_LOCK_KEY} held by {holder}, "
            f"{age or 0:.0f} s old; a dead holder's lease expires after "
            f"{self._lease_seconds:.0f} s)",
        )

    def _lease_holder(self) -> tuple[str, float | None]:
        try:
            lease = msgspec.json.decode(self._objects.get(GC_LOCK_KEY), type=GcLease)
            holder = lease.owner
        except (ObjectNotFoundError, msgspec.DecodeError):
            holder = "unknown"
        for info in self._objects.list(GC_LOCK_KEY):
            if info.key == GC_LOCK_KEY:
                return holder, store_now(self._objects) - info.mtime
        return holder, None

    def _refresh_lease(self) -> None:
        lease = GcLease(owner=self._owner, started_at=time.time())
        self._objects.put(GC_LOCK_KEY, msgspec.json.encode(lease))

    def _release_lease(self) -> None:
        try:
            self._objects.delete(GC_LOCK_KEY)
        except StoreError:
            log.warning("could not release the gc lease %s", GC_LOCK_KEY, exc_info=True)


def _dead_here(owner: str) -> bool:
    """Whether a lease ``owner`` (``host:pid:tag``) is a process of this host that
    no longer exists, or a gc of this process that has ended: its lease can be
    broken at once instead of after it expires."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    if int(pid_text) == os.getpid():
        with _RUNNING_LOCK:
            return owner not in _RUNNING
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

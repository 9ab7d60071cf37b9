"""The host's restore cache: a snapshot is extracted once, then mounted copy-on-write.

A restore that copies every byte costs time in proportion to the snapshot. On an
engine that runs on this host, whose volume directories docksnap can see (we are
root and the engine's ``Mountpoint`` of a fresh volume exists here), the first
masking restore of a snapshot fills a **cache entry**: a labelled volume
(``io.docksnap.role=cache``) holding the snapshot's tree, extracted by the engine
through a never-started helper (``PUT /archive``, the streaming restore's own
path). Every restore then mounts a **view**: a ``local``-driver volume of type
``overlay`` whose lower layer is the entry's tree and whose upper and work
directories live in a second volume private to the container. Writes go to the
upper directory only, so neither the stored snapshot nor the entry ever changes,
and a restore costs two volume creations, whatever the size.

Layout of an entry volume's ``Mountpoint``::

    tree/           the snapshot, as the streaming restore would extract it
    complete.json   written (atomically, after a sync) once the fill is verified
    last-used       its mtime is the entry's last use (labels cannot change)

Crash reasoning:

* An entry without ``complete.json`` is never used. A fill that dies leaves one;
  its creator label names a dead process, so ``gc`` (``reap_orphans``) and
  ``cache prune`` remove it. A fill that fails while alive removes it at once.
* ``complete.json`` is written only after the byte count matched the store's and
  the tree was synced to disk, so a power loss cannot leave a complete-marked
  torn tree.
* An entry is in use while any volume names it (``io.docksnap.cache-entry``):
  the view and its upper volume, created *before* the view is mounted and
  removed only after the container is. Eviction and ``cache rm`` skip such an
  entry. The check and the removal happen under an exclusive ``flock`` on the
  entry's directory, and a restore takes the lock shared while it marks the entry
  in use, so an entry cannot be evicted between being chosen and being marked.
* The view and upper volumes carry the container's name (``io.docksnap.container``)
  and creator, like the streaming restore's volumes: ``destroy`` removes them,
  and after a plain ``docker rm -f`` the next ``gc`` finds them (an upper volume
  is kept while its view volume exists; a view while a container mounts it).

Scope: a client sees, uses and evicts only entries carrying its own labels
(``Client(labels=...)``), as ``reap_orphans`` does; "in use" is judged across all
labels. Entries are keyed by snapshot id and store (a hash of the store's URL).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from docksnap import labels as lbl
from docksnap.docker import DockerClient, helper_container
from docksnap.docker.helpers import HELPER_MOUNT
from docksnap.errors import (
    CacheEntryInUseError,
    CacheEntryNotFoundError,
    DockerError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
)
from docksnap.process import creator_alive
from docksnap.service.catalogue import DEFAULT_GC_GRACE
from docksnap.service.orphans import remove_helpers_of
from docksnap.service.progress import Operation, ProgressHook, Tracker, track
from docksnap.store import SnapshotStore

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 10 * 1024**3
CACHE_SIZE_ENV = "DOCKSNAP_CACHE_SIZE"
RESTORE_CACHE_ENV = "DOCKSNAP_RESTORE_CACHE"
CACHE_VOLUME_PREFIX = "docksnap-cache-"
UPPER_VOLUME_PREFIX = "docksnap-upper-"
VIEW_VOLUME_PREFIX = "docksnap-restore-"  # the streaming restore's prefix: same role, same gc

_TREE = "tree"
_COMPLETE = "complete.json"
_LAST_USED = "last-used"
# Characters that would break the overlay mount's option string.
_UNSAFE_IN_OPTIONS = frozenset(",:=\n")


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One snapshot materialized on this host.

    ``size`` is the snapshot's tar length in bytes (what counts against the
    limit); ``last_used_at`` Unix seconds. ``complete`` is False while it fills (or
    after a fill that died: gc removes it). ``references`` counts the volumes of
    the restores reading it (two per restore: the view and its upper layer); an
    entry with references is ``in_use`` and never evicted or removed.
    """

    name: str
    snapshot_id: str
    size: int
    created_at: float
    last_used_at: float
    complete: bool
    references: int

    @property
    def in_use(self) -> bool:
        return self.references > 0


class _Streamed(Exception):
    """This restore cannot use the cache after all: the caller streams it."""


@dataclass(frozen=True, slots=True)
class _Located:
    """An entry volume and where its files are on this host."""

    name: str
    mountpoint: str

    @property
    def tree(self) -> str:
        return os.path.join(self.mountpoint, _TREE)


class RestoreCache:
    """The restore cache of one client (``Client.cache``); see the module docstring.

    ``size_limit`` bytes of complete entries are kept at most: after a restore
    fills an entry, the least recently used entries not in use are evicted until
    the rest fits. A snapshot larger than the limit is never cached.
    """

    def __init__(
        self,
        docker: DockerClient,
        store: SnapshotStore,
        *,
        labels: Mapping[str, str],
        size_limit: int,
        progress: ProgressHook | None = None,
    ) -> None:
        self._docker = docker
        self._store = store
        self._labels = dict(labels)
        self.size_limit = size_limit
        self._progress = progress
        self._store_key = hashlib.sha256(store.url.encode()).hexdigest()[:16]
        self._unusable: str | None = None

    # -- public: list, remove, prune, evict ----------------------------------------

    async def list(self) -> builtins.list[CacheEntry]:
        """This client's entries, least recently used first. Read-only."""
        references = await self._references()
        entries = [
            _describe(volume, references.get(str(volume["Name"]), 0))
            for volume in await self._entry_volumes({})
        ]
        return sorted(entries, key=lambda e: (e.last_used_at, e.name))

    async def remove(self, reference: str) -> builtins.list[str]:
        """Remove the entry named ``reference``, or every entry of that snapshot id.

        :class:`CacheEntryNotFoundError` when none matches; an entry in use is kept
        and raises :class:`CacheEntryInUseError` (the others are removed first).
        Returns the names removed. Idempotent in effect.
        """
        matches = [e for e in await self.list() if reference in (e.name, e.snapshot_id)]
        if not matches:
            raise CacheEntryNotFoundError(reference)
        removed, busy = [], []
        for entry in matches:
            if await self._remove_if_unused(entry.name):
                removed.append(entry.name)
            else:
                busy.append(entry)
        if busy:
            raise CacheEntryInUseError(busy[0].name, busy[0].snapshot_id)
        return removed

    async def prune(self, *, grace: float = DEFAULT_GC_GRACE) -> builtins.list[str]:
        """Remove every entry not in use: complete ones, and incomplete ones whose
        filling process is gone (or, when this host cannot tell, older than
        ``grace`` seconds: it may be filling on another host). Returns the names
        removed. Idempotent."""
        removed = []
        for entry in await self.list():
            if entry.in_use:
                continue
            if not entry.complete and not await self._fill_abandoned(entry.name, grace):
                continue
            if await self._remove_if_unused(entry.name):
                removed.append(entry.name)
        return removed

    async def reap(self, *, grace: float) -> builtins.list[str]:
        """Remove (``gc``) the entries whose fill died (incomplete and abandoned),
        and those of a snapshot deleted from this client's store: a deleted
        snapshot must not live on in the cache. Entries in use are kept.

        Nothing where this host cannot see the entries' files: completeness is
        unknown there, and a complete entry is not an orphan."""
        if self.unusable_reason() is not None:
            return []
        removed = []
        for entry in await self.list():
            if entry.in_use:
                continue
            if entry.complete:
                garbage = await self._snapshot_deleted(entry)
            else:
                garbage = await self._fill_abandoned(entry.name, grace)
            if garbage and await self._remove_if_unused(entry.name):
                removed.append(entry.name)
        return removed

    async def _snapshot_deleted(self, entry: CacheEntry) -> bool:
        info = await self._docker.inspect_volume(entry.name)
        if ((info or {}).get("Labels") or {}).get(lbl.CACHE_STORE) != self._store_key:
            return False  # another store's: this client cannot tell
        try:
            await self._store.get(entry.snapshot_id)
        except SnapshotNotFoundError:
            return True
        return False

    async def evict(self, *, limit: int | None = None) -> builtins.list[str]:
        """Remove least recently used entries not in use until the complete ones fit
        in ``limit`` bytes (default: ``size_limit``). Returns the names removed.
        An entry in use is never removed, even if the rest cannot fit."""
        limit = self.size_limit if limit is None else limit
        entries = [e for e in await self.list() if e.complete]
        total = sum(e.size for e in entries)
        removed = []
        for entry in entries:  # least recently used first
            if total <= limit:
                break
            if not entry.in_use and await self._remove_if_unused(entry.name):
                total -= entry.size
                removed.append(entry.name)
        return removed

    # -- the restore path ---------------------------------------------------------

    def unusable_reason(self) -> str | None:
        """Why this client cannot cache restores (then they stream), or None."""
        if self._unusable is not None:
            return self._unusable
        if self._docker.address.uds is None:
            return "the engine is not on this host (not a unix socket)"
        if os.geteuid() != 0:
            return "not root: the engine's volume directories are not writable"
        return None

    def disable(self, reason: str) -> None:
        """Stream every later restore of this client (``reason`` is logged and
        returned by :meth:`unusable_reason`): views cannot be mounted here."""
        self._unusable = reason

    async def view(self, snapshot_id: str, *, image: str, owner: str) -> str | None:
        """A new copy-on-write view of the snapshot for container ``owner``: the name
        of a volume to mount, private to it. Fills the entry first if needed.

        None (nothing created) when this host cannot cache or the snapshot is
        larger than the limit: the caller streams. Errors of the fill (a corrupt
        or missing snapshot, an engine failure) propagate with nothing left
        behind. The view's volumes carry ``owner`` and are removed with it.
        """
        reason = self.unusable_reason()
        if reason is not None:
            log.debug("restore of %s streams: %s", snapshot_id, reason)
            return None
        size = (await self._store.get(snapshot_id)).size
        if size > self.size_limit:
            log.info(
                "snapshot %s (%d bytes) is larger than the restore cache (%d): streamed",
                snapshot_id,
                size,
                self.size_limit,
            )
            return None
        try:
            with track(self._progress, Operation.RESTORE, snapshot_id, size) as progress:
                return await self._view(snapshot_id, image, owner, progress)
        except _Streamed:
            return None

    async def _view(self, snapshot_id: str, image: str, owner: str, progress: Tracker) -> str:
        """The view, filling the entry first if needed; :class:`_Streamed` if none can be
        made here. Progress as a streamed restore's: the fill's bytes as they go, and
        once the view is mounted the whole snapshot counts as restored, so a warm
        restore (nothing to move) reports the same operation and bytes as a cold one."""
        for _ in range(3):  # an entry evicted between lookup and use is looked up again
            entry = await self._find(snapshot_id) or await self._fill(snapshot_id, image, progress)
            if entry is None:
                raise _Streamed
            volume = await self._mount_view(entry, owner)
            if volume is not None:
                progress.advance(max(0, (progress.total or 0) - progress.done))
                return volume
        raise _Streamed

    async def _find(self, snapshot_id: str) -> _Located | None:
        """The most recently used complete entry of this snapshot from this store."""
        found: builtins.list[tuple[float, _Located]] = []
        for volume in await self._entry_volumes({lbl.SNAPSHOT_ID: snapshot_id}):
            labels = volume.get("Labels") or {}
            mountpoint = str(volume.get("Mountpoint") or "")
            if labels.get(lbl.CACHE_STORE) != self._store_key or not mountpoint:
                continue
            if _is_complete(mountpoint):
                found.append((_last_used(mountpoint), _Located(str(volume["Name"]), mountpoint)))
        return max(found, key=lambda item: item[0])[1] if found else None

    async def _fill(self, snapshot_id: str, image: str, progress: Tracker) -> _Located | None:
        """Create and fill a new entry; None (nothing left) when this host cannot see it."""
        name = CACHE_VOLUME_PREFIX + uuid.uuid4().hex
        fields = {lbl.SNAPSHOT_ID: snapshot_id, lbl.CACHE_STORE: self._store_key}
        fields.update(lbl.creator_fields())
        try:
            # Inside the try: a volume the engine made but whose answer was lost goes too.
            await self._docker.create_volume(
                name, lbl.make_labels(lbl.Role.CACHE, self._labels, fields)
            )
            mountpoint = await self._visible_mountpoint(name)
            if mountpoint is None:
                self._unusable = "the engine's volume directories are not visible on this host"
                log.info("restores stream: %s", self._unusable)
                await self._docker.remove_volume(name)
                return None
            entry = _Located(name, mountpoint)
            _make_tree(entry.tree)
            size = await self._extract(snapshot_id, image, entry, progress)
            await asyncio.to_thread(_mark_complete, entry, snapshot_id, size)
        except BaseException:
            await asyncio.shield(self._discard(name))
            raise
        log.info("restore cache: filled %s with snapshot %s (%d bytes)", name, snapshot_id, size)
        return entry

    async def _extract(
        self, snapshot_id: str, image: str, entry: _Located, progress: Tracker
    ) -> int:
        """Stream the snapshot into the entry's tree; return the verified byte count."""
        helper_labels = lbl.make_labels(lbl.Role.HELPER, self._labels)
        count = 0

        async def counted(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            nonlocal count
            async for piece in pieces:
                count += len(piece)
                yield piece

        async with (
            self._store.open(snapshot_id) as reader,
            helper_container(self._docker, image, entry.name, helper_labels) as helper,
        ):
            await self._docker.put_archive(
                helper,
                f"{HELPER_MOUNT}/{_TREE}",
                counted(progress.stream(reader)),
                size=reader.size,
            )
            # Each chunk was verified as it was read; the length is checked here, so a
            # stream the store cut short can never be marked complete.
            if reader.size is not None and count != reader.size:
                raise SnapshotCorruptError(
                    snapshot_id, f"read {count} bytes, the store records {reader.size}"
                )
        return count

    async def _mount_view(self, entry: _Located, owner: str) -> str | None:
        """The view's two volumes, or None if the entry went (evicted) meanwhile."""
        upper = UPPER_VOLUME_PREFIX + uuid.uuid4().hex
        view = VIEW_VOLUME_PREFIX + uuid.uuid4().hex
        try:
            async with _shared_lock(entry.mountpoint) as held:
                if not held or not _is_complete(entry.mountpoint):
                    return None
                # Created under the lock: from here on the entry is in use.
                await self._docker.create_volume(
                    upper, self._view_labels(owner, {lbl.CACHE_ENTRY: entry.name, lbl.VIEW: view})
                )
            upper_dir = await self._visible_mountpoint(upper)
            if upper_dir is None:
                raise DockerError(500, f"volume {upper} has no directory here", operation="cache")
            layers = _prepare_upper(entry.tree, upper_dir)
            await self._docker.create_volume(
                view,
                self._view_labels(owner, {lbl.CACHE_ENTRY: entry.name, lbl.UPPER: upper}),
                driver_options={"type": "overlay", "device": "overlay", "o": layers},
            )
        except BaseException:
            await asyncio.shield(self._remove_volumes(view, upper))
            raise
        _touch(entry.mountpoint)
        return view

    def _view_labels(self, owner: str, fields: Mapping[str, str]) -> dict[str, str]:
        return lbl.make_labels(
            lbl.Role.RESTORE, self._labels, {**lbl.creator_fields(owner), **fields}
        )

    # -- internals ----------------------------------------------------------------

    async def _entry_volumes(self, labels: Mapping[str, str]) -> builtins.list[dict[str, Any]]:
        scope = {**self._labels, lbl.MANAGED: "true", lbl.ROLE: str(lbl.Role.CACHE), **labels}
        return await self._docker.list_volumes(scope)

    async def _references(self) -> dict[str, int]:
        """Entry name -> the volumes reading it (views and their upper volumes),
        across every client's labels: in use is in use, whoever made the view."""
        counts: dict[str, int] = {}
        for volume in await self._docker.list_volumes({lbl.MANAGED: "true", lbl.CACHE_ENTRY: ""}):
            entry = (volume.get("Labels") or {}).get(lbl.CACHE_ENTRY, "")
            counts[entry] = counts.get(entry, 0) + 1
        return counts

    async def _visible_mountpoint(self, volume: str) -> str | None:
        info = await self._docker.inspect_volume(volume)
        mountpoint = str((info or {}).get("Mountpoint") or "")
        if not mountpoint or _UNSAFE_IN_OPTIONS & set(mountpoint):
            return None
        return mountpoint if _is_directory(mountpoint) else None

    async def _fill_abandoned(self, name: str, grace: float) -> bool:
        info = await self._docker.inspect_volume(name)
        labels = (info or {}).get("Labels") or {}
        alive = creator_alive(labels.get(lbl.CREATOR, ""))
        if alive is not None:
            return not alive
        try:
            return time.time() - float(labels.get(lbl.CREATED_AT, "")) > grace
        except ValueError:
            return False

    async def _remove_if_unused(self, name: str) -> bool:
        """Remove the entry unless a view reads it; True if it is gone."""
        info = await self._docker.inspect_volume(name)
        if info is None:
            return True
        mountpoint = str(info.get("Mountpoint") or "")
        with _locked(mountpoint) as held:
            if held is False:
                return False  # a restore is marking it in use right now
            if await self._docker.list_volumes({lbl.MANAGED: "true", lbl.CACHE_ENTRY: name}):
                return False
            await remove_helpers_of(self._docker, name)  # a dead fill's helper pins it
            try:
                await self._docker.remove_volume(name)
            except DockerError as exc:
                if exc.status != 409:
                    raise
                return False
        return True

    async def _discard(self, name: str) -> None:
        try:
            await remove_helpers_of(self._docker, name)
            await self._docker.remove_volume(name)
        except Exception as exc:  # the original error matters more; gc finds the rest
            log.warning("restore cache entry %s was not removed: %s", name, exc)

    async def _remove_volumes(self, *names: str) -> None:
        for name in names:
            try:
                await self._docker.remove_volume(name)
            except Exception as exc:
                log.warning("restore view volume %s was not removed: %s", name, exc)


def _describe(volume: Mapping[str, Any], references: int) -> CacheEntry:
    labels = volume.get("Labels") or {}
    mountpoint = str(volume.get("Mountpoint") or "")
    record = _read_complete(mountpoint) if mountpoint else None
    try:
        created = float(labels.get(lbl.CREATED_AT, "0"))
    except ValueError:
        created = 0.0
    return CacheEntry(
        name=str(volume["Name"]),
        snapshot_id=str(labels.get(lbl.SNAPSHOT_ID, "")),
        size=int(record["size"]) if record else 0,
        created_at=created,
        last_used_at=_last_used(mountpoint) if record else created,
        complete=record is not None,
        references=references,
    )


def _is_complete(mountpoint: str) -> bool:
    return os.path.exists(os.path.join(mountpoint, _COMPLETE))


def _is_directory(path: str) -> bool:
    return os.path.isdir(path)


def _make_tree(path: str) -> None:
    """The lower layer's root: root-owned, mode 755, as a fresh volume's (umask aside)."""
    os.mkdir(path)
    os.chmod(path, 0o755)  # noqa: S103 - a restore volume's root is world-readable too


def _read_complete(mountpoint: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(mountpoint, _COMPLETE), encoding="utf-8") as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("size"), int) else None


def _mark_complete(entry: _Located, snapshot_id: str, size: int) -> None:
    """The commit point of a fill: sync the tree, then write the marker atomically."""
    _syncfs(entry.mountpoint)
    path = os.path.join(entry.mountpoint, _COMPLETE)
    temporary = path + ".tmp"
    record = {"snapshot_id": snapshot_id, "size": size, "filled_at": time.time()}
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(record, file)
        file.flush()
        os.fsync(file.fileno())
    _touch(entry.mountpoint)
    os.replace(temporary, path)
    directory = os.open(entry.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` (the engine wrote the tree, not us)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(descriptor) != 0:
            os.sync()
    except (AttributeError, OSError):
        os.sync()
    finally:
        os.close(descriptor)


def _touch(mountpoint: str) -> None:
    path = os.path.join(mountpoint, _LAST_USED)
    with contextlib.suppress(OSError):
        with open(path, "a", encoding="utf-8"):
            pass
        os.utime(path)


def _last_used(mountpoint: str) -> float:
    try:
        return os.stat(os.path.join(mountpoint, _LAST_USED)).st_mtime
    except OSError:
        return 0.0


def _prepare_upper(tree: str, upper_volume: str) -> str:
    """Make the upper and work directories; return the overlay's mount options.

    The merged root takes its owner, mode and times from the upper directory, so
    it gets the lower tree's: the view's root looks like the snapshot's.
    """
    upper = os.path.join(upper_volume, "upper")
    work = os.path.join(upper_volume, "work")
    os.makedirs(upper, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    root = os.stat(tree)
    os.chown(upper, root.st_uid, root.st_gid)
    os.chmod(upper, root.st_mode & 0o7777)
    os.utime(upper, ns=(root.st_atime_ns, root.st_mtime_ns))
    return f"lowerdir={tree},upperdir={upper},workdir={work}"


@contextlib.contextmanager
def _locked(mountpoint: str) -> Iterator[bool | None]:
    """Try to ``flock`` the entry's directory exclusively, without waiting: yields
    True when held, False when busy (a restore is marking the entry in use: keep
    it), None when the directory is not here (removed, or a remote engine's)."""
    with _directory(mountpoint) as descriptor:
        if descriptor is None:
            yield None
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextlib.asynccontextmanager
async def _shared_lock(mountpoint: str) -> AsyncIterator[bool]:
    """Hold the entry's directory ``flock`` shared; False when the entry is gone.

    Polled, never blocking: the evictor holding it exclusively may be a task of
    this very event loop (flock conflicts between descriptors of one process too).
    """
    with _directory(mountpoint) as descriptor:
        if descriptor is None:
            yield False
            return
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.05)
        yield True


@contextlib.contextmanager
def _directory(path: str) -> Iterator[int | None]:
    """An open descriptor of ``path`` (its locks go with it), or None when it is absent."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            yield None
            return
        raise
    try:
        yield descriptor
    finally:
        os.close(descriptor)

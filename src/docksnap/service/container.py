"""One named Docker container, as the workerd container API sees it.

Operations that change the container (start, snapshot, signal, destroy) take
the container's turn: they run one at a time, first come first served, as the
seed's "RPC turn" does. ``asyncio.Lock`` wakes waiters in FIFO order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docksnap import labels as lbl
from docksnap.docker import DockerClient, helper_container
from docksnap.docker.helpers import HELPER_MOUNT
from docksnap.errors import (
    ContainerAlreadyRunningError,
    ContainerError,
    ContainerNotFoundError,
    ContainerNotRunningError,
    ContainerStartError,
    DirectoryNotFoundError,
    DockerError,
    InvalidArgumentError,
    StoreError,
)
from docksnap.model import (
    DirectorySnapshot,
    SnapshotInfo,
    SnapshotRestore,
    SnapshotSource,
    new_snapshot_id,
    normalize_path,
)
from docksnap.service import container_snapshot as cs
from docksnap.service import excludes as excludes_mod
from docksnap.service import options, runopts
from docksnap.service.capture import Capture, SizeLimit, read_ignore_file
from docksnap.service.hostcapture import (
    AUTO,
    CaptureMode,
    HostCapture,
    ParentChoice,
    capture_mode,
    find_parent,
    open_host_tree,
    parent_choice,
    save_host_members,
)
from docksnap.service.orphans import remove_helpers_of
from docksnap.service.pause import PauseHold, no_pause, paused
from docksnap.service.progress import Operation, ProgressHook, Tracker, track
from docksnap.service.restore_cache import RestoreCache
from docksnap.service.restore_plan import ImageLinkGuard, check_restored_symlinks
from docksnap.service.spool import DEFAULT_SPOOL_LIMIT, read_ahead, spool_directory
from docksnap.store import SnapshotStore, TarReader
from docksnap.tarstream import build_dirs_tar

log = logging.getLogger(__name__)

RESTORE_VOLUME_PREFIX = "docksnap-restore-"
_CLEANUP_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class ContainerContext:
    """What every container handle of one client shares; built once by the client.

    ``labels`` are the client's extra labels for what it creates, ``size_limit``
    the default snapshot limit in bytes, ``progress`` the client's hook (or None),
    ``cache`` the restore cache and ``restore_cache`` the default use of it.
    """

    engine: DockerClient
    store: SnapshotStore
    labels: Mapping[str, str]
    size_limit: int
    progress: ProgressHook | None = None
    cache: RestoreCache | None = None
    restore_cache: str = "off"


class Container:
    """A handle on the Docker container called ``name``; cheap to create.

    The container may have been started by docksnap or by anyone else: every
    operation asks the engine for its state. ``running`` is the state last seen.
    Made by :meth:`docksnap.Client.container`, which shares one ``turn`` among
    the handles of one name.
    """

    def __init__(self, context: ContainerContext, name: str, turn: asyncio.Lock) -> None:
        self._context = context
        self._docker = context.engine
        self._store = context.store
        self.name = name
        self._turn = turn
        self.running = False

    def __repr__(self) -> str:
        return f"<Container {self.name!r} running={self.running}>"

    async def refresh(self) -> bool:
        """Ask the engine whether the container runs; update and return ``running``."""
        state = await self._state()
        self.running = bool(state and state.get("Running"))
        return self.running

    async def describe(self) -> str:
        """The container's state in words, as messages show it; updates ``running``.

        ``running``, ``paused``, ``exited 3 s ago, code 0``, ``created, never
        started``. :class:`ContainerNotFoundError` if there is no such container.
        """
        state = await self._require_exists()
        if state.get("Paused"):
            return "paused"
        return "running" if self.running else describe_stopped(state)

    # -- lifecycle ------------------------------------------------------------------

    async def start(
        self,
        image: str,
        *,
        entrypoint: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        enable_internet: bool = False,
        snapshots: Iterable[DirectorySnapshot | SnapshotRestore] = (),
        container_snapshot: DirectorySnapshot | None = None,
        command: Sequence[str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        publish: Sequence[str] = (),
        volumes: Sequence[str] = (),
        user: str | None = None,
        workdir: str | None = None,
        labels: Mapping[str, str] | None = None,
        network: str | None = None,
        memory: str | int | None = None,
        cpus: float | str | None = None,
        restart: str | None = None,
        remove: bool = False,
        restore_cache: str | None = None,
    ) -> None:
        """Create the container, restore ``snapshots`` into it, then start it.

        Restores are applied parent first (by the depth of their target). Each
        distinct snapshot id is looked up once, before anything is created, so
        an unknown id fails first. If anything fails, the container and every
        volume made for it are removed before the error propagates: no container
        is left half-started.

        ``container_snapshot`` (from :meth:`snapshot_container`) makes the
        container's filesystem ``image`` plus that snapshot's changes, deleted
        files included (:mod:`docksnap.service.container_snapshot`).

        The other keywords are ``docker run``'s options, in its value formats
        (see :mod:`docksnap.service.runopts`): ``command`` (the arguments after
        the image, given to ``entrypoint``), ``env_file`` (read before ``env``,
        which wins), ``publish=["127.0.0.1:8080:80"]``, ``volumes=["/host:/ctr:ro",
        "name:/data"]``, ``user``, ``workdir``, ``labels``, ``network`` (by default
        ``"none"``, or the engine's bridge with ``enable_internet``),
        ``memory="512m"``, ``cpus=1.5``, ``restart="on-failure:3"`` and ``remove``
        (docker's ``--rm``). Publishing a port needs a network that can publish.
        A restore's target may not overlap a ``volumes`` target: its data would
        land in the bind source or the named volume.

        ``restore_cache`` (default: the client's): with ``"auto"``, each masking
        restore on an engine of this host mounts a copy-on-write view of the
        snapshot's restore cache entry, filled at its first restore (so later
        restores take the same time for any size, and read nothing from the
        store); elsewhere, or with ``"off"``, the snapshot is streamed into a fresh
        volume. Both give the container the same files. Merge restores are
        always streamed. See :mod:`docksnap.service.restore_cache`.
        """
        use_cache = options.restore_cache(
            self._context.restore_cache if restore_cache is None else restore_cache
        )
        restores = _plan_restores(snapshots)
        run = runopts.run_options(
            command=command,
            publish=publish,
            volumes=volumes,
            user=user,
            workdir=workdir,
            labels=labels,
            network=network,
            memory=memory,
            cpus=cpus,
            restart=restart,
            remove=remove,
        )
        _check_network(run, enable_internet)
        _check_overlaps(restores, run.volume_targets)
        environment = {**(runopts.read_env_file(env_file) if env_file else {}), **(env or {})}
        config = _container_config(image, entrypoint, environment, enable_internet)
        run.apply(config)
        if run.publish:
            await self._check_can_publish(run.network or "bridge")
        ids = list(dict.fromkeys(r.snapshot.id for r in restores))
        async with self._turn:
            await self._clear_previous()
            for snapshot_id in ids:
                await self._store.get(snapshot_id)
            await check_restored_symlinks(self._store, restores)
            for restore in restores:
                await cs.refuse_as_directory_snapshot(self._store, restore.snapshot)
            if container_snapshot is not None:
                await self._store.get(container_snapshot.id)
            cached = use_cache == "auto"
            while True:
                try:
                    if container_snapshot is not None:
                        config["Image"] = await cs.image_with_snapshot(
                            self._context, image, container_snapshot, owner=self.name
                        )
                    await self._create_with_restores(
                        image, config, restores, run.labels, cached=cached
                    )
                    await self._docker.start_container(self.name)
                    break
                except BaseException as exc:
                    await asyncio.shield(self._remove_everything())
                    if not (cached and _overlay_refused(exc)):
                        error = self._start_error(exc)
                        if error is None:
                            raise
                        raise error from exc
                    # The kernel or engine refused the overlay (e.g. a data root on
                    # overlayfs): this host cannot mount views, so stream, as "auto" says.
                    cached = False
                    self._disable_cache(str(exc))
            self.running = True
        await self._record_use(ids)
        if use_cache == "auto" and any(not r.merge for r in restores):
            await self._evict_cache()

    def _start_error(self, exc: BaseException) -> ContainerStartError | None:
        """The engine's refusal to start, in docksnap's terms (None: not a start error)."""
        if isinstance(exc, DockerError) and exc.operation == "start container":
            return ContainerStartError(
                self.name,
                f"container {self.name!r} failed to start: {exc.message}"
                + _network_advice(exc.message),
            )
        return None

    def _disable_cache(self, reason: str) -> None:
        if self._context.cache is not None:
            log.warning("restore cache views cannot be mounted here, streaming: %s", reason)
            self._context.cache.disable(f"the engine could not mount a view: {reason}")

    async def _evict_cache(self) -> None:
        """Keep the restore cache within its limit. Best effort, as ``_record_use``:
        the container runs, and an eviction that fails is retried at the next start."""
        cache = self._context.cache
        if cache is None or cache.unusable_reason() is not None:
            return
        try:
            evicted = await cache.evict()
        except (DockerError, OSError) as exc:
            log.warning("restore cache eviction failed: %s", exc)
            return
        if evicted:
            log.info("restore cache: evicted %s", ", ".join(evicted))

    async def _record_use(self, ids: list[str]) -> None:
        """Count the restores as uses (for TTLs). Best effort: the container already
        runs, and a full or failing store must not turn its start into an error
        that leaves the caller believing it did not start."""
        now = time.time()
        for snapshot_id in ids:
            try:
                await self._store.touch(snapshot_id, now)
            except StoreError as exc:
                log.warning("could not record the use of snapshot %s: %s", snapshot_id, exc)

    async def monitor(self) -> int:
        """Wait until the container stops; return its exit code.

        Fails at once (never hangs) for a container that does not exist.
        """
        try:
            code = await self._docker.wait_container(self.name)
        except DockerError as exc:
            raise self._not_found(exc) from exc
        self.running = False
        return code

    async def signal(self, signo: int) -> None:
        """Send signal number ``signo`` to the container's main process."""
        options.signal_number(signo)
        async with self._turn:
            await self._require_running()
            try:
                await self._docker.kill_container(self.name, signo)
            except DockerError as exc:
                if exc.status == 409:
                    raise ContainerNotRunningError(self.name, exc.message) from exc
                raise

    async def destroy(self) -> None:
        """Remove the container and the volumes its restores used. Idempotent."""
        async with self._turn:
            await asyncio.shield(self._remove_everything())
            self.running = False

    # -- snapshots ------------------------------------------------------------------

    async def snapshot_directory(
        self,
        dir: str,
        *,
        name: str | None = None,
        pause: bool = True,
        size_limit: int | None = None,
        ttl: float | None = None,
        exclude: Sequence[str] = (),
        ignore_file: bool = False,
        strict: bool = False,
        spool_limit: int = DEFAULT_SPOOL_LIMIT,
        capture: CaptureMode = "auto",
        parent: ParentChoice | DirectorySnapshot = AUTO,
    ) -> DirectorySnapshot:
        """Snapshot ``dir`` of the container into the client's store.

        A running container is paused while the engine reads its archive, so the
        snapshot is consistent (as ``docker commit`` does), and only that long:
        when the store is slower than the engine, the rest of the archive waits
        in a private spool file of at most ``spool_limit`` bytes (0: no spool;
        past it the read waits for the store and the pause lasts longer), see
        ``service/spool.py``. ``pause=False`` opts out of pausing. Concurrent
        snapshots of one container share one pause, and a pause never outlives
        this process (``service/pause.py``). The record returned carries
        ``paused_s``, the seconds the container was held paused. A stopped
        (exited or created) container is read as it is, as ``docker cp`` does:
        there is nothing to pause, which is logged.

        Going over ``size_limit`` bytes (default: the client's) stores nothing. The
        returned record's ``info`` is the catalogue entry the store committed.

        ``exclude`` patterns (``.gitignore`` semantics, relative to ``dir``) and,
        with ``ignore_file``, the lines of ``dir/.docksnapignore`` leave members
        out: they are not stored and ``size`` is the filtered stream's length.
        The result's ``report`` says what was not captured faithfully
        (:mod:`docksnap.service.capture`); with ``strict`` any such member raises
        :class:`~docksnap.errors.CaptureIncompleteError` and nothing is stored.

        ``capture`` chooses how the directory is read (:mod:`docksnap.service.hostcapture`):
        ``"host"`` through the container's root from this host (the engine is
        local and its containers' processes are ours to read), which also keeps
        sub-second mtimes, ``user.*`` attributes and POSIX ACLs; ``"archive"``
        through the engine's archive API; ``"auto"`` (default) the host when it
        can, else the archive, with the reason logged. ``"host"`` that cannot be
        done raises :class:`~docksnap.errors.HostCaptureUnavailableError`. The
        result's ``capture`` says which one was used. Both give the same
        members in the same order with the same headers, except for what the
        archive API drops (docs/METADATA.md).

        ``parent`` makes a host capture incremental: a regular file whose inode,
        size, mtime and ctime (nanoseconds) equal those of the parent's file at
        the same path is stored as the parent's chunks without being read, as
        restic does; the container is paused only for the walk and the reading
        of the other files. ``"auto"`` (default) takes the newest snapshot in the
        store of this container's ``dir``; an id or a record names one; None
        reads every file. A parent of another directory, or with no host-captured
        file in it, is not used (logged); a given id that does not exist raises
        :class:`~docksnap.errors.SnapshotNotFoundError`. The result's ``reuse``
        (:class:`~docksnap.model.CaptureReuse`) counts the files and bytes
        reused and read; it is None for an archive capture, which reads all.
        """
        mode = capture_mode(capture)
        wanted_parent = parent_choice(parent)
        patterns = excludes_mod.combine(exclude)
        path = normalize_path(dir, what="snapshot directory")
        name = options.snapshot_name(name)
        limit = options.size_limit(self._context.size_limit if size_limit is None else size_limit)
        ttl = options.ttl(ttl)
        spool_limit = options.spool_limit(spool_limit)
        async with self._turn:
            state = await self._require_exists()
            if not self.running:
                log.info("container %r is %s: not paused", self.name, describe_stopped(state))
            # Read before the pause: the parent's headers come from the store. Only
            # where host capture may run; a parent given by id must exist anyway.
            parent_files = None
            may_host = mode != "archive" and bool(self._docker.address.uds) and self.running
            if may_host:
                parent_files = await find_parent(
                    self._store, wanted_parent, container=self.name, path=path
                )
            elif wanted_parent not in (None, AUTO):
                await self._store.get(wanted_parent)
            record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir=path, name=name)
            source = SnapshotSource(self.name, str(state.get("Image", "")))
            pause = pause and self.running
            # Nothing can change under the reader of a paused or stopped container.
            still = pause or not self.running or bool(state.get("Paused"))
            budget = SizeLimit(limit, path)
            host: HostCapture | None = None
            async with self._paused(str(state["Id"]), pause) as hold:
                try:
                    if ignore_file:
                        patterns += await read_ignore_file(self._docker, self.name, path)
                    # Compiled (and refused if bad) before the tree holds descriptors.
                    excludes = excludes_mod.Excludes(patterns) if patterns else None
                    tree = await open_host_tree(self._docker, self.name, state, path, mode)
                    capturing = Capture(
                        self._docker,
                        self.name,
                        path,
                        excludes=excludes,
                        paused=still,
                        strict=strict,
                        walked=tree.problems if tree is not None else None,
                    )
                    spooling = _Spooling(hold, spool_directory(self._store.url), spool_limit, pause)
                    with track(self._context.progress, Operation.SNAPSHOT, record.id) as progress:
                        if tree is None:
                            if parent_files is not None:
                                log.info("parent %s not used: archive capture", parent_files.id)
                            info = await self._save_archive(
                                record, source, ttl, capturing, budget, progress, spooling
                            )
                        else:
                            host = HostCapture(
                                tree,
                                capturing,
                                budget,
                                parent_files,
                                recheck=not still,
                                advance=progress.advance,
                            )
                            info = await self._save_host(record, source, ttl, host, spooling)
                except DockerError as exc:
                    if exc.status == 404 and exc.operation == "read archive":
                        raise DirectoryNotFoundError(self.name, path) from exc
                    raise
        return dataclasses.replace(
            info.snapshot,
            info=info,
            report=capturing.report,
            paused_s=round(hold.paused_s, 3),
            capture="archive" if host is None else "host",
            reuse=host.reuse if host is not None else None,
        )

    async def _save_archive(
        self,
        record: DirectorySnapshot,
        source: SnapshotSource,
        ttl: float | None,
        capturing: Capture,
        budget: SizeLimit,
        progress: Tracker,
        spooling: _Spooling,
    ) -> SnapshotInfo:
        """The engine's archive, filtered, limited and read ahead, into ``save``."""
        archive_path = "/." if record.dir == "/" else record.dir + "/."
        async with (
            self._docker.get_archive(self.name, archive_path) as archive,
            spooling.read_ahead(
                # Filtered before the limit: excluded bytes do not count.
                budget.stream(
                    capturing.stream(
                        progress.stream(archive.chunks), on_source_end=spooling.hold.release
                    )
                )
            ) as stream,
        ):
            return await self._store.save(record, stream, source=source, ttl=ttl)

    async def _save_host(
        self,
        record: DirectorySnapshot,
        source: SnapshotSource,
        ttl: float | None,
        host: HostCapture,
        spooling: _Spooling,
    ) -> SnapshotInfo:
        """The host walk's members (unchanged files as the parent's chunks), read
        ahead while paused, into the store member by member."""
        frames = host.frames()
        try:
            async with spooling.read_ahead(frames) as stream:
                return await save_host_members(
                    self._store, record, host.members(stream), source=source, ttl=ttl
                )
        finally:
            await frames.aclose()
            host.close()  # an unstarted generator's aclose runs no finally

    async def snapshot_container(
        self,
        *,
        name: str | None = None,
        pause: bool = True,
        strict: bool = False,
        size_limit: int | None = None,
        ttl: float | None = None,
    ) -> DirectorySnapshot:
        """Snapshot the container's filesystem changes against its image (added,
        changed and deleted files); volumes are not included. The result restores
        with ``start(image, container_snapshot=...)``. Pausing, ``strict``,
        ``size_limit`` and ``ttl`` work as in :meth:`snapshot_directory`.
        """
        name = options.snapshot_name(name)
        limit = options.size_limit(self._context.size_limit if size_limit is None else size_limit)
        ttl = options.ttl(ttl)
        async with self._turn:
            state = await self._require_running()
            async with self._paused(str(state["Id"]), pause) as hold:
                return await cs.capture_container(
                    self._context,
                    self.name,
                    name=name,
                    paused=pause or bool(state.get("Paused")),
                    strict=strict,
                    limit_stream=SizeLimit(limit, "/").stream,
                    unpause=hold.release,
                    ttl=ttl,
                )

    async def restore(
        self,
        snapshots: Iterable[DirectorySnapshot | SnapshotRestore],
        *,
        force: bool = False,
    ) -> list[SnapshotRestore]:
        """Extract ``snapshots`` into this existing container, which anyone may have made.

        Merge semantics, always: files are extracted over the container's own
        (``docker cp`` style, through the archive API), parent target first;
        files the snapshot lacks stay, since masking a directory needs a mount
        that only ``start()`` can add. Meant for a created or stopped container;
        a running one is refused with :class:`ContainerAlreadyRunningError`
        unless ``force=True`` (a warning is logged: its programs may see files
        change under them). Unknown ids fail before anything is written. Not
        atomic: a failure midway leaves what was extracted so far, in a
        container docksnap does not own and so never removes. Returns the plan
        that was applied.
        """
        restores = [
            SnapshotRestore(r.snapshot, mount_point=r.mount_point, merge=True)
            for r in _plan_restores(snapshots)
        ]
        async with self._turn:
            await self._require_exists()
            if self.running and not force:
                raise ContainerAlreadyRunningError(
                    self.name,
                    f"container {self.name!r} is running; restoring into it changes files "
                    "under its programs (force=True to do it anyway)",
                )
            if self.running:
                log.warning(
                    "restoring into running container %r: its programs may see files "
                    "change under them",
                    self.name,
                )
            ids = list(dict.fromkeys(r.snapshot.id for r in restores))
            for snapshot_id in ids:
                await self._store.get(snapshot_id)
            for restore in restores:
                await self._merge_into_container(restore)
        now = time.time()
        for snapshot_id in ids:
            await self._store.touch(snapshot_id, now)
        return restores

    # -- internals --------------------------------------------------------------------

    async def _check_can_publish(self, network: str) -> None:
        info = await self._docker.inspect_network(network)
        if info is None:
            raise InvalidArgumentError(
                f"network {network!r} does not exist on this engine, so ports cannot be "
                "published; create a bridge network (`docker network create NAME`) and use it"
            )
        if info.get("Driver") in ("null", "host"):
            raise InvalidArgumentError(
                f"network {network!r} (driver {info.get('Driver')}) cannot publish ports; "
                "use a bridge network"
            )

    async def _state(self) -> dict[str, Any] | None:
        try:
            info = await self._docker.inspect_container(self.name)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        state: dict[str, Any] = info.get("State") or {}
        state["Image"] = info.get("Image")
        state["Id"] = info.get("Id")
        state["Labels"] = (info.get("Config") or {}).get("Labels") or {}
        state["Mounts"] = info.get("Mounts") or []
        return state

    async def _require_running(self) -> dict[str, Any]:
        state = await self._require_exists()
        if not self.running:
            raise ContainerNotRunningError(
                self.name, f"container {self.name!r} is not running ({describe_stopped(state)})"
            )
        return state

    async def _require_exists(self) -> dict[str, Any]:
        state = await self._state()
        self.running = bool(state and state.get("Running"))
        if state is None:
            raise ContainerNotFoundError(self.name, f"no such container {self.name!r}")
        return state

    def _not_found(self, exc: DockerError) -> Exception:
        if exc.status == 404:
            return ContainerNotFoundError(self.name, f"no such container {self.name!r}")
        return exc

    @contextlib.asynccontextmanager
    async def _paused(self, container_id: str, pause: bool) -> AsyncIterator[PauseHold]:
        """Hold the container paused (shared with concurrent snapshots, see service/pause.py)."""
        if not pause:
            yield no_pause()
            return
        async with paused(self._docker, self._docker.address.url, container_id, self.name) as hold:
            yield hold

    async def _clear_previous(self) -> None:
        """Make room for a new container of this name, refusing to touch a foreign one.

        Also removes restore volumes an interrupted earlier start may have orphaned.
        """
        state = await self._state()
        if state is not None and state.get("Running"):
            raise ContainerAlreadyRunningError(
                self.name, f"container {self.name!r} is already running"
            )
        if state is not None and state["Labels"].get(lbl.MANAGED) != "true":
            raise ContainerError(
                self.name, f"a container named {self.name!r} exists and was not made by docksnap"
            )
        await self._remove_everything()

    async def _create_with_restores(
        self,
        image: str,
        config: dict[str, Any],
        restores: list[SnapshotRestore],
        user_labels: Mapping[str, str],
        *,
        cached: bool,
    ) -> None:
        mounts = []
        cache = self._context.cache if cached else None
        for restore in restores:
            if not restore.merge:
                volume = None
                if cache is not None:
                    volume = await cache.view(restore.snapshot.id, image=image, owner=self.name)
                if volume is None:
                    volume = await self._restore_into_new_volume(image, restore)
                mounts.append(
                    {
                        "Type": "volume",
                        "Source": volume,
                        "Target": restore.target,
                        "VolumeOptions": {"NoCopy": True},
                    }
                )
        config["HostConfig"]["Mounts"] = mounts
        # What was restored where: a later snapshot of that directory can estimate its size.
        restored = json.dumps({r.target: r.snapshot.id for r in restores}, separators=(",", ":"))
        config["Labels"] = lbl.make_labels(
            lbl.Role.APP,
            {**user_labels, **self._context.labels},
            {lbl.RESTORED: restored} if restores else None,
        )
        await self._docker.create_container(self.name, config)
        for restore in restores:
            if restore.merge:
                await self._merge_into_container(restore)

    async def _restore_into_new_volume(self, image: str, restore: SnapshotRestore) -> str:
        """Fill a fresh volume, private to this container, with the snapshot's content.

        Each volume is filled through its own helper, so a parent snapshot's files
        can never land in a nested child's volume: every mount point shows exactly
        its own snapshot.
        """
        volume = RESTORE_VOLUME_PREFIX + uuid.uuid4().hex
        extra = self._context.labels
        await self._docker.create_volume(
            volume, lbl.make_labels(lbl.Role.RESTORE, extra, lbl.creator_fields(self.name))
        )
        helper_labels = lbl.make_labels(lbl.Role.HELPER, extra)
        async with (
            self._store.open(restore.snapshot.id) as reader,
            helper_container(self._docker, image, volume, helper_labels) as helper,
        ):
            await self._put(restore.snapshot.id, reader, helper, HELPER_MOUNT)
        return volume

    async def _merge_into_container(self, restore: SnapshotRestore) -> None:
        """Extract the snapshot over the container's own files (the seed's way),
        never through a symlink those files have (:class:`ImageLinkGuard`)."""
        await self._make_dirs(restore.target)

        async def stat(path: str) -> dict[str, Any] | None:
            return await self._docker.stat_path(self.name, path)

        async def put(segment: AsyncIterator[bytes]) -> None:
            await self._docker.put_archive(self.name, restore.target, segment)

        hook = self._context.progress
        snapshot_id = restore.snapshot.id
        async with self._store.open(snapshot_id) as reader:
            with track(hook, Operation.RESTORE, snapshot_id, reader.size) as progress:
                await ImageLinkGuard(progress.stream(reader), stat, restore).extract(put)

    async def _put(self, snapshot_id: str, reader: TarReader, container: str, path: str) -> None:
        """Stream a snapshot being read into ``path`` of a created container."""
        hook = self._context.progress
        with track(hook, Operation.RESTORE, snapshot_id, reader.size) as progress:
            await self._docker.put_archive(
                container, path, progress.stream(reader), size=reader.size
            )

    async def _make_dirs(self, path: str) -> None:
        """``mkdir -p path`` in the created container, touching no existing directory."""
        missing: list[str] = []
        parent = path
        while parent != "/" and await self._docker.stat_path(self.name, parent) is None:
            missing.insert(0, parent.rsplit("/", 1)[1])
            parent = parent.rsplit("/", 1)[0] or "/"
        if missing:
            tar = build_dirs_tar(["/".join(missing)])
            await self._docker.put_archive(self.name, parent, _once(tar), size=len(tar))

    async def _remove_everything(self) -> None:
        """Remove the container, then its restore volumes (they are free only after).

        A create request cancelled in flight (Ctrl-C) may still be carried out by
        the engine after the first removal, holding the volumes (409 "in use");
        so removal repeats until the volumes go. A helper left by a docksnap
        killed mid-restore also holds its volume: it goes first.
        """
        for attempt in range(_CLEANUP_ATTEMPTS):
            await self._docker.remove_container(self.name)
            await cs.remove_owned_images(self._docker, self.name)
            volumes = await self._docker.list_volumes(
                {lbl.ROLE: str(lbl.Role.RESTORE), lbl.OWNER: self.name}
            )
            # A restore cache view before its upper/work volume: the view mounts it.
            volumes.sort(key=lambda v: lbl.UPPER not in (v.get("Labels") or {}))
            try:
                for volume in volumes:
                    await remove_helpers_of(self._docker, volume["Name"])
                    await self._docker.remove_volume(volume["Name"])
                return
            except DockerError as exc:
                if exc.status != 409 or attempt == _CLEANUP_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))


def describe_stopped(state: Mapping[str, Any]) -> str:
    """``exited 3 s ago, code 0``, ``created, never started``: why a container is not running."""
    status = str(state.get("Status") or "stopped")
    if status == "created":
        return "created, never started"
    if status != "exited":
        return status
    code = state.get("ExitCode")
    finished = _engine_time(str(state.get("FinishedAt") or ""))
    if finished is None:
        return f"exited, code {code}"
    return f"exited {_ago(time.time() - finished)} ago, code {code}"


def _engine_time(text: str) -> float | None:
    """The engine's RFC 3339 times have nanoseconds, which ``fromisoformat`` refuses."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?Z", text)
    if not match or text.startswith("0001-"):
        return None
    return datetime.fromisoformat(match[1]).replace(tzinfo=UTC).timestamp()


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length} {unit}"
    return f"{seconds} s"


def _plan_restores(items: Iterable[DirectorySnapshot | SnapshotRestore]) -> list[SnapshotRestore]:
    restores = [SnapshotRestore.of(item) for item in items]
    targets = [r.target for r in restores]
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        raise InvalidArgumentError(f"two snapshots restore to the same mount point: {duplicates}")
    # Parent first: depth order, stable for equal depths.
    return sorted(restores, key=lambda r: 0 if r.target == "/" else r.target.count("/"))


def _overlay_refused(exc: BaseException) -> bool:
    """Whether a start failed because the engine could not mount a local-driver volume
    (the only kind with mount options docksnap makes is a restore cache view)."""
    return (
        isinstance(exc, DockerError)
        and exc.operation == "start container"
        and "failed to mount local volume" in exc.message
    )


def _network_advice(engine_message: str) -> str:
    # An engine run without a usable default bridge (no docker0, as with
    # --iptables=false on some hosts) fails only here, at start, in its own words.
    if "on network" not in engine_message and "bridge" not in engine_message:
        return ""
    return (
        " (the engine could not attach the container to that network; a user-defined"
        " bridge network, made by `docker network create NAME`, usually works)"
    )


def _check_network(run: runopts.RunOptions, enable_internet: bool) -> None:
    if enable_internet and run.network is not None:
        raise InvalidArgumentError(
            f"enable_internet=True and network={run.network!r} conflict; give one of them"
        )
    if run.publish and run.network is None and not enable_internet:
        raise InvalidArgumentError(
            "publishing ports needs a network, and containers have none by default: "
            "pass network=NAME (a bridge network, e.g. from `docker network create`) "
            "or enable_internet=True"
        )


def _check_overlaps(restores: list[SnapshotRestore], volume_targets: list[str]) -> None:
    """A restore may not share its tree with a ``-v`` mount: its files would land in the host's."""
    for restore in restores:
        for target in volume_targets:
            if _within(restore.target, target) or _within(target, restore.target):
                raise InvalidArgumentError(
                    f"restore mount point {restore.target} overlaps the volume mounted at {target}"
                )


def _within(path: str, parent: str) -> bool:
    return path == parent or parent == "/" or path.startswith(parent + "/")


def _container_config(
    image: str,
    entrypoint: Sequence[str] | None,
    env: Mapping[str, str] | None,
    enable_internet: bool,
) -> dict[str, Any]:
    if not isinstance(image, str) or not image:
        raise InvalidArgumentError(f"image must be a non-empty string, got {image!r}")
    config: dict[str, Any] = {"Image": image, "Env": _env_list(env or {})}
    if entrypoint is not None:
        if isinstance(entrypoint, str) or not all(isinstance(a, str) for a in entrypoint):
            raise InvalidArgumentError(f"entrypoint must be a list of strings, got {entrypoint!r}")
        config["Entrypoint"] = list(entrypoint)
        config["Cmd"] = []
    config["HostConfig"] = {"NetworkMode": "bridge" if enable_internet else "none"}
    if not enable_internet:
        config["NetworkDisabled"] = True
    return config


def _env_list(env: Mapping[str, str]) -> list[str]:
    pairs = []
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidArgumentError(f"environment variable name {key!r} is invalid")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgumentError(f"environment variable {key} has an invalid value {value!r}")
        pairs.append(f"{key}={value}")
    return pairs


@dataclass(frozen=True, slots=True)
class _Spooling:
    """How one snapshot reads ahead of its store: unpause (``hold``) at the source's
    end, spool the rest under ``directory`` up to ``limit`` bytes."""

    hold: PauseHold
    directory: Path
    limit: int
    paused: bool

    def read_ahead(
        self, source: AsyncIterator[bytes]
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return read_ahead(
            source,
            on_end=self.hold.release,
            directory=self.directory,
            limit=self.limit,
            hold=self.paused,
        )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data

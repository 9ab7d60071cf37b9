"""One named Docker container, as the workerd container API sees it.

Operations that change the container (start, snapshot, signal, destroy) take
the container's turn: they run one at a time, first come first served, as the
seed's "RPC turn" does. ``asyncio.Lock`` wakes waiters in FIFO order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    SnapshotTooLargeError,
    StoreError,
)
from docksnap.model import (
    DirectorySnapshot,
    SnapshotRestore,
    SnapshotSource,
    new_snapshot_id,
    normalize_path,
)
from docksnap.service import options
from docksnap.service.orphans import remove_helpers_of
from docksnap.service.progress import Operation, ProgressHook, track
from docksnap.service.restore_plan import check_restored_symlinks
from docksnap.store import SnapshotStore, TarReader
from docksnap.tarstream import build_dirs_tar

log = logging.getLogger(__name__)

RESTORE_VOLUME_PREFIX = "docksnap-restore-"
_CLEANUP_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class ContainerContext:
    """What every container handle of one client shares; built once by the client.

    ``labels`` are the client's extra labels for what it creates, ``size_limit``
    the default snapshot limit in bytes, ``progress`` the client's hook (or None).
    """

    engine: DockerClient
    store: SnapshotStore
    labels: Mapping[str, str]
    size_limit: int
    progress: ProgressHook | None = None


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

    # -- lifecycle ------------------------------------------------------------------

    async def start(
        self,
        image: str,
        *,
        entrypoint: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        enable_internet: bool = False,
        snapshots: Iterable[DirectorySnapshot | SnapshotRestore] = (),
    ) -> None:
        """Create the container, restore ``snapshots`` into it, then start it.

        Restores are applied parent first (by the depth of their target). Each
        distinct snapshot id is looked up once, before anything is created, so
        an unknown id fails first. If anything fails, the container and every
        volume made for it are removed before the error propagates: no container
        is left half-started.
        """
        restores = _plan_restores(snapshots)
        config = _container_config(image, entrypoint, env, enable_internet)
        ids = list(dict.fromkeys(r.snapshot.id for r in restores))
        async with self._turn:
            await self._clear_previous()
            for snapshot_id in ids:
                await self._store.get(snapshot_id)
            await check_restored_symlinks(self._store, restores)
            try:
                await self._create_with_restores(image, config, restores)
                await self._docker.start_container(self.name)
            except BaseException as exc:
                await asyncio.shield(self._remove_everything())
                if isinstance(exc, DockerError) and exc.operation == "start container":
                    raise ContainerStartError(
                        self.name, f"container {self.name!r} failed to start: {exc.message}"
                    ) from exc
                raise
            self.running = True
        await self._record_use(ids)

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
            await self._require_running("signal()")
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
    ) -> DirectorySnapshot:
        """Snapshot ``dir`` of the running container into the client's store.

        The container is paused while its archive is read, so the snapshot is
        consistent (as ``docker commit`` does); ``pause=False`` opts out. Going
        over ``size_limit`` bytes (default: the client's) stores nothing. The
        returned record's ``info`` is the catalogue entry the store committed.
        """
        path = normalize_path(dir, what="snapshot directory")
        name = options.snapshot_name(name)
        limit = options.size_limit(self._context.size_limit if size_limit is None else size_limit)
        ttl = options.ttl(ttl)
        async with self._turn:
            state = await self._require_running("snapshot_directory()")
            record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir=path, name=name)
            source = SnapshotSource(self.name, str(state.get("Image", "")))
            async with self._paused(pause and not state.get("Paused")) as unpause:
                archive_path = "/." if path == "/" else path + "/."
                try:
                    with track(self._context.progress, Operation.SNAPSHOT, record.id) as progress:
                        async with self._docker.get_archive(self.name, archive_path) as archive:
                            stream = _limited(progress.stream(archive.chunks), limit, path, unpause)
                            info = await self._store.save(record, stream, source=source, ttl=ttl)
                except DockerError as exc:
                    if exc.status == 404 and exc.operation == "read archive":
                        raise DirectoryNotFoundError(self.name, path) from exc
                    raise
        return dataclasses.replace(info.snapshot, info=info)

    # -- internals --------------------------------------------------------------------

    async def _state(self) -> dict[str, Any] | None:
        try:
            info = await self._docker.inspect_container(self.name)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        state: dict[str, Any] = info.get("State") or {}
        state["Image"] = info.get("Image")
        state["Labels"] = (info.get("Config") or {}).get("Labels") or {}
        return state

    async def _require_running(self, operation: str) -> dict[str, Any]:
        state = await self._state()
        self.running = bool(state and state.get("Running"))
        if not self.running or state is None:
            raise ContainerNotRunningError(
                self.name, f"{operation} requires a running container; {self.name!r} is not running"
            )
        return state

    def _not_found(self, exc: DockerError) -> Exception:
        if exc.status == 404:
            return ContainerNotFoundError(self.name, f"no container named {self.name!r}")
        return exc

    @contextlib.asynccontextmanager
    async def _paused(self, pause: bool) -> AsyncIterator[_Once]:
        """Pause for the body; yield a callable that unpauses early (when the stream ends)."""
        if not pause:
            yield _Once(None)
            return
        await self._docker.pause_container(self.name)
        unpause = _Once(lambda: self._docker.unpause_container(self.name))
        try:
            yield unpause
        finally:
            await asyncio.shield(unpause())

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
        self, image: str, config: dict[str, Any], restores: list[SnapshotRestore]
    ) -> None:
        mounts = []
        for restore in restores:
            if not restore.merge:
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
        config["Labels"] = lbl.make_labels(lbl.Role.APP, self._context.labels)
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
        """Extract the snapshot over the created container's own files (the seed's way)."""
        await self._make_dirs(restore.target)
        async with self._store.open(restore.snapshot.id) as reader:
            await self._put(restore.snapshot.id, reader, self.name, restore.target)

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
            volumes = await self._docker.list_volumes(
                {lbl.ROLE: str(lbl.Role.RESTORE), lbl.OWNER: self.name}
            )
            try:
                for volume in volumes:
                    await remove_helpers_of(self._docker, volume["Name"])
                    await self._docker.remove_volume(volume["Name"])
                return
            except DockerError as exc:
                if exc.status != 409 or attempt == _CLEANUP_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))


class _Once:
    """Run an async action at most once (unpausing early, then again in ``finally``)."""

    def __init__(self, action: Any) -> None:
        self._action = action

    async def __call__(self) -> None:
        action, self._action = self._action, None
        if action is not None:
            await action()


def _plan_restores(items: Iterable[DirectorySnapshot | SnapshotRestore]) -> list[SnapshotRestore]:
    restores = [SnapshotRestore.of(item) for item in items]
    targets = [r.target for r in restores]
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        raise InvalidArgumentError(f"two snapshots restore to the same mount point: {duplicates}")
    # Parent first: depth order, stable for equal depths.
    return sorted(restores, key=lambda r: 0 if r.target == "/" else r.target.count("/"))


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


async def _limited(
    chunks: AsyncIterator[bytes], limit: int, path: str, on_end: _Once
) -> AsyncIterator[bytes]:
    """Pass the archive through, failing as soon as it exceeds ``limit`` bytes.

    Checked before a piece is handed on, so a store never receives a byte past
    the limit. When the stream ends the container is unpaused at once, without
    waiting for the store to finish writing.
    """
    total = 0
    async for piece in chunks:
        total += len(piece)
        if total > limit:
            raise SnapshotTooLargeError(path, limit)
        yield piece
    await on_end()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data

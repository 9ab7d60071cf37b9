"""The benchmark cases: one :class:`Case` per way of moving a directory in or out.

Every case is an async function of a :class:`Round` (one data set, one repetition, one
fresh store) that returns a :class:`Sample`. Cases that need a snapshot they did not
take themselves ask the round for it (:meth:`Round.chunked_snapshot` and friends): run
in the usual order they reuse the one the ``snapshot`` case took; run alone (``--only``)
they make one, untimed.

docksnap itself is always driven through :mod:`_worker`, a fresh process per operation,
so each peak RSS is that operation's own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias
from urllib.parse import unquote, urlsplit

import _data
import _worker
from _engine import BENCH_LABELS, IMAGE, SLEEP, Engine, docker_cli, file_pieces

import docksnap
from docksnap.docker import DockerClient
from docksnap.service.capture import Capture, SizeLimit
from docksnap.service.hostcapture import HostCapture, open_host_tree

Direction = Literal["out", "in"]  # out of a container (snapshot side) or into one (restore)
SEED_STORE = "docker-volume:"


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed run of a case."""

    seconds: float
    new_bytes_stored: int | None = None  # stats().stored_bytes after - before
    new_disk_bytes: int | None = None  # file:// stores: every object (manifests, indexes too)
    peak_rss_bytes: int | None = None
    rss_start_bytes: int | None = None  # the worker's RSS when the operation began
    extra: dict[str, float] = field(default_factory=dict)


CaseFn: TypeAlias = "Callable[[Round], Awaitable[Sample]]"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    direction: Direction
    help: str
    run: CaseFn
    chunked: bool = False  # needs docksnap's content-addressed store


CASES: dict[str, Case] = {}


def case(
    name: str, direction: Direction, help: str, *, chunked: bool = False
) -> Callable[[CaseFn], CaseFn]:
    def register(fn: CaseFn) -> CaseFn:
        CASES[name] = Case(name, direction, help, fn, chunked)
        return fn

    return register


def chunked_store_available() -> bool:
    """Whether docksnap's content-addressed store can be imported (it was written late)."""
    try:
        from docksnap.store.chunked import ChunkedStore  # noqa: F401
    except ImportError:
        return False
    return True


class RestoreMismatchError(RuntimeError):
    """A restored directory's files differ from the source's."""


# --- shared context ------------------------------------------------------------------------


@dataclass
class Prepared:
    """A data set built in the source container, plus what its cases need on the host."""

    spec: _data.DatasetSpec
    bytes: int  # length of the directory's tar stream (every case moves this much)
    tar_path: Path | None = None  # the GET stream held in a file (raw_put, cp_in_stream)
    host_dir: Path | None = None  # a `docker cp` copy on the host (docker_cp_in)
    digest: str | None = None  # tree digest in the source, to check restores


@dataclass
class Bench:
    """What every round shares: the engine, the source container, stores, clients."""

    docker: DockerClient
    engine: Engine
    source: str  # the running container that holds every data set under /data
    tmp: Path
    store_base: str
    profile_dir: Path | None = None
    prepared: dict[str, Prepared] = field(default_factory=dict)
    _control: docksnap.Client | None = None

    def new_store(self, tag: str) -> str:
        """A store URL nothing has used yet, under the run's store base."""
        base = urlsplit(self.store_base)
        sub = f"{base.path.rstrip('/')}/{self.engine.run_id}-{tag}"
        url = base._replace(path=sub).geturl()  # keeps ?endpoint=… after the path
        path = _local_path(url)
        if path is not None:
            # docksnap's LocalObjectStore creates the store directory but not its parent.
            path.parent.mkdir(parents=True, exist_ok=True)
        return url

    async def op(
        self,
        op: _worker.Op,
        *,
        store: str,
        container: str,
        directory: str = "",
        snapshot: docksnap.DirectorySnapshot | None = None,
        profile: Path | None = None,
        restore_cache: str = "off",
        capture: str = "archive",
    ) -> _worker.Result:
        """Run one docksnap operation in a fresh worker process.

        Restores stream (``restore_cache="off"``) unless asked: the restore cases
        measure the copy; ``warm_restore`` measures the cache.
        """
        if op == "restore":
            self.engine.docksnap_containers.append(container)
        request = _worker.Request(
            op=op,
            store=store,
            labels=dict(BENCH_LABELS),
            container=container,
            dir=directory,
            image=IMAGE,
            entrypoint=list(SLEEP),
            snapshot=snapshot.to_dict() if snapshot else None,
            profile=str(profile) if profile else None,
            restore_cache=restore_cache,
            capture=capture,
        )
        return await _worker.call(request)

    async def snapshot(
        self, store: str, directory: str, profile: Path | None = None, capture: str = "archive"
    ) -> tuple[_worker.Result, docksnap.DirectorySnapshot]:
        result = await self.op(
            "snapshot",
            store=store,
            container=self.source,
            directory=directory,
            profile=profile,
            capture=capture,
        )
        return result, docksnap.DirectorySnapshot.from_dict(result.snapshot)

    def control(self) -> docksnap.Client:
        """A client for destroying restored containers and seed snapshots."""
        if self._control is None:
            self._control = docksnap.Client(store=SEED_STORE, labels=BENCH_LABELS)
        return self._control

    async def destroy(self, name: str) -> None:
        """Remove a docksnap-started container and its restore volumes."""
        await self.control().container(name).destroy()
        self.engine.docksnap_containers.remove(name)

    async def close(self) -> None:
        for name in self.engine.docksnap_containers[:]:
            await self.destroy(name)
        # The restore cache outlives restores by design; the bench's entries go now.
        await self.control().cache.prune()
        if self._control is not None:
            await self._control.close()
            self._control = None


@dataclass
class Round:
    """One data set, one repetition: a fresh store, and snapshots cases can share."""

    bench: Bench
    data: Prepared
    rep: int
    _store: str | None = None
    _clients: dict[str, docksnap.Client] = field(default_factory=dict)
    chunked: docksnap.DirectorySnapshot | None = None  # this data set, in `store`
    base: docksnap.DirectorySnapshot | None = None  # the base data set, in `store`
    seed: docksnap.DirectorySnapshot | None = None  # this data set, in the volume store
    restic_repo: Path | None = None  # a local restic repository holding one backup

    @property
    def spec(self) -> _data.DatasetSpec:
        return self.data.spec

    @property
    def store(self) -> str:
        if self._store is None:
            self._store = self.bench.new_store(f"{self.spec.name}-r{self.rep}")
        return self._store

    async def chunked_snapshot(self) -> docksnap.DirectorySnapshot:
        if self.chunked is None:
            _, self.chunked = await self.bench.snapshot(self.store, self.spec.dir)
        return self.chunked

    async def base_snapshot(self) -> docksnap.DirectorySnapshot:
        if self.base is None:
            assert self.spec.base is not None, f"{self.spec.name} has no base data set"
            base_dir = self.bench.prepared[self.spec.base].spec.dir
            _, self.base = await self.bench.snapshot(self.store, base_dir)
        return self.base

    async def seed_snapshot(self) -> docksnap.DirectorySnapshot:
        if self.seed is None:
            _, self.seed = await self.bench.snapshot(SEED_STORE, self.spec.dir)
        return self.seed

    async def stored(self) -> tuple[int, int | None]:
        """(stats().stored_bytes, bytes of every object on disk or None) of the store."""
        if self.store not in self._clients:
            self._clients[self.store] = docksnap.Client(store=self.store, labels=BENCH_LABELS)
        stats = await self._clients[self.store].snapshots.stats()
        path = _local_path(self.store)
        disk = await asyncio.to_thread(_tree_bytes, path) if path else None
        return stats.stored_bytes, disk

    async def snapshot_measured(self, directory: str) -> tuple[Sample, docksnap.DirectorySnapshot]:
        """Snapshot ``directory`` into the round's store; time, RSS and new bytes."""
        stored0, disk0 = await self.stored()
        result, record = await self.bench.snapshot(self.store, directory)
        stored1, disk1 = await self.stored()
        sample = Sample(
            result.seconds,
            new_bytes_stored=stored1 - stored0,
            new_disk_bytes=None if disk0 is None or disk1 is None else disk1 - disk0,
            peak_rss_bytes=result.peak_rss_bytes,
            rss_start_bytes=result.rss_start_bytes,
            extra={"cpu_s": result.cpu_seconds, **_pause(record)},
        )
        return sample, record

    async def restore_measured(
        self, store: str, snapshot: docksnap.DirectorySnapshot, restore_cache: str = "off"
    ) -> Sample:
        """start() a new container with ``snapshot``; check its files on the first round."""
        name = self.bench.engine.name("restore")
        result = await self.bench.op(
            "restore", store=store, container=name, snapshot=snapshot, restore_cache=restore_cache
        )
        try:
            if self.rep == 0 and self.spec.verify_restore and self.data.digest:
                got = await self.bench.engine.tree_digest(name, self.spec.dir)
                if got != self.data.digest:
                    raise RestoreMismatchError(f"{self.spec.name}: restored files differ ({store})")
        finally:
            await self.bench.destroy(name)
        return Sample(
            result.seconds,
            peak_rss_bytes=result.peak_rss_bytes,
            rss_start_bytes=result.rss_start_bytes,
            extra={"cpu_s": result.cpu_seconds},
        )

    async def close(self) -> None:
        """Drop the round's stores: the seed snapshot's volumes, the chunked store."""
        if self.seed is not None:
            await self.bench.control().snapshots.delete(self.seed.id)
        for client in self._clients.values():
            await client.close()
        if self._store is not None:
            await remove_store(self._store)
        if self.restic_repo is not None:
            await asyncio.to_thread(shutil.rmtree, self.restic_repo, True)


def _pause(record: docksnap.DirectorySnapshot) -> dict[str, float]:
    """``pause_s``: how long the snapshot held the source container paused."""
    return {} if record.paused_s is None else {"pause_s": record.paused_s}


def _local_path(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def _tree_bytes(path: Path) -> int:
    return sum(
        os.lstat(os.path.join(root, name)).st_size
        for root, _, names in os.walk(path)
        for name in names
    )


async def remove_store(url: str) -> None:
    """Delete a store the bench made: the directory, or every snapshot then gc."""
    path = _local_path(url)
    if path is not None:
        await asyncio.to_thread(shutil.rmtree, path, True)
        return
    async with docksnap.Client(store=url, labels=BENCH_LABELS) as client:
        async for info in client.snapshots.list():
            await client.snapshots.delete(info.id)
        await client.snapshots.gc(grace=0)


def _clock() -> float:
    return time.perf_counter()


# --- the engine's own limits ------------------------------------------------------------------


@case("raw_get", "out", "GET /archive via docksnap's DockerClient (identity) to nowhere")
async def raw_get(r: Round) -> Sample:
    t0, n = _clock(), 0
    async with r.bench.docker.get_archive(r.bench.source, r.spec.dir + "/.") as archive:
        async for piece in archive.chunks:
            n += len(piece)
    seconds = _clock() - t0
    if n != r.data.bytes:
        raise RuntimeError(f"{r.spec.name}: GET gave {n} bytes, expected {r.data.bytes}")
    return Sample(seconds)


@case(
    "raw_host_read",
    "out",
    "host capture's tar stream (walk + read through /proc/<pid>/root) to nowhere",
)
async def raw_host_read(r: Round) -> Sample:
    docker = r.bench.docker
    info = await docker.inspect_container(r.bench.source)
    state = {**info["State"], "Id": info["Id"], "Mounts": info.get("Mounts") or []}
    t0, n = _clock(), 0
    tree = await open_host_tree(docker, r.bench.source, state, r.spec.dir, "host")
    assert tree is not None
    capture = Capture(docker, r.bench.source, r.spec.dir, walked=tree.problems)
    host = HostCapture(tree, capture, SizeLimit(2**62, r.spec.dir), None, recheck=False)
    async for piece in host.frames():
        n += len(piece)
    seconds = _clock() - t0
    # Sub-second mtimes add a PAX header (1 KiB) per member to the engine's stream.
    if n < r.data.bytes:
        raise RuntimeError(f"{r.spec.name}: host read gave {n} bytes, GET {r.data.bytes}")
    return Sample(seconds)


async def _restore_like(r: Round, fill: Callable[[str], Awaitable[None]]) -> Sample:
    """Time create volume + create container + ``fill(container)`` + start."""
    engine = r.bench.engine
    t0 = _clock()
    async with engine.target(r.spec.dir) as (_, container):
        t1 = _clock()
        await fill(container)
        t2 = _clock()
        await r.bench.docker.start_container(container)
        t3 = _clock()
    return Sample(t3 - t0, extra={"fill_s": t2 - t1})


@case("raw_put", "in", "create + PUT /archive of the tar held in a file + start")
async def raw_put(r: Round) -> Sample:
    tar = _need(r.data.tar_path, "tar_path")

    async def fill(container: str) -> None:
        await r.bench.docker.put_archive(
            container, r.spec.dir, file_pieces(tar), size=tar.stat().st_size
        )

    return await _restore_like(r, fill)


# --- the docker CLI, as users run it ----------------------------------------------------------


@case("docker_cp_out", "out", "docker cp c:/dir /host/dir (extracts on the host)")
async def docker_cp_out(r: Round) -> Sample:
    dest = r.bench.tmp / f"cp-out-{r.spec.name}-{r.rep}"
    t0 = _clock()
    await docker_cli("cp", f"{r.bench.source}:{r.spec.dir}", str(dest))
    seconds = _clock() - t0
    await asyncio.to_thread(shutil.rmtree, dest, True)
    return Sample(seconds)


@case("docker_cp_out_stream", "out", "docker cp c:/dir - > /dev/null (stream only)")
async def docker_cp_out_stream(r: Round) -> Sample:
    t0 = _clock()
    await docker_cli("cp", f"{r.bench.source}:{r.spec.dir}", "-")
    return Sample(_clock() - t0)


@case("docker_cp_in", "in", "create + docker cp /host/dir/. c:/dir + start")
async def docker_cp_in(r: Round) -> Sample:
    host_dir = _need(r.data.host_dir, "host_dir")

    async def fill(container: str) -> None:
        await docker_cli("cp", f"{host_dir}/.", f"{container}:{r.spec.dir}")

    return await _restore_like(r, fill)


@case("docker_cp_in_stream", "in", "create + docker cp - c:/dir < file.tar + start")
async def docker_cp_in_stream(r: Round) -> Sample:
    tar = _need(r.data.tar_path, "tar_path")

    async def fill(container: str) -> None:
        stdin = await asyncio.to_thread(tar.open, "rb")
        try:
            await docker_cli("cp", "-", f"{container}:{r.spec.dir}", stdin=stdin)
        finally:
            stdin.close()

    return await _restore_like(r, fill)


# --- docksnap ---------------------------------------------------------------------------------


@case("seed_snapshot", "out", "docksnap snapshot_directory(), store docker-volume: (the seed)")
async def seed_snapshot(r: Round) -> Sample:
    if r.seed is not None:
        await r.bench.control().snapshots.delete(r.seed.id)
    result, r.seed = await r.bench.snapshot(SEED_STORE, r.spec.dir)
    return Sample(
        result.seconds,
        peak_rss_bytes=result.peak_rss_bytes,
        rss_start_bytes=result.rss_start_bytes,
        extra={"cpu_s": result.cpu_seconds, **_pause(r.seed)},
    )


@case("seed_restore", "in", "docksnap start() with the snapshot, store docker-volume:")
async def seed_restore(r: Round) -> Sample:
    return await r.restore_measured(SEED_STORE, await r.seed_snapshot())


@case("snapshot", "out", "docksnap snapshot_directory() into a fresh chunked store", chunked=True)
async def snapshot(r: Round) -> Sample:
    sample, r.chunked = await r.snapshot_measured(r.spec.dir)
    return sample


@case(
    "snapshot_host",
    "out",
    "snapshot_directory(capture='host'): read through /proc/<pid>/root, fresh chunked store",
    chunked=True,
)
async def snapshot_host(r: Round) -> Sample:
    store = r.bench.new_store(f"{r.spec.name}-r{r.rep}-host")
    try:
        result, record = await r.bench.snapshot(store, r.spec.dir, capture="host")
    finally:
        await remove_store(store)
    if record.capture != "host":
        raise RuntimeError(f"{r.spec.name}: host capture fell back to {record.capture}")
    return Sample(
        result.seconds,
        peak_rss_bytes=result.peak_rss_bytes,
        rss_start_bytes=result.rss_start_bytes,
        extra={"cpu_s": result.cpu_seconds, **_pause(record)},
    )


@case("resnapshot_unchanged", "out", "snapshot again, nothing changed (same store)", chunked=True)
async def resnapshot_unchanged(r: Round) -> Sample:
    await r.chunked_snapshot()
    sample, _ = await r.snapshot_measured(r.spec.dir)
    return sample


async def _host_snapshot(r: Round, store: str, directory: str) -> Sample:
    """A host capture of ``directory`` into ``store`` (parent: the newest snapshot of it)."""
    result, record = await r.bench.snapshot(store, directory, capture="host")
    if record.capture != "host":
        raise RuntimeError(f"{r.spec.name}: host capture fell back to {record.capture}")
    reuse = result.reuse or {}
    return Sample(
        result.seconds,
        peak_rss_bytes=result.peak_rss_bytes,
        rss_start_bytes=result.rss_start_bytes,
        extra={
            "cpu_s": result.cpu_seconds,
            **_pause(record),
            **{k: float(v) for k, v in reuse.items() if k != "parent" and v is not None},
        },
    )


@case(
    "resnapshot_unchanged_host",
    "out",
    "host capture again, nothing changed: every file reused from the parent, none read",
    chunked=True,
)
async def resnapshot_unchanged_host(r: Round) -> Sample:
    store = r.bench.new_store(f"{r.spec.name}-r{r.rep}-host-unchanged")
    try:
        await _host_snapshot(r, store, r.spec.dir)  # the parent: a full read, not timed
        sample = await _host_snapshot(r, store, r.spec.dir)
    finally:
        await remove_store(store)
    if sample.extra.get("read_files", 0) or not sample.extra.get("reused_files"):
        raise RuntimeError(f"{r.spec.name}: unchanged re-snapshot read files: {sample.extra}")
    return sample


@case(
    "resnapshot_incremental_host",
    "out",
    "host capture after ~1% changed in place (parent: the same directory before)",
    chunked=True,
)
async def resnapshot_incremental_host(r: Round) -> Sample:
    """A copy of the data set (so other cases keep theirs), snapshotted, changed by
    about 1 % of its bytes, snapshotted again: only the second is timed."""
    copy = f"{r.spec.dir}-incr{r.rep}"
    store = r.bench.new_store(f"{r.spec.name}-r{r.rep}-host-incr")
    engine = r.bench.engine
    await engine.exec(r.bench.source, f"rm -rf {copy} && cp -a {r.spec.dir} {copy}")
    try:
        await _host_snapshot(r, store, copy)
        await engine.exec(r.bench.source, _one_percent(r.spec, copy, r.data.bytes))
        sample = await _host_snapshot(r, store, copy)
    finally:
        await engine.exec(r.bench.source, f"rm -rf {copy}")
        await remove_store(store)
    if not sample.extra.get("reused_files"):
        raise RuntimeError(f"{r.spec.name}: incremental re-snapshot reused nothing")
    return sample


def _one_percent(spec: _data.DatasetSpec, root: str, size: int) -> str:
    """Shell that changes about 1 % of ``root``'s bytes: a new file of 1 % of them, plus,
    in a tree of many files, 500 lines appended to one and one directory deleted
    (the ``incremental`` data set's change)."""
    script = f"head -c {size // 100} /dev/urandom > {root}/added-1pct.bin"
    if len(spec.layout.files) > 100:
        change = _data.incremental_mutation(spec.layout, 0)
        script += (
            f" && seq 1 {change.append_lines} >> {root}/{change.append_to}"
            f" && rm -rf {root}/{change.delete_dir}"
        )
    return script


@case(
    "resnapshot_incremental", "out", "snapshot after ~1% changed, base already stored", chunked=True
)
async def resnapshot_incremental(r: Round) -> Sample:
    await r.base_snapshot()
    sample, _ = await r.snapshot_measured(r.spec.dir)
    return sample


@case(
    "restore", "in", "docksnap start() of a new container with the snapshot (chunked)", chunked=True
)
async def restore(r: Round) -> Sample:
    return await r.restore_measured(r.store, await r.chunked_snapshot())


@case(
    "warm_restore",
    "in",
    "start() again from a snapshot in the restore cache: an overlay view, no copy (chunked)",
    chunked=True,
)
async def warm_restore(r: Round) -> Sample:
    snapshot = await r.chunked_snapshot()
    name = r.bench.engine.name("fill")  # the first restore fills the cache; not timed
    await r.bench.op(
        "restore", store=r.store, container=name, snapshot=snapshot, restore_cache="auto"
    )
    await r.bench.destroy(name)
    return await r.restore_measured(r.store, snapshot, restore_cache="auto")


@case("create_start", "in", "docksnap start() with no snapshot: the fixed cost of a container")
async def create_start(r: Round) -> Sample:
    name = r.bench.engine.name("bare")
    result = await r.bench.op("restore", store=SEED_STORE, container=name)
    await r.bench.destroy(name)
    return Sample(
        result.seconds,
        peak_rss_bytes=result.peak_rss_bytes,
        rss_start_bytes=result.rss_start_bytes,
    )


# --- restic, the peer users pick for deduplicated backups -----------------------------------

RESTIC_CASES = frozenset({"restic_backup", "restic_backup_unchanged", "restic_restore"})


async def restic(bench: Bench, *args: str) -> None:
    """Run Debian's ``restic`` quietly; its cache lives in the bench's temp dir."""
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "docksnap-bench",
        "RESTIC_CACHE_DIR": str(bench.tmp / "restic-cache"),
    }
    proc = await asyncio.create_subprocess_exec(
        "restic",
        "--quiet",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"restic {' '.join(args)} failed: {err.decode(errors='replace')}")


async def _restic_first_backup(r: Round) -> float:
    """A fresh repository and a first backup of the host copy; the backup's seconds."""
    host_dir = _need(r.data.host_dir, "host_dir")
    if r.restic_repo is not None:
        await asyncio.to_thread(shutil.rmtree, r.restic_repo, True)
    r.restic_repo = r.bench.tmp / f"restic-{r.spec.name}-{r.rep}"
    await restic(r.bench, "init", "--repo", str(r.restic_repo))
    t0 = _clock()
    await restic(r.bench, "backup", "--repo", str(r.restic_repo), str(host_dir))
    return _clock() - t0


@case("restic_backup", "out", "restic backup of a host copy into a fresh local repository")
async def restic_backup(r: Round) -> Sample:
    return Sample(await _restic_first_backup(r))


@case("restic_backup_unchanged", "out", "restic backup again, nothing changed (same repository)")
async def restic_backup_unchanged(r: Round) -> Sample:
    if r.restic_repo is None:
        await _restic_first_backup(r)
    assert r.restic_repo is not None
    host_dir = _need(r.data.host_dir, "host_dir")
    t0 = _clock()
    await restic(r.bench, "backup", "--repo", str(r.restic_repo), str(host_dir))
    return Sample(_clock() - t0)


@case("restic_restore", "in", "restic restore latest into an empty host directory")
async def restic_restore(r: Round) -> Sample:
    if r.restic_repo is None:
        await _restic_first_backup(r)
    assert r.restic_repo is not None
    target = r.bench.tmp / f"restic-restore-{r.spec.name}-{r.rep}"
    t0 = _clock()
    await restic(
        r.bench, "restore", "latest", "--repo", str(r.restic_repo), "--target", str(target)
    )
    seconds = _clock() - t0
    await asyncio.to_thread(shutil.rmtree, target, True)
    return Sample(seconds)


def _need(value: Path | None, what: str) -> Path:
    if value is None:
        raise RuntimeError(f"data set was prepared without {what}")
    return value


# --- building the data ----------------------------------------------------------------------


async def threaded(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Generate ``pieces`` on a thread, one piece ahead of the consumer."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, next, pieces, None)
    try:
        while (piece := await future) is not None:
            future = loop.run_in_executor(None, next, pieces, None)
            yield piece
    finally:
        future.cancel()


async def prepare(
    bench: Bench, spec: _data.DatasetSpec, content: _data.Content, cases: set[str]
) -> Prepared:
    """Build ``spec`` in the source container; keep what the selected cases need."""
    docker, source = bench.docker, bench.source
    if not spec.layout.files:  # the baseline: no data
        bench.prepared[spec.name] = Prepared(spec, bytes=0)
        return bench.prepared[spec.name]
    await docker.put_archive(source, "/", threaded(_data.dataset_tar(spec, content)))
    if spec.mutation is not None:
        await _mutate(bench, spec, spec.mutation, content)
    data = Prepared(spec, bytes=0)
    needs_file = bool(cases & {"raw_put", "docker_cp_in_stream"})
    if needs_file:
        data.tar_path = bench.tmp / f"{spec.name}.tar"
    # The warm-up read: counts the stream and (if needed) keeps it in a file.
    sink = await asyncio.to_thread(Path(data.tar_path or os.devnull).open, "wb")
    try:
        async with docker.get_archive(source, spec.dir + "/.") as archive:
            async for piece in archive.chunks:
                data.bytes += len(piece)
                if needs_file:
                    sink.write(piece)
    finally:
        sink.close()
    if cases & ({"docker_cp_in"} | RESTIC_CASES):
        data.host_dir = bench.tmp / f"{spec.name}.host"
        await docker_cli("cp", f"{source}:{spec.dir}", str(data.host_dir))
    if spec.verify_restore and cases & {"restore", "seed_restore"}:
        data.digest = await bench.engine.tree_digest(source, spec.dir)
    bench.prepared[spec.name] = data
    return data


async def _mutate(
    bench: Bench, spec: _data.DatasetSpec, change: _data.Mutation, content: _data.Content
) -> None:
    root = spec.dir
    append = f"seq 1 {change.append_lines} >> {root}/{change.append_to}"
    await bench.engine.exec(bench.source, f"{append} && rm -rf {root}/{change.delete_dir}")
    tar = _data.tar_pieces(root.lstrip("/"), (), (change.add,), content)
    await bench.docker.put_archive(bench.source, "/", threaded(tar))


async def release(bench: Bench, data: Prepared) -> None:
    """Free the host copies of a finished data set (its files stay in the container)."""
    if data.tar_path is not None:
        data.tar_path.unlink(missing_ok=True)
    if data.host_dir is not None:
        await asyncio.to_thread(shutil.rmtree, data.host_dir, True)

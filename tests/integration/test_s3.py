"""The S3 backend against a real server (Ceph RGW), and two Docker daemons sharing it.

The ObjectStore and SnapshotStore contracts run on S3 through tests/conformance
(params "s3" and "chunked-s3"). This file covers what only a shared bucket has:
racing writers, gc beside a writer on another host, a snapshot taken on one
daemon and restored on another, copies between stores, bad credentials, and a
server that dies mid-stream (a fault proxy in front of the server: the shared
server itself is never stopped).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import docksnap
from docksnap.errors import SnapshotCorruptError, StoreError, StoreUnavailableError
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.store.base import SnapshotSource
from docksnap.store.chunked import ChunkedStore
from docksnap.store.chunked.format import MANIFESTS
from docksnap.store.chunked.leases import Lease
from docksnap.store.chunked.packs import PACK_INDEX, PACKS, PENDING
from docksnap.store.objects.local import LocalObjectStore
from docksnap.store.objects.s3 import S3ObjectStore
from tests.conformance.streams import build_tar, pieces, random_files, text_files
from tests.conftest import (
    SESSION_ID,
    SESSION_LABEL,
    SESSION_LABELS,
    TEST_IMAGE,
    cache_at_rest,
    unique_name,
)
from tests.faultproxy import FaultProxy
from tests.s3support import S3Server

pytestmark = pytest.mark.s3

SOURCE = SnapshotSource(container="s3-test", image=TEST_IMAGE)
# 3 MB of random bytes (≈ 48 chunks) plus small files, a symlink and a subdirectory.
DATA_SCRIPT = (
    "mkdir -p /data/sub && head -c 3000000 /dev/urandom > /data/big && "
    "echo hello > /data/sub/small && ln -s sub/small /data/link"
)


# --- helpers -------------------------------------------------------------------------------


def s3_store(
    server: S3Server, prefix: str, *, endpoint: str | None = None, **kw: Any
) -> ChunkedStore:
    """A chunked store on ``prefix``; ``endpoint`` reroutes it (through a fault proxy)."""
    config = server.config(prefix, endpoint=endpoint or server.endpoint)
    return ChunkedStore(S3ObjectStore(config), **kw)


def host_b() -> str:
    host = os.environ.get("DOCKSNAP_TEST_DOCKER_HOST_B")
    if not host:
        message = "DOCKSNAP_TEST_DOCKER_HOST_B is not set: run the tests with scripts/test"
        if os.environ.get("DOCKSNAP_ALLOW_SKIP"):
            pytest.skip(message)
        pytest.fail(message)
    return host


def leftovers(docker_host: str | None) -> list[str]:
    """Containers and volumes of this test session on an engine (restore cache
    entries at rest are the cache, not leftovers)."""
    env = {**os.environ, "DOCKER_HOST": docker_host} if docker_host else None
    found: list[str] = []
    for kind in (["ps", "-aq"], ["volume", "ls", "-q"]):
        found += subprocess.run(
            ["docker", *kind, "--filter", f"label={SESSION_LABEL}={SESSION_ID}"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.split()
    cache = cache_at_rest(docker_host)
    return [name for name in found if name not in cache]


@asynccontextmanager
async def box_with_data(
    client: docksnap.Client, script: str = DATA_SCRIPT
) -> AsyncIterator[docksnap.Container]:
    """A running container whose /data was filled by ``script``; destroyed afterwards."""
    box = client.container(unique_name("ds-s3"))
    try:
        await box.start(TEST_IMAGE, entrypoint=["sh", "-c", f"{script} && exec sleep 1000"])
        await wait_for(lambda: file_tree(client, box.name, "/data/sub/small"))
        yield box
    finally:
        await box.destroy()


async def wait_for(probe: Callable[[], Awaitable[object]], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if await probe():
                return
        except docksnap.DockerError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the container did not get ready")


async def file_tree(client: docksnap.Client, container: str, path: str) -> dict[str, object]:
    """Every member under ``path`` in a container: file bytes, link targets, dir marks."""
    async with client.docker.get_archive(container, path) as archive:
        data = b"".join([piece async for piece in archive.chunks])
    tree: dict[str, object] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                tree[member.name] = extracted.read() if extracted else b""
            elif member.issym():
                tree[member.name] = f"-> {member.linkname}"
            else:
                tree[member.name] = f"type {member.type!r}"
    return tree


async def exists_on(client: docksnap.Client, container: str) -> bool:
    try:
        await client.docker.inspect_container(container)
    except docksnap.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def save_tar(store: ChunkedStore, data: bytes, snapshot_id: str | None = None) -> str:
    record = DirectorySnapshot(id=snapshot_id or new_snapshot_id(), size=0, dir="/data")
    info = await store.save(record, pieces(data), source=SOURCE)
    return info.id


async def read_back(store: ChunkedStore, snapshot_id: str) -> bytes:
    async with store.open(snapshot_id) as reader:
        return b"".join([piece async for piece in reader])


def in_threads(*jobs: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run each coroutine function on its own thread and event loop, started together:
    as many processes (hosts) would. Returns results or the exceptions raised."""
    start = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(index: int) -> None:
        async def body() -> Any:
            start.wait()
            return await jobs[index]()

        try:
            results[index] = asyncio.run(body())
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# --- racing writers ----------------------------------------------------------------------------


def test_two_hosts_writing_the_same_chunks_both_commit(s3_server: S3Server, s3_prefix: str) -> None:
    data = build_tar(random_files(4, 300_000) | text_files(10, 20_000))

    async def save_on_new_host() -> tuple[str, int]:
        store = s3_store(s3_server, s3_prefix)
        try:
            snapshot_id = await save_tar(store, data)
            return snapshot_id, len(await read_back(store, snapshot_id))
        finally:
            await store.close()

    results = in_threads(save_on_new_host, save_on_new_host, save_on_new_host)
    assert all(not isinstance(r, Exception) for r in results), results
    assert all(size == len(data) for _, size in results)

    async def check() -> None:
        store = s3_store(s3_server, s3_prefix)
        try:
            report = await store.verify(read_data=True)
            assert report.ok, report.problems
            assert report.snapshots_checked == 3
            for snapshot_id, _ in results:
                assert await read_back(store, snapshot_id) == data
        finally:
            await store.close()

    asyncio.run(check())


def test_two_hosts_committing_one_snapshot_id_exactly_one_wins(
    s3_server: S3Server, s3_prefix: str
) -> None:
    snapshot_id = new_snapshot_id()
    streams = [build_tar(random_files(2, 200_000, seed=seed)) for seed in range(4)]

    def writer(data: bytes) -> Callable[[], Awaitable[str]]:
        async def save() -> str:
            store = s3_store(s3_server, s3_prefix)
            try:
                return await save_tar(store, data, snapshot_id)
            finally:
                await store.close()

        return save

    results = in_threads(*(writer(data) for data in streams))
    winners = [n for n, result in enumerate(results) if result == snapshot_id]
    losers = [result for result in results if isinstance(result, StoreError)]
    assert len(winners) == 1, results
    assert len(losers) == len(streams) - 1
    assert all("already exists" in str(error) for error in losers)

    async def check() -> None:
        store = s3_store(s3_server, s3_prefix)
        try:
            assert await read_back(store, snapshot_id) == streams[winners[0]]
            assert (await store.verify(read_data=True)).ok
            assert [info.id for info in await store.list()] == [snapshot_id]
        finally:
            await store.close()

    asyncio.run(check())


# --- two daemons, one bucket ---------------------------------------------------------------------


@pytest.mark.docker
async def test_snapshot_on_daemon_a_restores_on_daemon_b(
    docker_engine: None, s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts share nothing but the bucket URL and the standard AWS variables."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    url = s3_server.url(s3_prefix)
    host_a = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    async with (
        docksnap.Client(docker_host=host_a, store=url, labels=SESSION_LABELS) as on_a,
        docksnap.Client(docker_host=host_b(), store=url, labels=SESSION_LABELS) as on_b,
    ):
        async with box_with_data(on_a) as box:
            snap = await box.snapshot_directory("/data", name="cross-host")
            original = await file_tree(on_a, box.name, "/data")
        assert not await exists_on(on_b, box.name)  # B never saw the source container
        restored = on_b.container(unique_name("ds-s3-b"))
        try:
            await restored.start(TEST_IMAGE, entrypoint=["sleep", "1000"], snapshots=[snap])
            assert await file_tree(on_b, restored.name, "/data") == original
        finally:
            await restored.destroy()
        assert (await on_b.snapshots.get(snap.id)).name == "cross-host"
    assert leftovers(host_b()) == []


@pytest.mark.docker
async def test_gc_on_one_host_beside_a_snapshot_on_another_loses_nothing(
    docker_engine: None, s3_server: S3Server, s3_prefix: str
) -> None:
    """The race gc must not lose: a writer on B relies on chunks gc on A finds unreferenced.

    Snapshot S0 of /data is taken and deleted, so its chunks are old and
    unreferenced. Then B snapshots the same /data (deduplicating against those
    chunks) while A collects in a loop. S1 must come out whole.
    """
    grace = 1.0
    store_a = s3_store(s3_server, s3_prefix)
    store_b = s3_store(s3_server, s3_prefix, max_write_seconds=grace / 2)
    async with (
        docksnap.Client(store=store_a, labels=SESSION_LABELS) as on_a,
        docksnap.Client(docker_host=host_b(), store=store_b, labels=SESSION_LABELS) as on_b,
        box_with_data(on_b) as box,
    ):
        first = await box.snapshot_directory("/data")
        await on_a.snapshots.delete(first.id)
        await asyncio.sleep(grace * 1.5)  # S0's packs are now older than the grace period
        s0_packs = {key for key in s3_server.keys(s3_prefix) if key.startswith(PACKS)}
        # A writer's lease held across one gc: gc marks S0's packs but may not drop them
        # yet, so B starts while they are marked and gc drops them while B writes.
        with Lease(store_a.objects, "test"):
            await on_a.snapshots.gc(grace=grace)
        assert any(key.startswith(PENDING) for key in s3_server.keys(s3_prefix))
        stop = asyncio.Event()
        collections = 0
        acted = False  # gc really marked or dropped S0's packs while B was writing

        async def collect() -> None:
            nonlocal collections, acted
            while not stop.is_set():
                await on_a.snapshots.gc(grace=grace)
                collections += 1
                keys = await asyncio.to_thread(s3_server.keys, s3_prefix)
                marked = any(key.startswith(PENDING) for key in keys)
                acted = acted or marked or not s0_packs <= set(keys)

        collector = asyncio.create_task(collect())
        try:
            second = await box.snapshot_directory("/data")
            await asyncio.sleep(grace * 2)  # long enough for a wrong gc to purge the trash
        finally:
            stop.set()
            await collector
        assert collections >= 2
        assert acted
        await on_a.snapshots.gc(grace=grace)
        report = await on_a.snapshots.verify(second.id, read_data=True)
        assert report.ok, report.problems
        original = await file_tree(on_b, box.name, "/data")
        restored = on_a.container(unique_name("ds-s3-a"))
        try:
            await restored.start(TEST_IMAGE, entrypoint=["sleep", "1000"], snapshots=[second])
            assert await file_tree(on_a, restored.name, "/data") == original
        finally:
            await restored.destroy()
    assert leftovers(host_b()) == []


# --- copies --------------------------------------------------------------------------------------


async def test_copy_local_to_s3_to_local_verifies_and_moves_only_missing_chunks(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    data = build_tar(random_files(3, 250_000) | text_files(20, 10_000))
    here = ChunkedStore(LocalObjectStore(tmp_path / "here"))
    there = ChunkedStore(LocalObjectStore(tmp_path / "there"))
    bucket = s3_store(s3_server, s3_prefix)
    try:
        snapshot_id = await save_tar(here, data)
        catalogue = docksnap.Catalogue(here)
        up = await catalogue.copy(snapshot_id, to=bucket)
        assert up.chunks_copied > 0
        assert up.chunks_present == 0
        assert up.snapshot.id == snapshot_id
        again = await catalogue.copy(snapshot_id, to=bucket)  # idempotent: nothing moves
        assert (again.chunks_copied, again.chunks_present) == (0, up.chunks_copied)
        down = await docksnap.Catalogue(bucket).copy(snapshot_id, to=there)
        assert down.chunks_copied == up.chunks_copied
        for store in (bucket, there):
            assert await read_back(store, snapshot_id) == data
            assert (await store.verify(read_data=True)).ok
        original, copied = await here.get(snapshot_id), await there.get(snapshot_id)
        assert copied.created_at == original.created_at
        assert copied.snapshot == original.snapshot
    finally:
        for store in (here, there, bucket):
            await store.close()


async def test_copy_of_a_corrupt_chunk_commits_nothing(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    here = ChunkedStore(LocalObjectStore(tmp_path / "here"))
    bucket = s3_store(s3_server, s3_prefix)
    try:
        snapshot_id = await save_tar(here, build_tar(random_files(4, 200_000)))
        packs = [p for p in (tmp_path / "here" / "packs").rglob("*") if p.is_file()]
        victim = max(packs, key=lambda p: p.stat().st_size)
        damaged = bytearray(victim.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        victim.write_bytes(bytes(damaged))
        with pytest.raises(SnapshotCorruptError, match=victim.name):
            await docksnap.Catalogue(here).copy(snapshot_id, to=bucket)
        assert await bucket.list() == []
        assert not [key for key in s3_server.keys(s3_prefix) if key.startswith(MANIFESTS)]
    finally:
        await here.close()
        await bucket.close()


@pytest.mark.docker
async def test_client_copies_to_a_store_url(
    docker_engine: None,
    s3_server: S3Server,
    s3_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    async with docksnap.Client(
        store=(tmp_path / "local").as_uri(), labels=SESSION_LABELS
    ) as client:
        snapshot = await client.snapshots.import_tar(
            pieces(build_tar(text_files(5, 5000))), dir="/d"
        )
        report = await client.snapshots.copy(snapshot.id, to=s3_server.url(s3_prefix))
        assert report.snapshot.id == snapshot.id
    assert any(key.startswith(MANIFESTS) for key in s3_server.keys(s3_prefix))


# --- misconfiguration --------------------------------------------------------------------------


async def test_wrong_secret_fails_fast_naming_the_bucket(
    s3_server: S3Server, s3_prefix: str
) -> None:
    config = s3_server.config(s3_prefix, secret_access_key="not-the-secret")  # noqa: S106
    store = ChunkedStore(S3ObjectStore(config))
    started = time.monotonic()
    try:
        with pytest.raises(StoreError) as caught:
            await save_tar(store, build_tar(text_files(2, 1000)))
    finally:
        await store.close()
    assert time.monotonic() - started < 5
    assert not isinstance(caught.value, StoreUnavailableError)
    message = str(caught.value)
    assert f"s3://{s3_server.bucket}/{s3_prefix}" in message
    assert "access denied (403" in message
    assert "AWS_SECRET_ACCESS_KEY" in message


async def test_missing_bucket_says_so(s3_server: S3Server) -> None:
    config = s3_server.config("p", bucket=f"{s3_server.bucket}-absent")
    store = ChunkedStore(S3ObjectStore(config))
    try:
        with pytest.raises(StoreError, match="does not exist"):
            await store.list()
    finally:
        await store.close()


# --- a server that dies ---------------------------------------------------------------------


def rgw_address(server: S3Server) -> tuple[str, int]:
    parts = urlsplit(server.endpoint)
    return parts.hostname or "127.0.0.1", parts.port or 80


@pytest.mark.docker
async def test_server_dying_mid_snapshot_leaves_no_snapshot_and_no_container(
    docker_engine: None, s3_server: S3Server, s3_prefix: str
) -> None:
    with FaultProxy(rgw_address(s3_server), cut_after_up=1_000_000) as proxy:
        store = s3_store(s3_server, s3_prefix, endpoint=proxy.endpoint)
        async with (
            docksnap.Client(store=store, labels=SESSION_LABELS) as client,
            box_with_data(client) as box,
        ):
            with pytest.raises(StoreUnavailableError):
                await box.snapshot_directory("/data")
            assert proxy.is_cut
            state = await client.docker.inspect_container(box.name)
            assert state["State"]["Paused"] is False
            assert state["State"]["Running"] is True
        assert leftovers(None) == []
    survivor = s3_store(s3_server, s3_prefix)  # the server itself never died
    try:
        assert await survivor.list() == []
    finally:
        await survivor.close()
    keys = s3_server.keys(s3_prefix)
    # Nothing was committed: no manifest, and no pack index (written only at commit).
    assert not any(key.startswith((MANIFESTS, PACK_INDEX)) for key in keys)


@pytest.mark.docker
async def test_server_dying_mid_restore_leaves_no_container(
    docker_engine: None, s3_server: S3Server, s3_prefix: str
) -> None:
    direct = s3_store(s3_server, s3_prefix)
    async with (
        docksnap.Client(store=direct, labels=SESSION_LABELS) as client,
        box_with_data(client) as box,
    ):
        snap = await box.snapshot_directory("/data")
    with FaultProxy(rgw_address(s3_server), cut_after_down=1_000_000) as proxy:
        store = s3_store(s3_server, s3_prefix, endpoint=proxy.endpoint)
        async with docksnap.Client(store=store, labels=SESSION_LABELS) as client:
            restored = client.container(unique_name("ds-s3-restore"))
            with pytest.raises(StoreUnavailableError):
                await restored.start(TEST_IMAGE, entrypoint=["sleep", "1000"], snapshots=[snap])
            assert proxy.is_cut
            assert not await exists_on(client, restored.name)
    assert leftovers(None) == []


def test_a_server_that_stops_answering_times_out_into_unavailable(
    s3_server: S3Server, s3_prefix: str
) -> None:
    with FaultProxy(rgw_address(s3_server)) as proxy:
        config = s3_server.config(s3_prefix, endpoint=proxy.endpoint, timeout=1.0)
        objects = S3ObjectStore(config)
        objects.put("config", b"x")  # the bucket check and one request went through
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="get config"):
            objects.get("config")
        elapsed = time.monotonic() - started
    # Each attempt waits out the 1 s timeout; nothing waits longer.
    assert config.retry.attempts <= elapsed < config.retry.attempts * 1.0 + 3


def test_cli_copy_to_s3_and_back(s3_server: S3Server, s3_prefix: str, tmp_path: Path) -> None:
    """`docksnap copy ID --to URL`, with S3 credentials from the standard variables."""
    archive = tmp_path / "in.tar"
    archive.write_bytes(build_tar(text_files(4, 3000)))
    env = {**os.environ, **s3_server.env(), "DOCKSNAP_LABELS": f"{SESSION_LABEL}={SESSION_ID}"}

    def docksnap_json(store: str, *args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "docksnap", "--store", store, "--json", *args],
            capture_output=True,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return json.loads(done.stdout)

    here, back = (tmp_path / "here").as_uri(), (tmp_path / "back").as_uri()
    snapshot_id = docksnap_json(here, "import", str(archive), "--dir", "/d")["snapshot"]["id"]
    up = docksnap_json(here, "copy", snapshot_id, "--to", s3_server.url(s3_prefix))
    assert up["snapshot"]["snapshot"]["id"] == snapshot_id
    assert up["chunks_copied"] > 0
    down = docksnap_json(s3_server.url(s3_prefix), "copy", snapshot_id, "--to", back)
    assert (down["chunks_copied"], down["streamed"]) == (up["chunks_copied"], False)
    assert docksnap_json(back, "verify")["ok"] is True

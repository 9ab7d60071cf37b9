"""Issue 10, "Also": store faults by every operation (snapshot, start, export, import, gc, verify).

For each: a typed error (or, for slowness and a transient fault the retries
absorb, success), nothing new visible in the store, no snapshot lost or
damaged, nothing leaked on the engine, and the next operation works. Local-disk
faults (ENOSPC, EIO, slow) come from :class:`tests.faultstore.FaultyObjectStore`
over the real local store; S3 faults (503 SlowDown, a connection reset) from
:class:`tests.faultstore.FaultyTransport` under the real S3 store on the real server,
and from :class:`tests.faultproxy.FaultProxy` resetting real connections.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import docksnap
from docksnap import DirectorySnapshot
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from docksnap.store.objects.s3 import S3ObjectStore
from docksnap.store.objects.s3.transport import ObstoreTransport
from tests.conftest import SESSION_LABELS, TEST_IMAGE, cache_at_rest, unique_name
from tests.faultmatrix import (
    engine_resources,
    one_file_tar,
    outcome_of,
    record,
    source_container,
    write_table,
)
from tests.faultproxy import FaultProxy
from tests.faultstore import EVERYTHING, READS, WRITES, FaultyObjectStore, FaultyTransport
from tests.s3support import S3Server

pytestmark = pytest.mark.docker

OPERATIONS = ("snapshot", "start", "export", "import", "gc", "verify")


@dataclass
class World:
    """A client on a faultable store holding ``base``, and a running source container."""

    client: docksnap.Client
    box: docksnap.Container
    base: DirectorySnapshot
    arm: Callable[[], None]
    disarm: Callable[[], None]


@pytest.fixture(scope="module", autouse=True)
def matrix_table() -> Iterator[None]:
    yield
    write_table()


@pytest.fixture(scope="module")
async def source(docker_engine: None) -> AsyncIterator[str]:
    """A running container with /d to snapshot, shared by the module."""
    script = "mkdir -p /d/sub && head -c 400000 /dev/urandom > /d/f && echo hi > /d/sub/g"
    async with source_container(script) as name:
        yield name


async def _world(client: docksnap.Client, source: str, arm: Any, disarm: Any) -> World:
    box = client.container(source)
    for _ in range(100):  # the script has written /d
        if (await client.docker.stat_path(source, "/d/sub/g")) is not None:
            break
    base = await box.snapshot_directory("/d")
    doomed = await box.snapshot_directory("/d/sub")  # gives gc something to collect
    await client.snapshots.delete(doomed.id)
    return World(client, box, base, arm, disarm)


async def run_operation(world: World, operation: str) -> None:
    client = world.client
    if operation == "snapshot":
        await world.box.snapshot_directory("/d")
    elif operation == "start":
        target = client.container(unique_name("ds-fault"))
        try:
            await target.start(TEST_IMAGE, entrypoint=["sleep", "1000"], snapshots=[world.base])
        finally:
            await target.destroy()
    elif operation == "export":
        async with client.snapshots.export(world.base.id) as reader:
            total = sum([len(piece) async for piece in reader])
        assert total == world.base.size
    elif operation == "import":
        await client.snapshots.import_tar(one_file_tar(os.urandom(200_000)), dir="/imported")
    elif operation == "gc":
        await client.snapshots.gc(grace=0)
    elif operation == "verify":
        report = await client.snapshots.verify()
        if not report.ok:
            raise AssertionError(f"verify found problems: {report.problems}")
    else:
        raise AssertionError(operation)


async def check_fault(
    world: World, layer: str, fault: str, operation: str, *, ok: bool, reported: bool = False
) -> None:
    """Run ``operation`` under the armed fault; check the four promises; record the outcome.

    ``ok``: the fault is absorbed (slowness, retried transients, methods the
    operation does not call). ``reported``: verify reports the fault as damage
    instead of raising (a local read error is damage to that disk's data).
    """
    before_ids = {i.id async for i in world.client.snapshots.list()}
    before_engine = engine_resources()
    world.arm()
    error: BaseException | None = None
    try:
        await run_operation(world, operation)
    except docksnap.DocksnapError as exc:
        error = exc
    except AssertionError as exc:  # verify reported the fault as damage
        error = exc
    finally:
        world.disarm()
    after_ids = {i.id async for i in world.client.snapshots.list()}
    # Complete restore cache entries are the cache doing its job, not leaks.
    leaked = engine_resources() - before_engine - {f"volume {v}" for v in cache_at_rest()}
    assert not leaked, f"{fault} during {operation} leaked {leaked}"
    if ok:
        assert error is None, f"{fault} during {operation} should be absorbed: {error!r}"
    else:
        assert error is not None, f"{fault} during {operation} went unnoticed"
        if not reported:
            assert not isinstance(error, AssertionError), f"{fault} during {operation}: {error}"
        assert after_ids == before_ids, "a failed operation changed what the store shows"
    assert before_ids <= after_ids, "a snapshot was lost"
    report = await world.client.snapshots.verify()
    assert report.ok, f"{fault} during {operation} damaged the store: {report.problems}"
    await run_operation(world, operation)  # the next operation works
    if reported:
        outcome = "reported by verify as damage (exit 12); nothing changed"
    else:
        outcome = outcome_of(error, "" if ok else "nothing visible")
    record(layer, fault, operation, outcome)


# --- local disk ------------------------------------------------------------------------

LOCAL_FAULTS = {
    # fault name: (fault, methods, absorbed?)
    "ENOSPC on writes": ("enospc", WRITES, False),
    "EIO on writes": ("eio", WRITES, False),
    "EIO on reads": ("eio", READS, False),
    "EIO on object reads": ("eio", frozenset({"get", "get_range"}), False),
    "slow disk": ("slow", EVERYTHING, True),
}
# An operation that never calls the faulted methods cannot fail from them; a start
# whose only write is the best-effort record of a use succeeds (with a warning).
UNTOUCHED = {("EIO on writes", "export"), ("EIO on writes", "verify")}
UNTOUCHED |= {("ENOSPC on writes", "export"), ("ENOSPC on writes", "verify")}
UNTOUCHED |= {("ENOSPC on writes", "start"), ("EIO on writes", "start")}
REPORTED = {("EIO on object reads", "verify")}


@pytest.fixture
async def local_world(
    source: str, tmp_path: Path
) -> AsyncIterator[tuple[World, FaultyObjectStore]]:
    objects = FaultyObjectStore(LocalObjectStore(tmp_path / "store"))
    async with docksnap.Client(store=ChunkedStore(objects), labels=SESSION_LABELS) as client:
        yield await _world(client, source, lambda: None, objects.disarm), objects


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("fault_name", list(LOCAL_FAULTS))
async def test_local_disk_fault(
    local_world: tuple[World, FaultyObjectStore], fault_name: str, operation: str
) -> None:
    world, objects = local_world
    fault, methods, absorbed = LOCAL_FAULTS[fault_name]
    world.arm = lambda: objects.arm(fault, methods)
    ok = absorbed or (fault_name, operation) in UNTOUCHED
    reported = (fault_name, operation) in REPORTED
    await check_fault(world, "local disk", fault_name, operation, ok=ok, reported=reported)
    if not ok:
        assert objects.fired > 0


# --- S3 ----------------------------------------------------------------------------------


@pytest.fixture
async def s3_world(
    source: str, s3_server: S3Server, s3_prefix: str
) -> AsyncIterator[tuple[World, FaultyTransport]]:
    config = s3_server.config(s3_prefix)
    transport = FaultyTransport(ObstoreTransport(config))
    store = ChunkedStore(S3ObjectStore(config, transport=transport))
    async with docksnap.Client(store=store, labels=SESSION_LABELS) as client:
        world = await _world(client, source, lambda: None, transport.disarm)
        yield world, transport


@pytest.mark.s3
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("times", [2, None], ids=["twice", "always"])
async def test_s3_slowdown(
    s3_world: tuple[World, FaultyTransport], operation: str, times: int | None
) -> None:
    """503 SlowDown on every request: retried, then StoreUnavailableError; twice: absorbed."""
    world, transport = s3_world
    world.arm = lambda: transport.arm("slowdown", EVERYTHING, times=times)
    name = "503 SlowDown, always" if times is None else "503 SlowDown, twice"
    await check_fault(world, "S3", name, operation, ok=times is not None)


@pytest.mark.s3
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_s3_connection_reset(
    source: str, s3_server: S3Server, s3_prefix: str, operation: str
) -> None:
    """The server's connections reset mid-transfer (a real TCP reset, via the proxy).

    The proxy resets every connection once 1.5 kB went either way (in the first
    requests, mid-body for most), and refuses new connections after.
    """
    host = urlsplit(s3_server.endpoint)
    upstream = (host.hostname or "127.0.0.1", host.port or 80)
    with FaultProxy(upstream, cut_after_up=1_500, cut_after_down=1_500) as proxy:
        config = s3_server.config(s3_prefix, endpoint=proxy.endpoint)
        through_proxy = FaultyTransport(ObstoreTransport(config))
        direct = FaultyTransport(ObstoreTransport(s3_server.config(s3_prefix)))
        route = {"transport": direct}

        class Switch:
            """Sends requests through the proxy while the fault is armed."""

            def __getattr__(self, name: str) -> Any:
                return getattr(route["transport"], name)

        store = ChunkedStore(S3ObjectStore(config, transport=Switch()))
        async with docksnap.Client(store=store, labels=SESSION_LABELS) as client:

            def arm() -> None:
                route["transport"] = through_proxy

            def disarm() -> None:
                route["transport"] = direct

            world = await _world(client, source, arm, disarm)
            world.arm = arm
            await check_fault(world, "S3", "connection reset", operation, ok=False)
        through_proxy.close()
        direct.close()

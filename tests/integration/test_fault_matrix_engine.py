"""Issue 10, "Also": engine faults at every call docksnap makes, for every operation.

:class:`tests.faultengine.FaultEngine` sits between docksnap and the real engine
and, at one chosen call, answers 500, closes the connection, stalls, or cuts or
stalls an archive stream mid-way. For each case: a typed error, nothing new
visible in the store, nothing leaked on the engine (containers, volumes, a
paused container), and the same operation works once the fault is gone.

The call lists are what each operation sends (recorded through the proxy);
``ID`` is a 64-hex container id (helpers), names are the test's containers.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import docksnap
from docksnap import DirectorySnapshot, SnapshotRestore
from tests.conftest import (
    SESSION_LABELS,
    TEST_IMAGE,
    session_volume_snapshots,
    unique_name,
)
from tests.faultengine import Fault, FaultEngine
from tests.faultmatrix import (
    engine_resources,
    one_file_tar,
    outcome_of,
    record,
    source_container,
    write_table,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Short, so stalls end quickly; not so short that a busy shared engine trips it.
TIMEOUT = 2.5
NAME = r"/containers/ds-[^/]+"
HELPER = r"/containers/[0-9a-f]{64}"
# The pause is shared across snapshots by container id (service/pause.py).
NAME_OR_ID = r"/containers/(ds-[^/]+|[0-9a-f]{64})"
CALLS: dict[str, str] = {
    "inspect": NAME + "/json",
    "pause": NAME_OR_ID + "/pause",
    "unpause": NAME_OR_ID + "/unpause",
    "read archive": NAME + "/archive",
    "remove container": NAME,
    "list volumes": r"/volumes",
    "create volume": r"/volumes/create",
    "inspect volume": r"/volumes/[^/]+",
    "create container": r"/containers/create",
    "helper archive": HELPER + "/archive",
    "remove helper": HELPER,
    "start": NAME + "/start",
    "stat": NAME + "/archive",
    "write archive": NAME + "/archive",
    "list containers": r"/containers/json",
    "signal": NAME + "/kill",
    "wait": NAME + "/wait",
    "remove volume": r"/volumes/docksnap-restore-[0-9a-f]+",
}
METHOD = {
    "pause": "POST",
    "unpause": "POST",
    "remove container": "DELETE",
    "create volume": "POST",
    "create container": "POST",
    "remove helper": "DELETE",
    "start": "POST",
    "stat": "HEAD",
    "write archive": "PUT",
    "signal": "POST",
    "wait": "POST",
    "remove volume": "DELETE",
}
BASIC = ("500", "close", "stall")


@dataclass(frozen=True)
class Case:
    store: str  # "chunked" or "volume"
    operation: str
    call: str
    action: str
    nth: int = 1
    method: str = ""

    @property
    def fault(self) -> Fault:
        method = self.method or METHOD.get(self.call, "GET")
        after = 64 * 1024 if self.action not in BASIC else 0
        return Fault(method, CALLS[self.call], self.action, after=after, nth=self.nth)

    @property
    def label(self) -> str:
        nth = f" #{self.nth}" if self.nth != 1 else ""
        method = self.method or METHOD.get(self.call, "GET")
        return f"{self.store}-{self.operation}-{method} {self.call}{nth}-{self.action}"


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(store: str, operation: str, call: str, *actions: str, **kw: object) -> None:
        for action in actions or BASIC:
            cases.append(Case(store, operation, call, action, **kw))  # type: ignore[arg-type]

    for call in ("inspect", "pause", "unpause"):
        add("chunked", "snapshot", call)
    add("chunked", "snapshot", "read archive", *BASIC, "cut", "stall_after")
    for call in ("inspect", "remove container", "list volumes", "create volume", "start"):
        add("chunked", "start", call)
    add("chunked", "start", "create container", nth=1)  # the helper
    add("chunked", "start", "create container", nth=2)  # the container itself
    add("chunked", "start", "helper archive", *BASIC, "cut_upload", "stall_upload", method="PUT")
    add("chunked", "start", "remove helper")
    add("chunked", "merge", "stat")
    add("chunked", "merge", "write archive", nth=1)  # mkdir -p of the mount point
    add("chunked", "merge", "write archive", *BASIC, "cut_upload", nth=2)
    add("chunked", "gc", "list containers")
    add("chunked", "gc", "list volumes")
    add("volume", "snapshot", "create volume")
    add("volume", "snapshot", "create container")
    add("volume", "snapshot", "helper archive", *BASIC, "cut_upload", method="PUT")
    add("volume", "snapshot", "remove helper")
    add("volume", "export", "create container")
    add("volume", "export", "helper archive", *BASIC, "cut", "stall_after")
    add("volume", "export", "remove helper")
    add("volume", "import", "create volume")
    add("volume", "import", "helper archive", *BASIC, "cut_upload", method="PUT")
    add("volume", "verify", "list volumes")
    add("volume", "gc", "list volumes")
    add("volume", "start", "helper archive", "500", "cut")  # reading the snapshot volume
    add("chunked", "signal", "inspect")
    add("chunked", "signal", "signal")
    add("chunked", "monitor", "wait", "500", "close")  # waiting has no deadline: no stall
    for call in ("remove container", "list volumes", "remove volume"):
        add("chunked", "destroy", call)
    # The engine carries a create out but its answer is lost: what it made must still go.
    for call, nth in (("create volume", 1), ("create container", 1), ("create container", 2)):
        add("chunked", "start", call, "lose_answer", nth=nth)
    add("chunked", "start", "start", "lose_answer")
    # Through the restore cache (service/restore_cache.py): the entry (volume #1, its
    # helper, the fill), the view's upper volume (#2) and overlay volume (#3).
    for nth in (1, 2, 3):
        add("chunked", "cached-start", "create volume", *BASIC, "lose_answer", nth=nth)
    for nth in (1, 2):
        add("chunked", "cached-start", "inspect volume", nth=nth)
    add("chunked", "cached-start", "list volumes", nth=2)  # looking the entry up
    add("chunked", "cached-start", "create container", *BASIC, "lose_answer", nth=1)
    add("chunked", "cached-start", "create container", *BASIC, "lose_answer", nth=2)
    add("chunked", "cached-start", "helper archive", *BASIC, "cut_upload", method="PUT")
    add("chunked", "cached-start", "remove helper")
    add("chunked", "cached-start", "start")
    add("volume", "snapshot", "create volume", "lose_answer")
    add("volume", "snapshot", "create container", "lose_answer")
    add("volume", "export", "create container", "lose_answer")
    add("volume", "import", "create volume", "lose_answer")
    return cases


CASES = _cases()

# Faults docksnap survives without an error: removing a helper is retried.
ABSORBED = {case.label for case in CASES if case.call == "remove helper"}
# A failed removal leaves what it did not remove; the promise is that trying
# again (or the next start of that name) removes everything.
CLEANED_BY_RETRY = {"destroy", "monitor"}
# Known defects owned elsewhere: strict, so they fail loudly once fixed. (A failed
# unpause used to leave the container paused; the pause watchdog fixed it.)
KNOWN: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def matrix_table() -> Iterator[None]:
    yield
    write_table()


@pytest.fixture(scope="module")
async def source(docker_engine: None) -> AsyncIterator[str]:
    script = "mkdir -p /d && head -c 300000 /dev/urandom > /d/f && echo hi > /d/g"
    async with source_container(script) as name:
        yield name


@pytest.fixture
def engine(docker_engine: None) -> Iterator[FaultEngine]:
    directory = Path(tempfile.mkdtemp(prefix="ds-fe-"))  # short enough for a socket address
    with FaultEngine(directory) as fake:
        yield fake
    shutil.rmtree(directory, ignore_errors=True)


@dataclass
class World:
    client: docksnap.Client
    engine: FaultEngine
    source: str
    base: DirectorySnapshot
    target: str


@pytest.fixture(params=CASES, ids=[c.label for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    case: Case = request.param
    if case.label in KNOWN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN[case.label]))
    return case


@pytest.fixture
async def world(
    case: Case, source: str, engine: FaultEngine, tmp_path: Path
) -> AsyncIterator[World]:
    store = (tmp_path / "store").as_uri() if case.store == "chunked" else "docker-volume:"
    async with docksnap.Client(
        docker_host=engine.url,
        store=store,
        labels=SESSION_LABELS,
        engine_timeout=TIMEOUT,
        stall_timeout=TIMEOUT,
        restore_cache="off",  # each case's operation chooses
    ) as client:
        for _ in range(100):
            if await client.docker.stat_path(source, "/d/g") is not None:
                break
        base = await client.container(source).snapshot_directory("/d", capture="archive")
        world = World(client, engine, source, base, unique_name("ds-fault"))
        try:
            yield world
        finally:
            engine.clear()
            await _clean_up(case, world)


async def _clean_up(case: Case, world: World) -> None:
    """Through the real engine, with the default deadlines: a slow engine is no fault here."""
    store = "file:///nonexistent" if case.store == "chunked" else "docker-volume:"
    async with docksnap.Client(store=store, labels=SESSION_LABELS) as direct:
        await direct.container(world.target).destroy()
        if await _paused(direct, world.source):
            await direct.docker.unpause_container(world.source)
        if case.store == "volume":
            for snapshot_id in await session_volume_snapshots(direct.docker):
                await direct.snapshots.delete(snapshot_id)


async def run_operation(world: World, operation: str) -> None:
    client = world.client
    if operation == "snapshot":
        # The archive path: its engine calls are what the faults hit (host capture
        # reads no archive; its own faults are tests/unit/test_hostfs.py's).
        await client.container(world.source).snapshot_directory("/d", capture="archive")
    elif operation in ("start", "merge", "cached-start"):
        restore = SnapshotRestore(world.base, merge=operation == "merge")
        box = client.container(world.target)
        await box.start(
            TEST_IMAGE,
            entrypoint=["sleep", "1000"],
            snapshots=[restore],
            restore_cache="auto" if operation == "cached-start" else "off",
        )
        await box.destroy()
    elif operation == "export":
        async with client.snapshots.export(world.base.id) as reader:
            async for _ in reader:
                pass
    elif operation == "import":
        await client.snapshots.import_tar(one_file_tar(b"x" * 200_000), dir="/i", image=TEST_IMAGE)
    elif operation == "verify":
        report = await client.snapshots.verify()
        assert report.ok, report.problems
    elif operation == "gc":
        await client.snapshots.gc(grace=0)
        await client.reap_orphans(grace=0)
    elif operation == "signal":
        await client.container(world.source).signal(signal.SIGCONT)
    elif operation == "monitor":
        box = await _started(world)
        await box.signal(signal.SIGKILL)
        assert await box.monitor() == 137
        await box.destroy()
    elif operation == "destroy":
        box = client.container(world.target)
        if not await box.refresh():  # the retry destroys what a failed destroy left
            box = await _started(world)
        await box.destroy()
    else:
        raise AssertionError(operation)


async def test_engine_fault(case: Case, world: World) -> None:
    client = world.client
    before_ids = await _visible(world, case)
    before = engine_resources()
    world.engine.inject(case.fault)
    error: BaseException | None = None
    try:
        await run_operation(world, case.operation)
    except docksnap.DocksnapError as exc:
        error = exc
    fired = bool(world.engine.fired)
    world.engine.clear()
    assert fired, f"{case.label}: the fault never fired (the call list changed?)"
    after_ids = await _visible(world, case)
    saved = after_ids - before_ids  # a volume-store snapshot's volumes are not a leak
    # A complete restore cache entry is the cache doing its job, not a leak (the
    # session prunes them); an incomplete one, or any view volume, is a leak.
    saved |= {e.name for e in await client.cache.list() if e.complete and not e.in_use}
    if case.operation not in CLEANED_BY_RETRY:
        _assert_no_leak(case, before, saved)
    assert not await _paused(client, world.source), f"{case.label} left the source paused"
    if case.label in ABSORBED:
        assert error is None, f"{case.label}: {error!r}"
    else:
        assert error is not None, f"{case.label} went unnoticed"
        assert after_ids == before_ids, f"{case.label} changed what the store shows"
    await run_operation(world, case.operation)  # the next operation works
    if case.operation in CLEANED_BY_RETRY:
        _assert_no_leak(case, before, saved)
    record(
        "engine",
        f"{case.action} at {case.fault.method} {case.call}"
        + (f" #{case.nth}" if case.nth != 1 else ""),
        f"{case.operation} ({case.store} store)",
        outcome_of(
            error,
            "nothing left after a retry" if case.operation in CLEANED_BY_RETRY else "nothing left",
        ),
    )


def _assert_no_leak(case: Case, before: set[str], saved: set[str]) -> None:
    leaked = {r for r in engine_resources() - before if not any(i in r for i in saved)}
    assert not leaked, f"{case.label} leaked {leaked}"


async def _started(world: World) -> docksnap.Container:
    """The target, started with a restore volume, through the proxy but before the fault."""
    faults = world.engine.suspend()
    box = world.client.container(world.target)
    await box.start(TEST_IMAGE, entrypoint=["sleep", "1000"], snapshots=[world.base])
    world.engine.resume(faults)
    return box


async def _visible(world: World, case: Case) -> set[str]:
    """Ids of this test's snapshots (the volume store is shared by every session)."""
    if case.store == "volume":
        return set(await session_volume_snapshots(world.client.docker))
    return {i.id async for i in world.client.snapshots.list()}


async def _paused(client: docksnap.Client, name: str) -> bool:
    state = await client.docker.inspect_container(name)
    return bool(state["State"]["Paused"])

"""Issue 10, defect 9: a silent engine never hangs docksnap.

Every engine call has a deadline and every archive stream a stall timeout; both
run out into :class:`docksnap.DockerTimeoutError`, leave nothing behind, and the
next operation works. A stream that is slow but moves is never cut. The silent
engine is :class:`tests.faultengine.FaultEngine` in front of the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import docksnap
from tests.conftest import SESSION_LABELS, TEST_IMAGE, read_file, running, sleeper, unique_name
from tests.faultengine import SLOW_TICK, Fault, FaultEngine
from tests.integration.test_core import _containers_named, _restore_volumes_of

pytestmark = pytest.mark.docker

Boxes = list[docksnap.Container]
ARCHIVE = r"/containers/[^/]+/archive"
TIMEOUT = 2.0  # short, so stalls end quickly; long enough for a busy shared engine


@pytest.fixture
def engine(docker_engine: None, short_tmp: Path) -> Iterator[FaultEngine]:
    with FaultEngine(short_tmp) as fake:
        yield fake


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory whose path fits in a unix socket address (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ds-fe-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def slow_client(engine: FaultEngine, tmp_path: Path) -> AsyncIterator[docksnap.Client]:
    """A client through the fault engine, with one-second deadlines."""
    async with docksnap.Client(
        docker_host=engine.url,
        store=(tmp_path / "store").as_uri(),
        labels=SESSION_LABELS,
        engine_timeout=TIMEOUT,
        stall_timeout=TIMEOUT,
    ) as client:
        yield client


@pytest.fixture
async def boxes(slow_client: docksnap.Client, engine: FaultEngine) -> AsyncIterator[Boxes]:
    made: Boxes = []
    yield made
    engine.clear()
    for box in made:
        await box.destroy()


async def test_silent_call_times_out(
    slow_client: docksnap.Client, engine: FaultEngine, boxes: Boxes
) -> None:
    box = await running(slow_client, boxes, "mkdir /d")
    engine.inject(Fault("GET", r"/containers/[^/]+/json", "stall"))
    with pytest.raises(docksnap.DockerTimeoutError) as caught:
        await box.refresh()
    assert caught.value.operation == "inspect container"
    assert caught.value.seconds == TIMEOUT
    assert isinstance(caught.value, docksnap.DockerUnavailableError)
    assert await box.refresh()  # the next call works


async def test_stalled_snapshot_stream_times_out_and_stores_nothing(
    slow_client: docksnap.Client, engine: FaultEngine, boxes: Boxes
) -> None:
    box = await running(slow_client, boxes, "mkdir /d && head -c 2000000 /dev/urandom > /d/f")
    engine.inject(Fault("GET", ARCHIVE, "stall_after", after=64 * 1024))
    with pytest.raises(docksnap.DockerTimeoutError) as caught:
        await box.snapshot_directory("/d", capture="archive")
    assert caught.value.operation == "read archive"
    assert [i async for i in slow_client.snapshots.list()] == []
    state = await slow_client.docker.inspect_container(box.name)
    assert state["State"]["Paused"] is False
    snap = await box.snapshot_directory("/d")
    assert snap.size > 2_000_000


async def test_stalled_restore_upload_times_out_and_leaves_nothing(
    slow_client: docksnap.Client, engine: FaultEngine, boxes: Boxes
) -> None:
    box = await running(slow_client, boxes, "mkdir /d && head -c 8000000 /dev/urandom > /d/f")
    snap = await box.snapshot_directory("/d")
    engine.inject(Fault("PUT", ARCHIVE, "stall_upload", after=256 * 1024))
    target = slow_client.container(unique_name("ds-timeout"))
    boxes.append(target)
    with pytest.raises(docksnap.DockerTimeoutError) as caught:
        await target.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert caught.value.operation == "write archive"
    assert _containers_named(target.name) == []
    assert _restore_volumes_of(target.name) == []
    engine.clear()
    await target.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert await target.refresh()


async def test_slow_but_moving_stream_is_not_cut(
    slow_client: docksnap.Client, engine: FaultEngine, boxes: Boxes
) -> None:
    """A stream taking several stall timeouts in all, but never silent for one, succeeds."""
    box = await running(slow_client, boxes, "mkdir /d && head -c 200000 /dev/urandom > /d/f")
    piece = 4 * 1024
    engine.inject(Fault("GET", ARCHIVE, "slow", after=piece))
    snap = await box.snapshot_directory("/d", capture="archive")
    assert snap.size / piece * SLOW_TICK > 1.5 * TIMEOUT  # it did take longer than a timeout
    again = slow_client.container(unique_name("ds-timeout"))
    boxes.append(again)
    await again.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert await read_file(slow_client, again.name, "/d/f") is not None


def test_cli_engine_timeout_option_and_env(engine: FaultEngine, tmp_path: Path) -> None:
    """``--engine-timeout`` and ``DOCKSNAP_ENGINE_TIMEOUT`` both bound a silent call."""
    engine.inject(Fault("*", r".*", "stall", nth=0))
    base = [sys.executable, "-m", "docksnap", "--docker-host", engine.url]
    env = {**os.environ, "DOCKSNAP_STORE": (tmp_path / "s").as_uri()}
    by_option = subprocess.run(
        [*base, "--engine-timeout", "2", "stop", "ghost"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    by_env = subprocess.run(
        [*base, "stop", "ghost"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "DOCKSNAP_ENGINE_TIMEOUT": "2"},
    )
    for result in (by_option, by_env):
        assert result.returncode == 3, result.stderr
        assert "sent nothing for 2 s" in result.stderr


def test_timeouts_resolve_from_arguments_env_and_defaults() -> None:
    from docksnap.docker.client import EngineTimeouts

    assert EngineTimeouts.resolve(env={}) == EngineTimeouts(120.0, 120.0)
    env = {"DOCKSNAP_ENGINE_TIMEOUT": "7", "DOCKSNAP_STALL_TIMEOUT": "9.5"}
    assert EngineTimeouts.resolve(env=env) == EngineTimeouts(7.0, 9.5)
    assert EngineTimeouts.resolve(3, 4, env=env) == EngineTimeouts(3.0, 4.0)
    for bad in ({"DOCKSNAP_STALL_TIMEOUT": "soon"}, {"DOCKSNAP_ENGINE_TIMEOUT": "0"}):
        with pytest.raises(docksnap.InvalidArgumentError, match=r"DOCKSNAP_|timeout"):
            EngineTimeouts.resolve(env=bad)
    with pytest.raises(docksnap.InvalidArgumentError, match="-1"):
        docksnap.Client(engine_timeout=-1, store="file:///nonexistent")

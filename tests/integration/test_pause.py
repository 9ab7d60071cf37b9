"""Pauses on the real engine: never outliving docksnap, shared by concurrent snapshots.

The crash tests kill a real ``docksnap snapshot`` process with SIGKILL at named
points of its path (``service/failpoint.py``: the process stops there and
waits, so the kill lands exactly there on a loaded machine too), then watch
the container with no other command. Every process gets a private runtime
directory, so the pause records seen are this test's alone.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import docksnap
from docksnap.service.failpoint import ENV as FAILPOINT_ENV
from tests.conftest import SESSION_ID, SESSION_LABEL, SESSION_LABELS, TEST_IMAGE, unique_name

pytestmark = pytest.mark.docker

UNPAUSE_DEADLINE_S = 2.0


def _docker_state(name: str, host: str | None = None) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", *(["-H", host] if host else []), "inspect", "--format", "{{json .State}}", name],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    state: dict[str, Any] = json.loads(out)
    return state


@dataclass
class Rig:
    """A running container with data in /w, a private store and runtime dir, and the CLI."""

    tmp: Path
    docker_host: str | None = None
    name: str = field(default_factory=lambda: unique_name("ds-pause"))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def store(self) -> str:
        return (self.tmp / "store").as_uri()

    def env(self, failpoint: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKSNAP_LABELS"] = f"{SESSION_LABEL}={SESSION_ID}"
        env["DOCKSNAP_STORE"] = self.store
        env["DOCKSNAP_RUNTIME_DIR"] = str(self.tmp / "run")
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        env.pop(FAILPOINT_ENV, None)
        if failpoint:
            env[FAILPOINT_ENV] = f"{failpoint}={self.tmp / 'failpoint'}"
        return env

    def cli(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [sys.executable, "-m", "docksnap", *args],
            env=self.env(),
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == code, proc.stderr.decode()
        return proc

    def start(self, mib: int) -> None:
        script = (
            f"mkdir -p /w /v && dd if=/dev/urandom of=/w/data bs=1M count={mib} 2>/dev/null"
            " && echo small > /v/f && touch /tmp/.ready; exec sleep 1000"
        )
        self.cli("run", TEST_IMAGE, "--name", self.name, "--", "sh", "-c", script)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = subprocess.run(
                ["docker", "exec", self.name, "test", "-f", "/tmp/.ready"],
                capture_output=True,
                check=False,
                env=self.env(),
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not get ready")

    def snapshot_in_background(self, failpoint: str | None, directory: str = "/w") -> Any:
        proc = subprocess.Popen(
            [sys.executable, "-m", "docksnap", "--json", "snapshot", self.name, directory],
            env=self.env(failpoint),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def wait_for_failpoint(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while not (self.tmp / "failpoint").exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the snapshot never reached its failpoint"
            time.sleep(0.01)

    def release_failpoint(self) -> None:
        (self.tmp / "failpoint").unlink()

    def records(self) -> list[str]:
        return sorted(p.name for p in (self.tmp / "run").glob("*.json"))

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        subprocess.run(
            ["docker", "unpause", self.name], capture_output=True, check=False, env=self.env()
        )
        self.cli("rm-container", self.name)


@pytest.fixture
def rig(docker_engine: None, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.cleanup()


def _wait_running(name: str, deadline_s: float, host: str | None = None) -> float:
    """Seconds until the container runs unpaused; fails after ``deadline_s``."""
    started = time.monotonic()
    while True:
        state = _docker_state(name, host)
        elapsed = time.monotonic() - started
        if state["Running"] and not state["Paused"]:
            return elapsed
        assert elapsed < deadline_s, f"{name} still paused {elapsed:.2f} s after the kill"
        time.sleep(0.02)


@pytest.mark.parametrize("point", ["pause-intent", "paused", "reading", "unpaused"])
def test_sigkill_at_any_point_unpauses_within_two_seconds(rig: Rig, point: str) -> None:
    rig.start(mib=32)
    proc = rig.snapshot_in_background(point)
    rig.wait_for_failpoint(proc)
    if point == "paused":  # (at "reading" the engine is mid-archive and inspect would block)
        assert _docker_state(rig.name)["Paused"], "the test must kill a real pause"
    if point == "unpaused":
        assert not _docker_state(rig.name)["Paused"]

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    elapsed = _wait_running(rig.name, UNPAUSE_DEADLINE_S)

    # The watchdog cleaned up after itself and nothing became visible in the store.
    deadline = time.monotonic() + 10
    while rig.records() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.records() == [], f"pause records left behind ({elapsed:.2f} s)"
    assert json.loads(rig.cli("--json", "ls").stdout) == []


def test_the_watchdog_talks_to_the_engine_docksnap_used(tmp_path: Path) -> None:
    """A second engine (DOCKER_HOST): the watchdog unpauses there, not on the default one."""
    host = os.environ.get("DOCKSNAP_TEST_DOCKER_HOST_B")
    if not host:
        pytest.fail("DOCKSNAP_TEST_DOCKER_HOST_B is not set: run the tests with scripts/test")
    rig = Rig(tmp_path, docker_host=host)
    try:
        rig.start(mib=8)
        proc = rig.snapshot_in_background("paused")
        rig.wait_for_failpoint(proc)
        assert _docker_state(rig.name, host)["Paused"]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_running(rig.name, UNPAUSE_DEADLINE_S, host)
    finally:
        rig.cleanup()


def test_ctrl_c_unpauses_and_leaves_the_watchdog_nothing_to_do(rig: Rig) -> None:
    rig.start(mib=8)
    proc = rig.snapshot_in_background("reading")
    rig.wait_for_failpoint(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    _wait_running(rig.name, UNPAUSE_DEADLINE_S)
    assert rig.records() == []
    assert b"without unpausing" not in err, "docksnap released its own pause"


def _watchdogs_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_later_command_unpauses_what_a_dead_docksnap_and_its_watchdog_left(rig: Rig) -> None:
    rig.start(mib=1)
    proc = rig.snapshot_in_background("paused")
    rig.wait_for_failpoint(proc)
    watchdogs = _watchdogs_of(proc.pid)
    assert len(watchdogs) == 1, watchdogs
    os.kill(watchdogs[0], signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(UNPAUSE_DEADLINE_S)
    assert _docker_state(rig.name)["Paused"], "nothing should have unpaused it yet"

    result = rig.cli("ls")  # any command
    assert f"unpaused container {rig.name}" in result.stderr.decode()
    state = _docker_state(rig.name)
    assert state["Running"]
    assert not state["Paused"]
    assert rig.records() == []


def test_a_pause_made_by_someone_else_is_left_alone(rig: Rig) -> None:
    rig.start(mib=1)
    subprocess.run(["docker", "pause", rig.name], check=True, capture_output=True)
    doc = json.loads(rig.cli("--json", "snapshot", rig.name, "/w").stdout)
    assert doc["snapshot"]["size"] > 1024**2
    assert _docker_state(rig.name)["Paused"]

    proc = rig.snapshot_in_background("paused")  # killed while holding the foreign pause
    rig.wait_for_failpoint(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(UNPAUSE_DEADLINE_S)
    rig.cli("ls")
    assert _docker_state(rig.name)["Paused"], "docksnap unpaused a pause it did not make"


def test_two_processes_snapshot_one_container_at_once(rig: Rig) -> None:
    rig.start(mib=4)
    first = rig.snapshot_in_background("paused")
    rig.wait_for_failpoint(first)  # holds the pause, archive not read yet

    second = rig.cli("--json", "snapshot", rig.name, "/v")  # would 409 on "already paused"
    assert json.loads(second.stdout)["paused_s"] > 0
    assert _docker_state(rig.name)["Paused"], "the second snapshot unpaused under the first"

    rig.release_failpoint()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    assert json.loads(out)["snapshot"]["size"] > 4 * 1024**2
    assert _wait_running(rig.name, UNPAUSE_DEADLINE_S) >= 0
    assert rig.records() == []


async def test_two_clients_snapshot_one_container_at_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.start(mib=4)
    for key, value in rig.env("paused").items():
        monkeypatch.setenv(key, value)

    async with (
        docksnap.Client(store=rig.store, labels=SESSION_LABELS) as one,
        docksnap.Client(store=rig.store, labels=SESSION_LABELS) as two,
    ):
        first = asyncio.create_task(one.container(rig.name).snapshot_directory("/w"))
        while not (rig.tmp / "failpoint").exists():
            assert not first.done(), first.result()
            await asyncio.sleep(0.01)
        second = await two.container(rig.name).snapshot_directory("/v")
        assert second.paused_s is not None
        assert second.paused_s > 0
        assert _docker_state(rig.name)["Paused"], "the second client unpaused under the first"
        rig.release_failpoint()
        first_snap = await first
    assert first_snap.size > 4 * 1024**2
    assert not _docker_state(rig.name)["Paused"]
    assert rig.records() == []


# -- the pause as the app feels it --------------------------------------------------

TICKER = "while :; do read up idle < /proc/uptime; echo $up; usleep 10000; done >> /tmp/ticks"


def _longest_gap(ticks: bytes) -> float:
    times = [float(line) for line in ticks.split()]
    return max(b - a for a, b in itertools.pairwise(times))


async def _raw_get_s(client: docksnap.Client, name: str, path: str) -> float:
    started = time.monotonic()
    async with client.docker.get_archive(name, path) as archive:
        async for _ in archive.chunks:
            pass
    return time.monotonic() - started


@pytest.mark.slow
async def test_a_large_snapshot_freezes_the_app_only_while_the_engine_reads(rig: Rig) -> None:
    """The longest gap of a ticker inside the container is the freeze the app feels.

    It is compared with the time the engine needs to send the same archive
    (a plain GET, container not paused, timed just before and just after the
    snapshot; the slower of the two, as the machine's load swings by 2x within
    seconds when other test runs share it): docksnap pauses
    for the engine's read and nothing more, so the freeze stays near that
    time, 1.3x plus 0.4 s of slack for the pause and unpause requests and
    for a busy machine's scheduling. Before the read-ahead, the pause
    covered the whole store write, 3-5x the engine's time on this machine,
    which these bounds fail. The lower bound proves the ticker saw the pause.
    The best of up to three snapshots counts: a load spike from other test
    runs on the machine stretches one read, a regression stretches all three.
    """
    await asyncio.to_thread(rig.start, 256)
    await asyncio.to_thread(
        subprocess.run,
        ["docker", "exec", "-d", rig.name, "sh", "-c", TICKER],
        check=True,
        capture_output=True,
    )
    reports = []
    async with docksnap.Client(store=rig.store, labels=SESSION_LABELS) as client:
        await _raw_get_s(client, rig.name, "/w/.")  # warm the page cache
        for _ in range(3):  # the best of three: a load spike is not a regression
            freeze_s, paused_s, raw_get_s = await _measure_freeze(client, rig.name)
            report = f"freeze {freeze_s:.2f} s, paused_s {paused_s:.2f} s, GET {raw_get_s:.2f} s"
            reports.append(report)
            assert freeze_s >= 0.5 * raw_get_s, f"the ticker missed the pause: {report}"
            if max(freeze_s, paused_s) <= 1.3 * raw_get_s + 0.4:
                break
        else:
            raise AssertionError("the freeze outlasted the engine's read: " + "; ".join(reports))
    print(reports)


async def _measure_freeze(client: docksnap.Client, name: str) -> tuple[float, float, float]:
    """(longest ticker gap, paused_s, GET time) of one snapshot of /w."""
    await asyncio.to_thread(
        subprocess.run, ["docker", "exec", name, "sh", "-c", ": > /tmp/ticks"], check=True
    )
    before = await _raw_get_s(client, name, "/w/.")
    # The engine's read is what this compares with: host capture (the default on
    # a local engine) reads faster than the engine and has a pause test of its own.
    snap = await client.container(name).snapshot_directory("/w", capture="archive")
    await asyncio.sleep(0.2)  # a few ticks after the unpause
    raw_get_s = max(before, await _raw_get_s(client, name, "/w/."))
    async with client.docker.get_archive(name, "/tmp/ticks") as archive:
        tar = b"".join([piece async for piece in archive.chunks])
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive_file:
        member = archive_file.extractfile("ticks")
        assert member is not None
        freeze_s = _longest_gap(member.read())
    assert snap.paused_s is not None
    return freeze_s, snap.paused_s, raw_get_s

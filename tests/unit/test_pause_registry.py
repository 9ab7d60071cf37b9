"""The pause table's counting, across holders, on real files and a recording engine.

The engine here only records calls: what is tested is which calls the registry
makes (the real engine's pause behaviour is in tests/integration/test_pause.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from docksnap.errors import DockerError
from docksnap.service.pause import Holder, Outcome, PauseRecord, PauseRegistry

CID = "c" * 64
URL = "unix:///var/run/docker.sock"


class Engine:
    def __init__(self, paused: bool = False) -> None:
        self.paused = paused
        self.calls: list[str] = []

    async def inspect_container(self, container: str) -> dict[str, Any]:
        self.calls.append("inspect")
        return {"State": {"Paused": self.paused, "Running": True}}

    async def pause_container(self, container: str) -> None:
        self.calls.append("pause")
        if self.paused:
            raise DockerError(409, f"Container {container} is already paused")
        self.paused = True

    async def unpause_container(self, container: str) -> None:
        self.calls.append("unpause")
        if not self.paused:
            raise DockerError(500, f"Container {container} is not paused")
        self.paused = False


def _dead_holder() -> Holder:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Holder("dead", int(proc.stdout), "1", Holder.current("x").boot)


async def test_the_first_holder_pauses_and_the_last_unpauses(tmp_path: Path) -> None:
    registry, engine = PauseRegistry(tmp_path), Engine()
    assert await registry.acquire(engine, URL, CID, "box", "a") is True
    assert await registry.acquire(engine, URL, CID, "box", "b") is True
    assert engine.calls == ["inspect", "pause"]
    assert await registry.release(engine, CID, "a") is Outcome.KEPT
    assert engine.paused
    assert await registry.release(engine, CID, "a") is Outcome.NOT_HELD
    assert await registry.release(engine, CID, "b") is Outcome.UNPAUSED
    assert not engine.paused
    assert os.listdir(tmp_path) == [], "no record and no lock file is left"


async def test_a_pause_found_in_place_is_never_undone(tmp_path: Path) -> None:
    registry, engine = PauseRegistry(tmp_path), Engine(paused=True)
    assert await registry.acquire(engine, URL, CID, "box", "a") is False
    assert await registry.release(engine, CID, "a") is Outcome.LEFT
    assert engine.calls == ["inspect"]
    assert engine.paused


async def test_a_dead_holders_pause_is_taken_over_and_recovered(tmp_path: Path) -> None:
    registry, engine = PauseRegistry(tmp_path), Engine(paused=True)
    record = PauseRecord(CID, "box", URL, True, (_dead_holder(),))
    (tmp_path / f"{CID}.json").write_bytes(record.to_json())
    recovered = await registry.recover(engine, URL)
    assert [r.name for r in recovered] == ["box"]
    assert not engine.paused
    assert os.listdir(tmp_path) == []


async def test_a_live_holder_is_not_recovered(tmp_path: Path) -> None:
    registry, engine = PauseRegistry(tmp_path), Engine()
    await registry.acquire(engine, URL, CID, "box", "a")
    assert await registry.recover(engine, URL) == []
    assert engine.paused


async def test_a_holder_that_died_before_its_pause_leaves_nothing_to_undo(tmp_path: Path) -> None:
    registry, engine = PauseRegistry(tmp_path), Engine()
    record = PauseRecord(CID, "box", URL, True, (_dead_holder(),))
    (tmp_path / f"{CID}.json").write_bytes(record.to_json())
    assert await registry.recover(engine, URL) == []
    assert engine.calls == ["inspect"]
    assert os.listdir(tmp_path) == []


async def test_a_directory_other_users_could_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="0700"):
        await PauseRegistry(shared).acquire(Engine(), URL, CID, "box", "a")

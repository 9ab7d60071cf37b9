"""Issue 10, defect 5: a killed ``docksnap run --restore`` leaves nothing that blocks.

A real ``docksnap run --restore`` process is SIGKILLed while its helper container
fills the restore volume; the helper then pins the volume ("volume is in use").
``rm-container NAME``, a new ``run --name NAME`` and ``gc`` must each clear it,
and ``gc`` also reaps restore volumes whose container went with ``docker rm -f``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import docksnap
from docksnap import labels as lbl
from docksnap.docker import helper_container
from tests.conftest import SESSION_ID, SESSION_LABEL, SESSION_LABELS, TEST_IMAGE, unique_name
from tests.integration.test_cli import EXE, Cli

pytestmark = pytest.mark.docker

SESSION = f"label={SESSION_LABEL}={SESSION_ID}"


@pytest.fixture
def cli(docker_engine: None, tmp_path: Path) -> Iterator[Cli]:
    runner = Cli((tmp_path / "store").as_uri())
    yield runner
    runner.cleanup()


@pytest.fixture
def big_snapshot(cli: Cli) -> str:
    """A snapshot large enough that filling its restore volume takes a while."""
    box = cli.run_box("mkdir /d && head -c 48000000 /dev/urandom > /d/f")
    snapshot_id: str = cli.snapshot(box, "/d")["snapshot"]["id"]
    cli("rm-container", box)
    cli.containers.remove(box)
    return snapshot_id


def _docker(*args: str) -> list[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.split()


def volumes_of(name: str) -> list[str]:
    return _docker(
        "volume", "ls", "-q", "--filter", SESSION, "--filter", f"label={lbl.OWNER}={name}"
    )


def helpers_using(volume: str) -> list[str]:
    return _docker(
        "ps",
        "-aq",
        "--filter",
        SESSION,
        "--filter",
        "label=io.docksnap.role=helper",
        "--filter",
        f"volume={volume}",
    )


def containers_named(name: str) -> list[str]:
    return _docker("ps", "-aq", "--filter", f"name=^/{name}$")


def cache_entries_of(snapshot_id: str) -> list[str]:
    return _docker(
        "volume",
        "ls",
        "-q",
        "--filter",
        SESSION,
        "--filter",
        "label=io.docksnap.role=cache",
        "--filter",
        f"label={lbl.SNAPSHOT_ID}={snapshot_id}",
    )


def killed_mid_restore(cli: Cli, snapshot_id: str, *, cache: bool = False) -> tuple[str, str]:
    """SIGKILL ``docksnap run --restore`` while its helper fills the volume.

    Returns the container name and the pinned volume; asserts the pinned state
    (a helper holds the volume), so the tests below start from the defect. With
    ``cache`` the volume is the restore cache entry being filled, else the
    streamed restore's volume.
    """
    name = unique_name("ds-killed")
    cli.containers.append(name)
    assert EXE is not None
    mode = "auto" if cache else "off"
    args = [EXE, "run", TEST_IMAGE, "--name", name, "--restore", snapshot_id]
    args += ["--restore-cache", mode, "--", "sleep", "1000"]
    proc = subprocess.Popen(
        args,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            filled = cache_entries_of(snapshot_id) if cache else volumes_of(name)
            pinned = [(v, h) for v in filled for h in helpers_using(v)]
            if pinned:
                proc.kill()
                break
            assert proc.poll() is None, "run finished before its helper was seen"
            time.sleep(0.01)
        else:
            raise AssertionError("no helper appeared")
    finally:
        proc.kill()
        proc.wait()
    volume, _ = pinned[0]
    assert helpers_using(volume), "the helper went away by itself"
    assert containers_named(name) == []
    return name, volume


def test_rm_container_clears_a_killed_run(cli: Cli, big_snapshot: str) -> None:
    name, volume = killed_mid_restore(cli, big_snapshot)
    cli("rm-container", name)
    assert helpers_using(volume) == []
    assert volumes_of(name) == []


def test_new_run_with_the_name_clears_a_killed_run(cli: Cli, big_snapshot: str) -> None:
    name, volume = killed_mid_restore(cli, big_snapshot)
    cli("run", TEST_IMAGE, "--name", name, "--restore", big_snapshot, "--restore-cache", "off")
    assert helpers_using(volume) == []
    assert volume not in volumes_of(name)
    assert len(volumes_of(name)) == 1  # the new container's own


def test_gc_reaps_what_a_killed_run_left(cli: Cli, big_snapshot: str) -> None:
    name, volume = killed_mid_restore(cli, big_snapshot)
    report = cli.json("gc")
    assert helpers_using(volume) == []
    assert volumes_of(name) == []
    assert volume in report["orphans"]["volumes"]
    assert len(report["orphans"]["containers"]) == 1


def test_gc_reaps_a_fill_of_the_restore_cache_that_was_killed(cli: Cli, big_snapshot: str) -> None:
    """An entry whose fill died is never used, and gc removes it with its helper."""
    name, entry = killed_mid_restore(cli, big_snapshot, cache=True)
    report = cli.json("gc")
    assert helpers_using(entry) == []
    assert cache_entries_of(big_snapshot) == []
    assert entry in report["orphans"]["volumes"]
    # The next restore fills a new entry and uses it.
    cli("run", TEST_IMAGE, "--name", name, "--restore", big_snapshot, "--", "sleep", "1000")
    [fresh] = cache_entries_of(big_snapshot)
    assert fresh != entry
    [listed] = [e for e in cli.json("cache", "ls") if e["name"] == fresh]
    assert listed["complete"]


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_gc_reaps_restore_volumes_of_a_container_removed_by_docker(cli: Cli, mode: str) -> None:
    """Streamed: one restore volume; cached: the overlay view and its upper volume."""
    box = cli.run_box("mkdir /d && echo x > /d/f")
    snapshot_id = cli.snapshot(box, "/d")["snapshot"]["id"]
    name = unique_name("ds-orphan")
    cli.containers.append(name)
    cli("run", TEST_IMAGE, "--name", name, "--restore", snapshot_id, "--restore-cache", mode)
    volumes = volumes_of(name)
    assert len(volumes) == (2 if mode == "auto" else 1)
    reaped = cli.json("gc", "--grace", "0")["orphans"]["volumes"]
    assert not set(volumes) & set(reaped)  # in use: kept
    assert sorted(volumes_of(name)) == sorted(volumes)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=True)
    assert sorted(volumes_of(name)) == sorted(volumes)
    assert set(volumes) <= set(cli.json("gc")["orphans"]["volumes"])
    assert volumes_of(name) == []
    if mode == "auto":  # the entry stays cached, no longer in use
        [entry] = [e for e in cli.json("cache", "ls") if e["snapshot_id"] == snapshot_id]
        assert not entry["in_use"]


async def test_gc_keeps_what_a_live_process_is_using(docker_engine: None, tmp_path: Path) -> None:
    """A helper and a restore volume whose creator still runs are kept, whatever the grace."""
    async with docksnap.Client(store=(tmp_path / "s").as_uri(), labels=SESSION_LABELS) as client:
        volume = "docksnap-restore-" + unique_name("live")
        owner = unique_name("ds-live")
        await client.docker.create_volume(
            volume, lbl.make_labels(lbl.Role.RESTORE, SESSION_LABELS, lbl.creator_fields(owner))
        )
        try:
            helper_labels = lbl.make_labels(lbl.Role.HELPER, SESSION_LABELS)
            async with helper_container(client.docker, TEST_IMAGE, volume, helper_labels) as helper:
                report = await client.reap_orphans(grace=0)
                assert helper not in report.containers
                assert volume not in report.volumes
                assert await client.docker.inspect_volume(volume) is not None
            report = await client.reap_orphans(grace=0)  # unused now, but its creator lives
            assert volume not in report.volumes
        finally:
            await client.docker.remove_volume(volume)

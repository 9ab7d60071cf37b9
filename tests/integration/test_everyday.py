"""Issue 13 on a real engine: docksnap where `docker run`, `docker cp` and Compose already are.

Stopped containers, restores into containers docksnap did not make (`docker
create`, Compose), `docker run`'s options on ``start()``, snapshot references,
messages, and the synchronous client in a thread that already runs a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import docksnap
from docksnap import DirectorySnapshot, SnapshotRestore
from docksnap.store.base import SnapshotSource
from tests.conftest import (
    SESSION_ID,
    SESSION_LABEL,
    SESSION_LABELS,
    TEST_IMAGE,
    docker,
    read_file,
    sleeper,
    unique_name,
)

pytestmark = pytest.mark.docker

Boxes = list[docksnap.Container]
SESSION = f"{SESSION_LABEL}={SESSION_ID}"
COMPOSE_LABELS = {
    "com.docker.compose.project": "shop",
    "com.docker.compose.service": "db",
    "com.docker.compose.container-number": "1",
}


@pytest.fixture
async def local(docker_engine: None, tmp_path: Path) -> AsyncIterator[docksnap.Client]:
    """The default store only: what is tested here does not depend on the store."""
    async with docksnap.Client(store=(tmp_path / "store").as_uri(), labels=SESSION_LABELS) as c:
        yield c


@pytest.fixture
async def boxes(local: docksnap.Client) -> AsyncIterator[Boxes]:
    made: Boxes = []
    yield made
    for box in made:
        await box.destroy()


@pytest.fixture
def foreign() -> Iterator[list[str]]:
    """Names of containers made with the docker CLI here; force-removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


async def running(client: docksnap.Client, boxes: Boxes, script: str, **kw: object) -> str:
    box = client.container(unique_name())
    boxes.append(box)
    await box.start(TEST_IMAGE, entrypoint=sleeper(script + "\ntouch /tmp/.ready"), **kw)  # type: ignore[arg-type]
    for _ in range(100):
        if await read_file(client, box.name, "/tmp/.ready") is not None:
            return box.name
        await asyncio.sleep(0.05)
    raise AssertionError("container script did not finish")


async def snapshot_of(
    client: docksnap.Client, boxes: Boxes, script: str, path: str
) -> DirectorySnapshot:
    name = await running(client, boxes, script)
    return await client.container(name).snapshot_directory(path)


# -- 1. stopped containers ------------------------------------------------------------


async def test_snapshot_of_a_created_container(local: docksnap.Client, foreign: list[str]) -> None:
    """A container that was created and never started is read as `docker cp` reads it."""
    name = unique_name("ds-created")
    foreign.append(name)
    docker("create", "--name", name, "--label", SESSION, "--network", "none", TEST_IMAGE)
    box = local.container(name)
    assert await box.describe() == "created, never started"
    snap = await box.snapshot_directory("/etc")
    names = {entry.path for entry in await local.snapshots.files(snap.id)}
    assert {"passwd", "group"} <= names
    assert docker("inspect", "-f", "{{.State.Status}}", name) == "created"


# -- 2. restore into an existing container -------------------------------------------


async def test_restore_into_a_compose_style_container(
    local: docksnap.Client, boxes: Boxes, foreign: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`docker create` with Compose's labels, restored into, then started: it sees the files.

    Merge semantics: the image's own files at the target stay. A running
    container is refused unless force=True, which logs a warning.
    """
    snap = await snapshot_of(local, boxes, "mkdir -p /seed && echo seeded > /seed/f", "/seed")
    name = unique_name("ds-compose")
    foreign.append(name)
    labels = [arg for k, v in COMPOSE_LABELS.items() for arg in ("--label", f"{k}={v}")]
    docker(
        "create", "--name", name, *labels, "--label", SESSION, "--network", "none", TEST_IMAGE,
        "sh", "-c", "cat /seed/f /etc/seed/f; test -f /etc/passwd && echo kept; exec sleep 1000",
    )  # fmt: skip
    target = local.container(name)
    done = await target.restore([snap, SnapshotRestore(snap, mount_point="/etc/seed")])
    assert [(r.target, r.merge) for r in done] == [("/seed", True), ("/etc/seed", True)]
    docker("start", name)
    for _ in range(100):
        if "kept" in docker("logs", name):
            break
        await asyncio.sleep(0.05)
    assert docker("logs", name).split() == ["seeded", "seeded", "kept"]

    with pytest.raises(docksnap.ContainerAlreadyRunningError, match=r"force=True"):
        await target.restore([SnapshotRestore(snap, mount_point="/again")])
    assert await read_file(local, name, "/again/f") is None
    with caplog.at_level(logging.WARNING, logger="docksnap"):
        await target.restore([SnapshotRestore(snap, mount_point="/again")], force=True)
    assert await read_file(local, name, "/again/f") == b"seeded\n"
    assert any("running container" in r.getMessage() for r in caplog.records)


async def test_restore_refuses_unknown_ids_and_missing_containers(
    local: docksnap.Client, foreign: list[str]
) -> None:
    name = unique_name("ds-created")
    foreign.append(name)
    docker("create", "--name", name, "--label", SESSION, "--network", "none", TEST_IMAGE)
    ghost = DirectorySnapshot(id="00000000-0000-4000-8000-000000000000", size=1, dir="/x")
    with pytest.raises(docksnap.SnapshotNotFoundError):
        await local.container(name).restore([ghost])
    assert await read_file(local, name, "/x") is None
    with pytest.raises(docksnap.ContainerNotFoundError, match="no such container"):
        await local.container(unique_name("ds-ghost")).restore([ghost])


async def test_restore_into_a_container_docker_compose_created(
    local: docksnap.Client, boxes: Boxes, tmp_path: Path
) -> None:
    """Debian's docker-compose creates the service; docksnap restores; compose starts it.

    `scripts/setup tools` installs docker-compose; without it this fails, never skips.
    """
    assert shutil.which("docker-compose"), "no docker-compose: run scripts/setup tools"
    snap = await snapshot_of(local, boxes, "mkdir -p /seed && echo from-compose > /seed/f", "/seed")
    project = unique_name("dscompose").replace("-", "")
    (tmp_path / "docker-compose.yml").write_text(
        textwrap.dedent(
            f"""\
            version: "2.4"
            services:
              app:
                image: {TEST_IMAGE}
                network_mode: none
                labels:
                  {SESSION_LABEL}: "{SESSION_ID}"
                command: ["sh", "-c", "cat /seed/f"]
            """
        )
    )
    compose = ["docker-compose", "-p", project, "-f", str(tmp_path / "docker-compose.yml")]

    def run(*args: str) -> str:
        return subprocess.run(
            [*compose, *args], capture_output=True, text=True, check=True, cwd=tmp_path
        ).stdout

    try:
        run("up", "--no-start")
        name = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
        assert name, "compose created no container"
        await local.container(name).restore([snap])
        run("start")
        await asyncio.to_thread(subprocess.run, ["docker", "wait", name], capture_output=True)
        assert docker("logs", name) == "from-compose"
    finally:
        await asyncio.to_thread(
            subprocess.run, [*compose, "down", "-v"], capture_output=True, check=False, cwd=tmp_path
        )


# -- 3. docker run's options ------------------------------------------------------------


async def test_start_takes_docker_run_options(
    local: docksnap.Client, boxes: Boxes, tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# settings\nFROM_FILE=1\nBOTH=file\n")
    name = await running(
        local,
        boxes,
        "id -u > /tmp/uid; pwd > /tmp/pwd; echo $FROM_FILE $BOTH > /tmp/env",
        env={"BOTH": "env"},
        env_file=str(env_file),
        user="1234:1234",
        workdir="/home/user",
        labels={"com.example.team": "data"},
        memory="64m",
        cpus="0.5",
        restart="on-failure:2",
    )
    assert await read_file(local, name, "/tmp/uid") == b"1234\n"
    assert await read_file(local, name, "/tmp/pwd") == b"/home/user\n"
    assert await read_file(local, name, "/tmp/env") == b"1 env\n"
    info = json.loads(docker("inspect", name))[0]
    host = info["HostConfig"]
    assert (host["Memory"], host["NanoCpus"]) == (64 << 20, 500_000_000)
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert info["Config"]["Labels"]["com.example.team"] == "data"
    assert info["Config"]["Labels"]["io.docksnap.role"] == "app"
    assert host["NetworkMode"] == "none"


async def test_entrypoint_and_command_and_rm(local: docksnap.Client, boxes: Boxes) -> None:
    """``command`` goes to the entrypoint, as docker run's arguments; ``remove`` is --rm."""
    box = local.container(unique_name())
    boxes.append(box)
    await box.start(TEST_IMAGE, entrypoint=["sh"], command=["-c", "exit 3"], remove=True)
    assert await box.monitor() == 3
    for _ in range(100):
        if not docker("ps", "-aq", "--filter", f"name=^/{box.name}$"):
            break
        await asyncio.sleep(0.05)
    assert docker("ps", "-aq", "--filter", f"name=^/{box.name}$") == ""


async def test_bind_mount_and_named_volume_beside_a_restore(
    local: docksnap.Client, boxes: Boxes, tmp_path: Path
) -> None:
    snap = await snapshot_of(local, boxes, "mkdir -p /w && echo restored > /w/f", "/w")
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "greeting").write_text("from the host\n")
    volume = unique_name("ds-vol")
    docker("volume", "create", "--label", SESSION, "--label", "io.docksnap.managed=true", volume)
    try:
        name = await running(
            local,
            boxes,
            "cat /host/greeting > /tmp/seen; echo kept > /named/x;"
            " touch /host/new || echo ro > /tmp/ro",
            volumes=[f"{host_dir}:/host:ro", f"{volume}:/named"],
            snapshots=[snap],
        )
        assert await read_file(local, name, "/tmp/seen") == b"from the host\n"
        assert await read_file(local, name, "/tmp/ro") == b"ro\n"
        assert await read_file(local, name, "/w/f") == b"restored\n"
        assert not (host_dir / "new").exists()
        overlapping = local.container(unique_name())
        for target in ("/host", "/host/sub", "/"):
            restore = SnapshotRestore(snap, mount_point=target, merge=target == "/")
            with pytest.raises(docksnap.InvalidArgumentError, match="overlaps the volume"):
                await overlapping.start(
                    TEST_IMAGE, volumes=[f"{host_dir}:/host"], snapshots=[restore]
                )
        assert not await overlapping.refresh()
    finally:
        for box in boxes:
            await box.destroy()
        docker("volume", "rm", volume)


async def test_publish_reaches_the_container_on_loopback_only(
    network: str, local: docksnap.Client, boxes: Boxes
) -> None:
    """-p 127.0.0.1::8080 on a user-defined bridge: the engine's userland proxy answers.

    The engine runs with --iptables=false, so no NAT rule exists: the proxy
    (docker-proxy) listening on 127.0.0.1 is what forwards the connection.
    """
    name = await running(
        local,
        boxes,
        'while true; do printf "HTTP/1.0 200 OK\\r\\n\\r\\nhello from $HOSTNAME\\n"'
        " | nc -l -p 8080; done &",
        network=network,
        publish=["127.0.0.1::8080"],
    )
    bindings = json.loads(docker("inspect", name))[0]["NetworkSettings"]["Ports"]["8080/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    port = int(bindings[0]["HostPort"])
    reply = await asyncio.to_thread(_http_get, port)
    assert reply.startswith(b"HTTP/1.0 200 OK")
    assert b"hello from" in reply


def _http_get(port: int) -> bytes:
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            if data:
                return data
        time.sleep(0.05)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port}")


async def test_publish_needs_a_network_that_can_publish(local: docksnap.Client) -> None:
    box = local.container(unique_name())
    with pytest.raises(docksnap.InvalidArgumentError, match="needs a network"):
        await box.start(TEST_IMAGE, publish=["8080"])
    with pytest.raises(docksnap.InvalidArgumentError, match="network 'host'"):
        await box.start(TEST_IMAGE, publish=["8080"], network="host")
    with pytest.raises(docksnap.InvalidArgumentError, match="does not exist on this engine"):
        await box.start(TEST_IMAGE, publish=["8080"], network=unique_name("ds-nonet"))
    assert not await box.refresh()


# -- 4. references ------------------------------------------------------------------------


async def _saved(client: docksnap.Client, snapshot_id: str, name: str | None) -> None:
    """A snapshot with a chosen id (ids are random; an ambiguous prefix needs two alike)."""

    async def tar() -> AsyncIterator[bytes]:
        yield bytes(1024)  # an empty tar: two zero blocks

    record = DirectorySnapshot(id=snapshot_id, size=0, dir="/d", name=name)
    await client.store.save(record, tar(), source=SnapshotSource("", ""))


async def test_references(local: docksnap.Client) -> None:
    ids = [
        "abcd1111-0000-4000-8000-000000000001",
        "abcd2222-0000-4000-8000-000000000002",
        "ef015555-0000-4000-8000-000000000003",
    ]
    for snapshot_id, name in zip(ids, ["step", "step", "other"], strict=True):
        await _saved(local, snapshot_id, name)
        await asyncio.sleep(0.01)  # distinct creation times: "newest" is well defined
    resolve = local.snapshots.resolve
    assert (await resolve(ids[0])).id == ids[0]
    assert (await resolve("abcd1")).id == ids[0]
    assert (await resolve("EF01")).id == ids[2]
    assert (await resolve("name:step")).id == ids[1]
    assert (await resolve("name:step~1")).id == ids[0]
    with pytest.raises(docksnap.AmbiguousSnapshotError, match="2 snapshots") as ambiguous:
        await resolve("abcd")
    assert ambiguous.value.candidates == [ids[1], ids[0]]
    for missing in ("name:step~2", "name:nope", "9999", "00000000-0000-4000-8000-000000000000"):
        with pytest.raises(docksnap.SnapshotNotFoundError):
            await resolve(missing)
    for bad in ("abc", "name:", "name:step~x", "zzzzzz", ""):
        with pytest.raises(docksnap.InvalidArgumentError):
            await resolve(bad)


# -- 5. messages --------------------------------------------------------------------------


async def test_not_found_and_not_running_say_which(local: docksnap.Client, boxes: Boxes) -> None:
    ghost = local.container(unique_name("ds-ghost"))
    with pytest.raises(docksnap.ContainerNotFoundError, match=r"^no such container 'ds-ghost-"):
        await ghost.signal(15)
    box = local.container(unique_name())
    boxes.append(box)
    await box.start(TEST_IMAGE, entrypoint=["true"])
    await box.monitor()
    with pytest.raises(
        docksnap.ContainerNotRunningError,
        match=r"^container 'ds-test-\w+' is not running \(exited \d+ (s|min) ago, code 0\)$",
    ):
        await box.signal(15)


# -- 7. the synchronous client ----------------------------------------------------------


def test_sync_client_in_a_thread_that_runs_an_event_loop(
    docker_engine: None, tmp_path: Path
) -> None:
    """As in Jupyter: a loop already runs in this thread, and the blocking calls still work."""
    name = unique_name("ds-sync")

    async def notebook_cell() -> tuple[DirectorySnapshot, str, bytes]:
        assert asyncio.get_running_loop().is_running()
        with docksnap.SyncClient(store=(tmp_path / "s").as_uri(), labels=SESSION_LABELS) as client:
            box = client.container(name)
            try:
                box.start(TEST_IMAGE, entrypoint=["sh", "-c", "mkdir /w && echo nb > /w/f"])
                assert box.monitor() == 0
                snap = box.snapshot_directory("/w", name="cell")
                found = client.snapshots.resolve("name:cell").id
                with client.snapshots.export(found) as reader:
                    tar = b"".join(reader)
            finally:
                box.destroy()
        return snap, found, tar

    with ThreadPoolExecutor(1) as pool:
        snap, found, tar = pool.submit(asyncio.run, notebook_cell()).result(timeout=120)
    assert found == snap.id
    assert len(tar) == snap.size
    assert docker("ps", "-aq", "--filter", f"name=^/{name}$") == ""


def test_sync_client_in_a_plain_script(docker_engine: None, tmp_path: Path) -> None:
    """No event loop anywhere: a script as docker-py users write them."""
    name = unique_name("ds-script")
    script = textwrap.dedent(
        f"""
        import docksnap
        with docksnap.SyncClient(store={(tmp_path / "s").as_uri()!r},
                                 labels={SESSION_LABELS!r}) as client:
            box = client.container({name!r})
            box.start({TEST_IMAGE!r}, entrypoint=["sh", "-c", "mkdir /w; echo hi > /w/f"])
            box.monitor()
            snap = box.snapshot_directory("/w")
            box.destroy()
            print(snap.id, [i.id for i in client.snapshots.list()] == [snap.id])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out[1] == "True"
    assert docker("ps", "-aq", "--filter", f"name=^/{name}$") == ""

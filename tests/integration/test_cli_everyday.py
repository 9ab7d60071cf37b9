"""Issue 13 through the real ``docksnap`` executable: docker run's options, restore --into,
references, messages in CLI words, prune/ls/--ttl polish."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import docksnap
from docksnap import DirectorySnapshot
from docksnap.store.base import SnapshotSource
from tests.conftest import (
    SESSION_ID,
    SESSION_LABEL,
    SESSION_LABELS,
    TEST_IMAGE,
    docker,
    unique_name,
)
from tests.integration.test_cli import Cli, on_a_terminal

pytestmark = pytest.mark.docker

SESSION = f"{SESSION_LABEL}={SESSION_ID}"


@pytest.fixture
def cli(docker_engine: None, tmp_path: Path) -> Iterator[Cli]:
    runner = Cli((tmp_path / "store").as_uri())
    yield runner
    runner.cleanup()


def stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode()


def test_run_with_publish_volume_and_the_rest(network: str, cli: Cli, tmp_path: Path) -> None:
    """`-v` after `run` is --volume; `-p` publishes on loopback through a user network."""
    (tmp_path / "greeting").write_text("hi from the host\n")
    env_file = tmp_path / "env"
    env_file.write_text("WHO=file\n")
    box = cli.run_box(
        'echo "$WHO $(id -u) $(pwd)" > /tmp/who;'
        ' while true; do printf "HTTP/1.0 200 OK\\r\\n\\r\\n$(cat /tmp/who)\\n"'
        " | nc -l -p 8080; done &",
        *("-v", f"{tmp_path}:/host:ro", "-p", "127.0.0.1::8080", "--network", network),
        *("--env-file", str(env_file), "-u", "1234", "-w", "/home/user", "-l", "team=data"),
        *("-m", "64m", "--cpus", "0.5", "--restart", "unless-stopped"),
    )
    info = json.loads(docker("inspect", box))[0]
    assert info["Config"]["Labels"]["team"] == "data"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    # As root: pytest's tmp_path is private to root, user 1234 cannot enter it.
    assert docker("exec", "-u", "0", box, "cat", "/host/greeting") == "hi from the host"
    binding = info["NetworkSettings"]["Ports"]["8080/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    assert _http_get(int(binding["HostPort"])).endswith(b"file 1234 /home/user\n")


def _http_get(port: int) -> bytes:
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), 2) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
            if data:
                return data
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port}")


def test_run_refusals_speak_cli(cli: Cli) -> None:
    no_net = cli("run", TEST_IMAGE, "--name", unique_name(), "-p", "8080", code=2)
    assert "--network" in stderr(no_net)
    snap = cli.import_tar("-", "--dir", "/d", stdin=bytes(1024))["snapshot"]["id"]
    to_root = cli("run", TEST_IMAGE, "--name", unique_name(), "--restore", f"{snap}:/", code=2)
    assert "--merge" in stderr(to_root)
    assert "merge=True" not in stderr(to_root)
    bad = cli("run", TEST_IMAGE, "--name", unique_name(), "--memory", "lots", code=2)
    assert "invalid memory 'lots'" in stderr(bad)
    both = cli("run", TEST_IMAGE, "--name", unique_name(), "--rm", "--restart", "always", code=2)
    assert "--rm and --restart always conflict" in stderr(both)


def test_restore_into_a_created_container(cli: Cli) -> None:
    box = cli.run_box("mkdir -p /seed && echo seeded > /seed/f")
    snap = cli.snapshot(box, "/seed", "--name", "seed")["snapshot"]["id"]
    target = unique_name("ds-created")
    cli.containers.append(target)  # rm-container removes it afterwards
    docker(
        "create", "--name", target, "--label", SESSION, "--label", "com.docker.compose.project=p",
        "--network", "none", TEST_IMAGE, "sh", "-c", "cat /seed/f /data/f; exec sleep 1000",
    )  # fmt: skip
    done = cli.json("restore", "name:seed", f"{snap[:6]}:/data", "--into", target)
    assert [(r["id"], r["target"]) for r in done["restores"]] == [(snap, "/seed"), (snap, "/data")]
    docker("start", target)
    for _ in range(100):
        if docker("logs", target).split() == ["seeded", "seeded"]:
            break
        time.sleep(0.05)
    assert docker("logs", target).split() == ["seeded", "seeded"]
    refused = cli("restore", snap, "--into", target, code=4)
    assert "--force" in stderr(refused)
    assert "force=True" not in stderr(refused)
    forced = cli("restore", f"{snap}:/again", "--into", target, "--force")
    assert "warning" in stderr(forced)
    assert docker("exec", target, "cat", "/again/f") == "seeded"
    missing = cli("restore", snap, "--into", unique_name("ds-ghost"), code=4)
    assert "no such container 'ds-ghost-" in stderr(missing)


def test_snapshot_of_an_exited_container_and_messages(cli: Cli) -> None:
    name = unique_name("ds-cli")
    cli.containers.append(name)
    cli("run", TEST_IMAGE, "--name", name, "--", "sh", "-c", "mkdir /out; echo job > /out/r")
    docker("wait", name)
    proc = cli("snapshot", name, "/out")
    assert f"container {name} is not running (exited" in proc.stdout.decode()
    assert "not paused" in proc.stdout.decode()
    doc = cli.json("snapshot", name, "/out")
    assert doc["paused"] is False
    stopped = cli("stop", name, code=4)
    assert f"container '{name}' is not running (exited" in stderr(stopped)
    assert "code 0)" in stderr(stopped)
    ghost = cli("stop", "ds-no-such-box", code=4)
    assert "no such container 'ds-no-such-box'" in stderr(ghost)


def _store_with(cli: Cli, named: list[tuple[str, str | None]]) -> None:
    """Snapshots with chosen ids (an ambiguous prefix needs two alike), via the library."""

    async def save() -> None:
        async with docksnap.Client(store=cli.store, labels=SESSION_LABELS) as client:
            for snapshot_id, name in named:

                async def tar() -> object:
                    yield bytes(1024)

                record = DirectorySnapshot(id=snapshot_id, size=0, dir="/d", name=name)
                await client.store.save(record, tar(), source=SnapshotSource("", ""))  # type: ignore[arg-type]
                await asyncio.sleep(0.01)

    asyncio.run(save())


A = "abcd1111-0000-4000-8000-000000000001"
B = "abcd2222-0000-4000-8000-000000000002"
C = "ef015555-0000-4000-8000-000000000003"


def test_references_everywhere(cli: Cli, tmp_path: Path) -> None:
    _store_with(cli, [(A, "step"), (B, "step"), (C, "other")])
    assert cli("-q", "show", "abcd1").stdout.decode().strip() == A
    assert cli("-q", "show", "name:step").stdout.decode().strip() == B
    assert cli("-q", "show", "name:step~1").stdout.decode().strip() == A
    ambiguous = cli.json("show", "abcd", code=2)["error"]
    assert ambiguous["type"] == "AmbiguousSnapshotError"
    assert A in ambiguous["message"]
    assert B in ambiguous["message"]
    cli("show", "name:step~5", code=6)
    cli("diff", "abcd1", "name:step")
    cli("export", "ef01", "-o", str(tmp_path / "c.tar"))
    assert cli.json("files", "name:other") == []  # an empty directory, found by name
    cli("verify", "abcd2")
    assert cli.json("rm", "abcd1", "name:step~1")["deleted"] == [A]
    assert cli("-q", "ls").stdout.decode().split() == [C, B]


def test_prune_by_name_dry_run(cli: Cli) -> None:
    _store_with(cli, [(A, "step"), (B, "step"), (C, "other")])
    dry = cli.json("prune", "--keep-last", "0", "--name", "step", "--dry-run")
    assert dry == {"deleted": [], "would_delete": [B, A]}
    assert len(cli.json("ls")) == 3
    assert cli.json("prune", "--keep-last", "1", "--name", "step")["deleted"] == [A]
    assert cli("-q", "ls").stdout.decode().split() == [C, B]


def test_ls_fits_the_terminal_and_no_trunc_does_not(cli: Cli) -> None:
    _store_with(cli, [(A, "a-long-name-for-a-snapshot"), (B, "step")])
    narrow = cli("ls", env_extra={"COLUMNS": "50"}).stdout.decode().splitlines()
    assert all(len(line) <= 50 for line in narrow), narrow
    assert narrow[1].startswith("abcd2222 ")
    full = cli("ls", "--no-trunc", env_extra={"COLUMNS": "50"}).stdout.decode().splitlines()
    assert full[1].startswith(B)
    assert "CONTAINER" in full[0]


def test_ttl_accepts_what_its_help_says(cli: Cli) -> None:
    assert "0 expires at the next gc" in cli("import", "--help").stdout.decode()
    refused = cli("import", "-", "--dir", "/d", "--ttl", "-1", stdin=bytes(1024), code=2)
    assert "'-1' is not a duration" in stderr(refused)
    assert cli.import_tar("-", "--dir", "/d", "--ttl", "0", stdin=bytes(1024))["ttl"] == 0
    doc = cli.import_tar("-", "--dir", "/d", "--ttl", "90m", stdin=bytes(1024))
    assert doc["ttl"] == 5400


def test_snapshot_bar_estimates_from_the_last_snapshot_or_the_parent(cli: Cli) -> None:
    """The bar's total is `~SIZE` when a size is known in advance, and absent otherwise."""
    box = cli.run_box("mkdir -p /d && head -c 30000000 /dev/urandom > /d/f")
    code, first = on_a_terminal(cli, "snapshot", box, "/d")
    assert code == 0, first
    assert b"saving " in first
    assert b"/ ~" not in first  # nothing to go by: indeterminate
    code, again = on_a_terminal(cli, "snapshot", box, "/d", "--name", "parent")
    assert code == 0, again
    assert b"/ ~28.6 MiB" in again  # this container's last snapshot of /d
    child = cli.run_box("true", "--restore", "name:parent")
    code, from_parent = on_a_terminal(cli, "snapshot", child, "/d")
    assert code == 0, from_parent
    assert b"/ ~28.6 MiB" in from_parent  # the snapshot restored at /d

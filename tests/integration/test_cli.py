"""The real ``docksnap`` executable, in subprocesses, against the real engine.

Every resource the commands create carries this session's label (through
``DOCKSNAP_LABELS``), so the session's leak check sees anything left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import docksnap
from docksnap.store.base import SnapshotInfo
from tests.conftest import SESSION_ID, SESSION_LABEL, SESSION_LABELS, TEST_IMAGE, unique_name
from tests.tarcraft import member, tar_of

pytestmark = pytest.mark.docker

EXE = shutil.which("docksnap", path=str(Path(sys.executable).parent))
NO_ENGINE = "unix:///nonexistent.sock"


@dataclass
class Cli:
    """Runs ``docksnap`` with this session's labels and one store; remembers what it made."""

    store: str
    containers: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
        env["DOCKSNAP_LABELS"] = f"{SESSION_LABEL}={SESSION_ID}"
        env["DOCKSNAP_STORE"] = self.store
        return env

    def __call__(
        self,
        *args: str,
        code: int = 0,
        stdin: bytes | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        assert EXE is not None, "the docksnap console script is not installed in this venv"
        env = {**self.env, **(env_extra or {})}
        proc = subprocess.run(
            [EXE, *args], env=env, input=stdin, capture_output=True, timeout=120, check=False
        )
        assert proc.returncode == code, (
            f"docksnap {' '.join(args)} exited {proc.returncode}, expected {code}\n"
            f"stdout: {proc.stdout[:2000]!r}\nstderr: {proc.stderr.decode()}"
        )
        return proc

    def json(self, *args: str, code: int = 0, stdin: bytes | None = None) -> Any:
        return json.loads(self("--json", *args, code=code, stdin=stdin).stdout)

    def run_box(self, script: str, *args: str) -> str:
        """A running container whose ``script`` has finished (it then touches /tmp/.ready)."""
        name = unique_name("ds-cli")
        self.containers.append(name)
        self(
            "run",
            TEST_IMAGE,
            "--name",
            name,
            *args,
            "--",
            "sh",
            "-c",
            f"{script}\ntouch /tmp/.ready; exec sleep 1000",
        )
        for _ in range(200):
            ready = subprocess.run(
                ["docker", "exec", name, "test", "-f", "/tmp/.ready"],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return name
            time.sleep(0.05)
        raise AssertionError(f"the script in {name} did not finish")

    def snapshot(self, *args: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.json("snapshot", *args)
        self.snapshots.append(doc["snapshot"]["id"])
        return doc

    def import_tar(self, *args: str, stdin: bytes | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = self.json("import", *args, "--image", TEST_IMAGE, stdin=stdin)
        self.snapshots.append(doc["snapshot"]["id"])
        return doc

    def cleanup(self) -> None:
        if self.containers:
            self("rm-container", *self.containers)
        if self.store != "docker-volume:":
            return  # a file:// store lives in tmp_path and goes with it
        for snapshot_id in self.snapshots:  # the volume store keeps them in labelled volumes
            subprocess.run(
                [EXE or "docksnap", "rm", snapshot_id],
                env=self.env,
                capture_output=True,
                check=False,
            )


@pytest.fixture
def cli(docker_engine: None, store_url: str) -> Iterator[Cli]:
    """The CLI on each store docksnap ships."""
    runner = Cli(store_url)
    yield runner
    runner.cleanup()


@pytest.fixture
def chunked(docker_engine: None, tmp_path: Path) -> Iterator[Cli]:
    """The CLI on a private content-addressed store (its chunks can be damaged on purpose)."""
    runner = Cli((tmp_path / "store").as_uri())
    yield runner
    runner.cleanup()


def library_infos(store: str) -> dict[str, SnapshotInfo]:
    """What the library itself reads from the same store."""

    async def read() -> dict[str, SnapshotInfo]:
        async with docksnap.Client(store=store, labels=SESSION_LABELS) as client:
            return {info.id: info async for info in client.snapshots.list()}

    return asyncio.run(read())


def assert_matches_library(doc: dict[str, Any], info: SnapshotInfo) -> None:
    record = doc["snapshot"]
    assert docksnap.DirectorySnapshot.from_dict(record) == info.snapshot
    present = {k: v for k, v in record.items() if v is not None or k == "name"}
    assert present == info.snapshot.to_dict()
    assert doc["created_at"] == info.created_at
    assert doc["last_used_at"] == info.last_used_at
    assert doc["ttl"] == info.ttl
    assert doc["stored_size"] == info.stored_size
    source = info.source
    assert doc["source"] == (source and {"container": source.container, "image": source.image})


# -- the main flow ---------------------------------------------------------------------

DATA = (
    "mkdir -p /app/data/sub && printf hello > /app/data/a.txt && echo one > /app/data/sub/b.txt"
    " && ln -s a.txt /app/data/link"
)
CHANGE = "printf ' more' >> /data/a.txt && rm /data/sub/b.txt && echo new > /data/new.txt"


def test_run_snapshot_restore_diff_export_import_rm_gc(cli: Cli, tmp_path: Path) -> None:
    box = cli.run_box(DATA)
    first = cli.snapshot(box, "/app/data", "--name", "cli-first")
    assert first["snapshot"]["dir"] == "/app/data"
    assert first["snapshot"]["size"] > 0
    assert first["source"]["container"] == box
    snap_id = first["snapshot"]["id"]

    listed = cli.json("ls", "--container", box)
    infos = library_infos(cli.store)
    assert [d["snapshot"]["id"] for d in listed] == [snap_id]
    assert_matches_library(listed[0], infos[snap_id])
    assert_matches_library(first, infos[snap_id])

    shown = cli.json("show", snap_id)
    assert_matches_library(shown, infos[snap_id])
    assert shown["file_count"] == 5
    stored_line = next(
        line for line in cli("show", snap_id).stdout.decode().splitlines() if "stored size" in line
    )
    recorded = infos[snap_id].stored_size
    assert ("not recorded" in stored_line) == (recorded is None), stored_line
    assert recorded is None or f"({recorded} bytes" in stored_line
    assert {f["path"] for f in shown["files"]} == {".", "a.txt", "sub", "sub/b.txt", "link"}
    listing = cli("files", snap_id).stdout.decode()
    assert "lrwxrwxrwx 0/0" in listing
    assert "link -> a.txt" in listing
    assert "-rw-r--r-- 0/0" in listing
    assert " a.txt\n" in listing
    assert [f["path"] for f in cli.json("files", snap_id, "/app/data/sub")] == ["sub", "sub/b.txt"]

    again = cli.run_box(CHANGE, "--restore", f"{snap_id}:/data")
    second = cli.snapshot(again, "/data")
    changes = cli.json("diff", snap_id, second["snapshot"]["id"])
    assert [e["path"] for e in changes["added"]] == ["new.txt"]
    assert [e["path"] for e in changes["removed"]] == ["sub/b.txt"]
    a_txt = next(c for c in changes["changed"] if c["path"] == "a.txt")
    assert "size" in a_txt["fields"]
    assert (a_txt["old"]["size"], a_txt["new"]["size"]) == (5, 10)
    human = cli("diff", snap_id, second["snapshot"]["id"]).stdout.decode()
    assert "+ -rw-r--r--" in human
    assert "- -rw-r--r--" in human
    assert "~ a.txt  size 5 B -> 10 B" in human

    merged = cli.run_box("", "--restore", snap_id, "--merge", "--env", "GREETING=hi there")
    assert docker_exec(merged, "cat", "/app/data/a.txt") == b"hello"
    assert docker_exec(merged, "sh", "-c", "echo $GREETING") == b"hi there\n"

    archive = tmp_path / "first.tar"
    exported = cli.json("export", snap_id, "-o", str(archive))
    assert exported == {"id": snap_id, "file": str(archive), "size": archive.stat().st_size}
    assert cli("export", snap_id).stdout == archive.read_bytes()  # stdout is a pipe here
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    assert (out / "a.txt").read_bytes() == b"hello"
    assert (out / "sub" / "b.txt").read_bytes() == b"one\n"
    assert os.readlink(out / "link") == "a.txt"

    imported = cli.import_tar(str(archive), "--dir", "/imported", "--name", "cli-imported")
    assert imported["snapshot"]["dir"] == "/imported"
    assert_matches_library(imported, library_infos(cli.store)[imported["snapshot"]["id"]])
    # The same files; the volume store gives the root directory the time of the import.
    assert cli.json("files", imported["snapshot"]["id"])[1:] == shown["files"][1:]

    made = [snap_id, second["snapshot"]["id"], imported["snapshot"]["id"]]
    assert cli.json("rm", *made) == {"deleted": made}
    remaining = {d["snapshot"]["id"] for d in cli.json("ls")}
    assert not remaining & set(made)
    collected = cli.json("gc")
    assert set(collected) == {
        "expired",
        "objects_deleted",
        "bytes_deleted",
        "objects_kept_young",
        "orphans",
    }


def docker_exec(container: str, *command: str) -> bytes:
    return subprocess.run(
        ["docker", "exec", container, *command], capture_output=True, check=True
    ).stdout


def test_gc_reclaims_and_expires(chunked: Cli, tmp_path: Path) -> None:
    """gc expires snapshots past their TTL first, then reclaims their chunks."""
    data = tar_of([(member("f"), os.urandom(300_000))])
    kept = chunked.import_tar("-", "--dir", "/d", stdin=data)
    doomed = chunked.import_tar(
        "-", "--dir", "/d", "--ttl", "0", stdin=tar_of([(member("g"), os.urandom(300_000))])
    )
    assert chunked("-q", "ls").stdout.decode().split() == [
        doomed["snapshot"]["id"],
        kept["snapshot"]["id"],
    ]
    report = chunked.json("gc", "--grace", "0")
    assert report["expired"] == [doomed["snapshot"]["id"]]
    assert report["objects_deleted"] > 0
    assert report["bytes_deleted"] > 0
    assert [d["snapshot"]["id"] for d in chunked.json("ls")] == [kept["snapshot"]["id"]]
    stats = chunked.json("stats")
    assert stats["snapshots"] == 1
    assert stats["store"] == chunked.store
    assert stats["logical_bytes"] == kept["snapshot"]["size"]


def test_prune_keeps_newest_of_each_name(chunked: Cli) -> None:
    made: dict[str, list[str]] = {}
    for name in ("a", "a", "b"):
        doc = chunked.import_tar(
            "-", "--dir", "/d", "--name", name, stdin=tar_of([(member("f"), name.encode())])
        )
        made.setdefault(name, []).append(doc["snapshot"]["id"])
    pruned = chunked.json("prune", "--keep-last", "1")
    assert pruned["deleted"] == [made["a"][0]]
    overall = chunked.json("prune", "--keep-last", "1", "--all-names")
    assert overall["deleted"] == [made["a"][1]]  # "b" was made last
    assert [d["snapshot"]["id"] for d in chunked.json("ls")] == made["b"]


# -- exit codes --------------------------------------------------------------------------


GHOST = "00000000-0000-4000-8000-000000000000"


def test_exit_codes_of_errors_before_any_container(chunked: Cli, tmp_path: Path) -> None:
    """Independent failures, run side by side: each error class has its own exit code."""
    cli = chunked
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    one_file = tar_of([(member("f"), b"x")])
    names = [unique_name(), unique_name(), unique_name()]
    cli.containers += names  # the library removes them itself; checked anyway
    cases: list[tuple[int, tuple[str, ...], bytes | None]] = [
        (3, ("--json", "--docker-host", NO_ENGINE, "rm-container", "x"), None),
        (3, ("--docker-host", NO_ENGINE, "run", TEST_IMAGE, "--name", "x"), None),
        (3, ("-v", "--docker-host", NO_ENGINE, "stop", "x"), None),
        (6, ("show", GHOST), None),
        (6, ("run", TEST_IMAGE, "--name", names[0], "--restore", GHOST), None),
        (10, ("run", "docksnap-no-such-image:latest", "--name", names[1]), None),
        (13, ("run", TEST_IMAGE, "--name", names[2], "--", "/no/such/program"), None),
        (4, ("snapshot", unique_name("ds-never-created"), "/tmp"), None),
        (9, ("--store", afile.as_uri(), "import", "-", "--dir", "/d"), one_file),
        (2, ("--json", "ls", "--bogus"), None),
        (2, ("--store", "bogus://x", "ls"), None),
    ]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        done = list(pool.map(lambda case: cli(*case[1], code=case[0], stdin=case[2]), cases))

    failure = json.loads(done[0].stdout)["error"]
    assert failure["type"] == "DockerUnavailableError"
    assert failure["exit_code"] == 3
    assert NO_ENGINE in failure["message"]
    assert "scripts/setup" in failure["hint"]
    assert b"Traceback" not in done[1].stderr
    assert NO_ENGINE.encode() in done[1].stderr
    assert b"Traceback" in done[2].stderr  # -v
    assert GHOST.encode() in done[3].stderr
    usage = json.loads(done[9].stdout)["error"]
    assert usage["exit_code"] == 2
    assert "--bogus" in usage["message"]


def test_exit_codes_around_a_running_container(chunked: Cli) -> None:
    cli = chunked
    box = cli.run_box("mkdir -p /big && head -c 200000 /dev/zero > /big/f")
    cli("snapshot", box, "/does/not/exist", code=5)
    cli("snapshot", box, "relative/dir", code=2)
    too_large = cli("snapshot", box, "/big", "--size-limit", "64K", code=7)
    assert b"exceeds the size limit" in too_large.stderr
    cli("run", TEST_IMAGE, "--name", box, code=4)  # already running
    stopped = cli.json("stop", box, "--timeout", "0.5")  # sleep as PID 1 ignores SIGTERM
    assert stopped["name"] == box
    assert stopped["killed"] is True
    cli("snapshot", "ds-no-such-container", "/big", code=4)
    assert cli.json("ls") == []


UNSAFE = {
    "../escape": [(member("../escape"), b"x")],
    "/etc/owned": [(member("/etc/owned"), b"x")],
    "null-device": [(member("null-device", tarfile.CHRTYPE, devmajor=1, devminor=3), b"")],
}


@pytest.mark.parametrize("bad_member", sorted(UNSAFE))
def test_unsafe_import_is_refused_naming_the_member(chunked: Cli, bad_member: str) -> None:
    archive = tar_of([(member("fine.txt"), b"fine"), *UNSAFE[bad_member]])
    failure = chunked.json("import", "-", "--dir", "/d", stdin=archive, code=11)["error"]
    assert repr(bad_member) in failure["message"]
    assert chunked.json("ls") == []


def test_malformed_import_is_refused(chunked: Cli, tmp_path: Path) -> None:
    truncated = tar_of([(member("f"), os.urandom(5000))])[:3000]
    (tmp_path / "bad.tar").write_bytes(truncated)
    chunked("import", str(tmp_path / "bad.tar"), "--dir", "/d", code=11)
    chunked("import", str(tmp_path / "missing.tar"), "--dir", "/d", code=2)
    assert chunked.json("ls") == []


def test_corrupt_chunk_fails_verify_and_export(chunked: Cli, tmp_path: Path) -> None:
    snap = chunked.import_tar(
        "-", "--dir", "/d", stdin=tar_of([(member("f"), os.urandom(400_000))])
    )
    snap_id = snap["snapshot"]["id"]
    assert chunked.json("verify")["ok"] is True
    store_dir = tmp_path / "store"
    chunk = max(
        (p for p in store_dir.glob("packs/*/*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    damaged = bytearray(chunk.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    chunk.write_bytes(bytes(damaged))

    report = chunked.json("verify", code=12)
    assert report["ok"] is False
    assert report["problems"][0]["snapshot_id"] == snap_id
    human = chunked("verify", snap_id, code=12).stdout.decode()
    assert human.startswith(snap_id)
    assert "1 problem(s)" in human
    failure = chunked.json("export", snap_id, "-o", str(tmp_path / "out.tar"), code=8)["error"]
    assert failure["type"] == "SnapshotCorruptError"
    assert snap_id in failure["message"]
    assert not list(tmp_path.glob("*out.tar*"))  # no truncated archive left behind


def test_verify_repair_rewrites_damage_from_another_store(chunked: Cli, tmp_path: Path) -> None:
    """Issue 10, defect 7: ``verify --repair --from URL``; without a source the damaged
    snapshots are named and the exit is 12."""
    content = os.urandom(400_000)
    archive = tar_of([(member("f"), content)])
    old = chunked.import_tar("-", "--dir", "/d", stdin=archive)["snapshot"]["id"]
    other = Cli((tmp_path / "other").as_uri())
    other.import_tar("-", "--dir", "/d", stdin=archive)  # the same data, on its own
    pack = max(
        (p for p in (tmp_path / "store").glob("packs/*/*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    damaged = bytearray(pack.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    pack.write_bytes(bytes(damaged))

    assert chunked.json("verify", code=12)["damaged_snapshots"] == [old]
    alone = chunked("verify", "--repair", code=12).stdout.decode()
    assert f"damaged: {old}" in alone
    chunked("verify", "--from", other.store, code=2)  # --from needs --repair

    report = chunked.json("verify", "--repair", "--from", other.store)
    assert report["ok"] is True
    assert [r["snapshot_ids"] for r in report["repaired"]] == [[old]]
    assert report["repaired"][0]["source"] == other.store
    assert chunked.json("verify")["ok"] is True
    chunked("export", old, "-o", str(tmp_path / "out.tar"))
    with tarfile.open(tmp_path / "out.tar") as tar:
        extracted = tar.extractfile("f")
        assert extracted is not None
        assert extracted.read() == content


# -- terminals, pipes, signals -----------------------------------------------------------


def on_a_terminal(cli: Cli, *args: str, stdin: int | None = None) -> tuple[int, bytes]:
    """Run docksnap with stdout and stderr on a pseudo-terminal; return (exit code, output)."""
    leader, follower = pty.openpty()
    env = {**cli.env, "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [EXE or "docksnap", *args], env=env, stdin=stdin, stdout=follower, stderr=follower
    )
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        try:
            piece = os.read(leader, 65536) if ready else b""
        except OSError:  # EIO: every writer closed the terminal
            piece = b""
        if not piece:
            break
        output += piece
    os.close(leader)
    return proc.wait(timeout=60), output


def test_progress_bar_on_a_terminal_and_nothing_on_a_pipe(chunked: Cli, tmp_path: Path) -> None:
    archive = tmp_path / "big.tar"
    archive.write_bytes(tar_of([(member("blob"), os.urandom(24 << 20))]))
    code, output = on_a_terminal(chunked, "import", str(archive), "--dir", "/d")
    assert code == 0, output
    assert b"\x1b[" in output
    assert "━".encode() in output
    assert b"importing big.tar" in output
    assert b"MiB" in output

    piped = chunked("import", str(archive), "--dir", "/d")
    assert b"\x1b" not in piped.stdout + piped.stderr
    snap_id = piped.stdout.decode().split()[6]  # the row under the table's header
    exported = chunked("export", snap_id, "-o", str(tmp_path / "e.tar"))
    assert b"\x1b" not in exported.stdout + exported.stderr
    quiet_code, quiet = on_a_terminal(chunked, "-q", "import", str(archive), "--dir", "/d")
    assert quiet_code == 0
    assert b"\x1b" not in quiet


def test_export_refuses_to_write_to_a_terminal(chunked: Cli) -> None:
    snap = chunked.import_tar("-", "--dir", "/d", stdin=tar_of([(member("f"), b"x")]))
    code, output = on_a_terminal(chunked, "export", snap["snapshot"]["id"])
    assert code == 2
    assert b"refusing to write a tar archive to a terminal" in output


def test_ctrl_c_exits_130_and_stores_nothing(chunked: Cli) -> None:
    """Interrupted mid-import (stdin still open), nothing becomes visible."""
    proc = subprocess.Popen(
        [EXE or "docksnap", "import", "-", "--dir", "/d"],
        env=chunked.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(tar_of([(member("f"), os.urandom(3 << 20))])[: 2 << 20])
    proc.stdin.flush()
    time.sleep(1.0)  # the import is now waiting for more of stdin
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.stdin.close()  # as when Ctrl-C also stops the producer of the pipe
    assert proc.wait(timeout=30) == 130
    err = proc.stderr.read() if proc.stderr else b""
    assert b"interrupted" in err
    assert b"Traceback" not in err
    assert chunked.json("ls") == []


def test_demo_reports_timings_as_json(chunked: Cli) -> None:
    """The README's main job; its narration goes to stderr, leaving stdout to the document."""
    doc = chunked.json("demo", "--size-mb", "1")
    assert doc["files_match"] is True
    assert doc["snapshot"]["dir"] == "/workspace"
    assert "snapshot" in doc["timings"]
    assert chunked.json("ls") == []  # the demo removes its snapshot


def test_help_version_and_python_m(chunked: Cli) -> None:
    top = chunked("--help").stdout.decode()
    assert "Example:" in top
    assert "snapshot" in top
    assert "rm-container" in top
    assert chunked("--version").stdout.decode().strip() == f"docksnap {docksnap.__version__}"
    module = subprocess.run(
        [sys.executable, "-m", "docksnap", "--version"],
        capture_output=True,
        check=True,
        env=chunked.env,
    )
    assert module.stdout.decode().strip() == f"docksnap {docksnap.__version__}"

"""The CLI of issue 15: excludes, the capture report, snapshot-container, merge."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEST_IMAGE, unique_name
from tests.integration.test_cli import Cli, chunked  # noqa: F401 (fixture)

pytestmark = pytest.mark.docker

SOCKET = "mkdir -p /w/jail/dev && cp /bin/busybox /w/jail/ && chroot /w/jail /busybox syslogd"


def files_of(cli: Cli, snapshot_id: str) -> set[str]:
    return {entry["path"] for entry in cli.json("files", snapshot_id)}


def test_snapshot_excludes_from_options_and_a_file(chunked: Cli, tmp_path: Path) -> None:  # noqa: F811
    box = chunked.run_box(
        "mkdir -p /w/logs /w/cache && echo a > /w/logs/a.log && echo k > /w/logs/keep.log "
        "&& echo c > /w/cache/x && echo main > /w/main"
    )
    patterns = tmp_path / "excludes"
    patterns.write_text("# caches\ncache/\n")
    doc = chunked.snapshot(
        box, "/w", "--exclude", "*.log", "--exclude", "!keep.log", "--exclude-from", str(patterns)
    )
    assert doc["report"]["excluded"] == 3
    assert doc["report"]["ok"] is True
    names = files_of(chunked, doc["snapshot"]["id"])
    assert {"main", "logs/keep.log"} <= names
    assert not names & {"logs/a.log", "cache", "cache/x"}
    human = chunked("snapshot", box, "/w", "--exclude", "*.log").stdout.decode()
    assert "capture: complete; 2 excluded" in human


def test_report_summary_show_report_and_strict(chunked: Cli) -> None:  # noqa: F811
    box = chunked.run_box(f"mkdir -p /w && echo x > /w/f && {SOCKET}")
    human = chunked("snapshot", box, "/w").stdout.decode()
    assert "capture: skipped or inexact: 1 socket" in human
    snapshot_id = chunked.json("ls")[0]["snapshot"]["id"]
    shown = chunked("show", snapshot_id, "--report").stdout.decode()
    assert "socket    jail/dev/log" in shown
    doc = chunked.json("show", snapshot_id, "--report")
    assert doc["report"]["entries"] == [
        {"path": "jail/dev/log", "reason": "socket", "detail": "sockets cannot be archived"}
    ]
    failed = chunked.json("snapshot", box, "/w", "--strict", code=15)
    assert failed["error"]["type"] == "CaptureIncompleteError"
    assert failed["error"]["report"]["entries"][0]["reason"] == "socket"
    assert len(chunked.json("ls")) == 1  # strict stored nothing


def test_snapshot_container_and_run_from_it(chunked: Cli) -> None:  # noqa: F811
    box = chunked.run_box("rm /bin/vi && mkdir -p /opt/t && echo v2 > /opt/t/VERSION")
    doc = chunked.json("snapshot-container", box, "--name", "whole")
    assert doc["kind"] == "container"
    listed = chunked.json("ls")
    assert [(d["snapshot"]["name"], d["kind"]) for d in listed] == [("whole", "container")]
    name = unique_name("ds-cli-cs")
    chunked.containers.append(name)
    chunked(
        "run",
        TEST_IMAGE,
        "--name",
        name,
        "--from-container-snapshot",
        doc["snapshot"]["id"],
        "--",
        "sleep",
        "1000",
    )
    probe = subprocess.run(
        ["docker", "exec", name, "sh", "-c", "test ! -e /bin/vi && cat /opt/t/VERSION"],
        capture_output=True,
        check=False,
    )
    assert probe.stdout == b"v2\n"
    missing = chunked.json(
        "run",
        "docksnap-no-such-image:1",
        "--name",
        unique_name("ds-cli-x"),
        "--from-container-snapshot",
        doc["snapshot"]["id"],
        code=17,
    )
    assert missing["error"]["type"] == "ImageNotFoundError"


def test_merge_reports_conflicts_and_resolves_them(chunked: Cli) -> None:  # noqa: F811
    base_box = chunked.run_box("mkdir -p /w && echo base > /w/config && echo same > /w/keep")
    base = chunked.snapshot(base_box, "/w")["snapshot"]["id"]
    ours_box = chunked.run_box("", "--restore", base)
    subprocess.run(["docker", "exec", ours_box, "sh", "-c", "echo ours > /w/config"], check=True)
    theirs_box = chunked.run_box("", "--restore", base)
    subprocess.run(
        ["docker", "exec", theirs_box, "sh", "-c", "echo theirs > /w/config; echo n > /w/new"],
        check=True,
    )
    ours = chunked.snapshot(ours_box, "/w")["snapshot"]["id"]
    theirs = chunked.snapshot(theirs_box, "/w")["snapshot"]["id"]
    failed = chunked.json("merge", base, ours, theirs, code=16)
    assert failed["error"]["conflicts"] == [
        {"path": "config", "kind": "modify/modify", "resolution": None}
    ]
    assert (
        "conflict modify/modify  config"
        in chunked("merge", base, ours, theirs, code=16).stderr.decode()
    )
    merged = chunked.json("merge", base, ours, theirs, "--on-conflict", "both", "--name", "m")
    assert merged["conflicts"][0]["resolution"] == "both"
    assert {"config", "config.theirs", "keep", "new"} <= files_of(chunked, merged["snapshot"]["id"])
    assert chunked.json("verify", merged["snapshot"]["id"])["ok"] is True

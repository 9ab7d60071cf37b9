"""Excludes and the capture report, on the real engine (issue 15, items 1 and 3)."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile

import pytest

import docksnap
from docksnap.errors import CaptureIncompleteError, InvalidArgumentError
from tests.conftest import TEST_IMAGE, read_file, sleeper, unique_name

pytestmark = pytest.mark.docker

TREE = (
    "mkdir -p /w/src /w/build/out /w/logs /w/node_modules/pkg && "
    "echo code > /w/src/main.c && echo obj > /w/build/out/main.o && "
    "echo a > /w/logs/a.log && echo keep > /w/logs/keep.log && echo top > /w/top.log && "
    "echo dep > /w/node_modules/pkg/index.js && echo readme > /w/README && "
    "printf 'build/\\n*.log\\n!keep.log\\n' > /w/.docksnapignore"
)
# A unix socket in the container's own filesystem: busybox syslogd, chrooted so
# that its /dev/log lands under /w.
SOCKET = "mkdir -p /w/jail/dev && cp /bin/busybox /w/jail/ && chroot /w/jail /busybox syslogd"


async def started(
    client: docksnap.Client, made: list[docksnap.Container], script: str
) -> docksnap.Container:
    box = client.container(unique_name("ds-cap"))
    made.append(box)
    await box.start(TEST_IMAGE, entrypoint=sleeper(script + " && touch /ready"))
    for _ in range(200):
        if await read_file(client, box.name, "/ready") is not None:
            return box
        await asyncio.sleep(0.05)
    raise AssertionError("container did not get ready")


def reports_survive(client: docksnap.Client) -> bool:
    """The volume store gives back the engine's re-archiving, without docksnap's header."""
    return not client.store.url.startswith("docker-volume:")


async def member_names(client: docksnap.Client, snapshot_id: str) -> set[str]:
    return {entry.path for entry in await client.snapshots.files(snapshot_id)}


async def test_excludes_with_negation_and_directory_patterns(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await started(client, containers, TREE)
    snap = await box.snapshot_directory(
        "/w",
        exclude=["build/", "*.log", "!keep.log", "node_modules/", "!node_modules/pkg/index.js"],
    )
    names = await member_names(client, snap.id)
    assert {"src/main.c", "README", "logs/keep.log", ".docksnapignore"} <= names
    # Directory patterns take the directory and everything under it; nothing under
    # an excluded directory comes back by negation (git's rule).
    assert not {n for n in names if n.startswith(("build", "node_modules"))}
    assert "logs/a.log" not in names
    assert "top.log" not in names
    assert snap.report is not None
    assert snap.report.ok
    assert snap.report.excluded == 8
    # size is the filtered stream's length: the stored stream is exactly that long.
    if reports_survive(client):
        async with client.snapshots.export(snap.id) as reader:
            assert sum([len(p) async for p in reader]) == snap.size
    full = await box.snapshot_directory("/w")
    assert full.size > snap.size
    assert full.report is not None
    assert full.report.excluded == 0


async def test_ignore_file_is_honoured_only_when_asked(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await started(client, containers, TREE)
    without = await member_names(client, (await box.snapshot_directory("/w")).id)
    assert "build/out/main.o" in without
    snap = await box.snapshot_directory("/w", ignore_file=True)
    names = await member_names(client, snap.id)
    assert "build/out/main.o" not in names
    assert "logs/a.log" not in names
    assert "logs/keep.log" in names
    assert "node_modules/pkg/index.js" in names


async def test_excluded_files_are_absent_after_restore(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await started(client, containers, TREE)
    snap = await box.snapshot_directory("/w", exclude=["*.log"])
    restored = client.container(unique_name("ds-cap-r"))
    containers.append(restored)
    await restored.start(TEST_IMAGE, entrypoint=sleeper(), snapshots=[snap])
    assert await read_file(client, restored.name, "/w/src/main.c") == b"code\n"
    assert await read_file(client, restored.name, "/w/logs/a.log") is None


async def test_a_bad_pattern_argument_is_refused(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await started(client, containers, "true")
    with pytest.raises(InvalidArgumentError, match="not a string"):
        await box.snapshot_directory("/tmp", exclude="*.log")


async def test_report_lists_a_socket_and_survives_in_the_store(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await started(client, containers, f"{TREE} && {SOCKET}")
    snap = await box.snapshot_directory("/w")
    assert snap.report is not None
    assert [(e.path, e.reason) for e in snap.report.entries] == [("jail/dev/log", "socket")]
    assert "1 socket" in snap.report.summary()
    stored = await client.snapshots.report(snap.id)
    if reports_survive(client):
        assert stored == snap.report
    else:
        assert stored is None
    # Excluding the socket's directory leaves nothing to report.
    clean = await box.snapshot_directory("/w", exclude=["jail/"])
    assert clean.report is not None
    assert clean.report.ok
    assert await client.snapshots.report(clean.id) in (None, clean.report)


async def test_strict_stores_nothing(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    box = await started(client, containers, f"{TREE} && {SOCKET}")
    with pytest.raises(CaptureIncompleteError) as caught:
        await box.snapshot_directory("/w", strict=True)
    assert caught.value.report.entries[0].reason == "socket"
    # (Filtered by container: other test sessions may share the volume store.)
    assert [info.id async for info in client.snapshots.list(container=box.name)] == []
    # The container was unpaused and still answers.
    assert await box.refresh()


@pytest.mark.parametrize("capture", ["archive", "host"])
async def test_no_pause_reports_a_file_appended_while_read(
    client: docksnap.Client, containers: list[docksnap.Container], capture: str
) -> None:
    # grows.log is read before zbig (name order): reading 40 MB leaves it time to grow.
    script = (
        "mkdir -p /w; head -c 40000000 /dev/urandom > /w/zbig; "
        "(while :; do echo line >> /w/grows.log; usleep 2000; done) & sleep 0.2"
    )
    box = await started(client, containers, script)
    snap = await box.snapshot_directory("/w", pause=False, capture=capture)  # type: ignore[arg-type]
    assert snap.capture == capture
    assert snap.report is not None
    changed = {e.path: e for e in snap.report.entries if e.reason == "changed"}
    assert "grows.log" in changed
    assert "read" in changed["grows.log"].detail
    assert "zbig" not in changed
    assert "reread" in snap.report.checked
    # Paused, nothing can change under the reader: the same tree reports clean.
    paused = await box.snapshot_directory("/w", capture=capture)  # type: ignore[arg-type]
    assert paused.report is not None
    assert paused.report.ok
    assert "reread" not in paused.report.checked


def test_report_member_is_plain_tar_to_tar_readers() -> None:
    """The stored report rides on a repeated root entry: tarfile reads it as one."""
    from docksnap.report import CaptureReport, ReportEntry
    from docksnap.service.tarfilter import END_OF_ARCHIVE, root_with_records
    from docksnap.tarstream import TarEntry

    report = CaptureReport(entries=(ReportEntry("s", "socket", "x"),))
    root = TarEntry(".", "dir", 0o755, 0, 0, 1700000000, 0, "", 0)
    member = tarfile.TarInfo("f").tobuf(format=tarfile.PAX_FORMAT)
    raw = member + root_with_records(root, report.to_pax()) + END_OF_ARCHIVE
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert [(m.name, m.isdir(), m.mode) for m in members] == [
        ("f", False, 0o644),
        (".", True, 0o755),
    ]
    assert CaptureReport.from_pax(members[1].pax_headers) == report


async def test_report_lists_xattrs_the_archive_drops(
    client: docksnap.Client, containers: list[docksnap.Container]
) -> None:
    """The engine's archive keeps only security.capability; others are reported.

    The attribute is set from the host in the container's overlay upper
    directory (the test image has no setfattr), where the report looks too.
    """
    box = await started(client, containers, "mkdir -p /w && echo x > /w/f && echo y > /w/g")
    info = await client.docker.inspect_container(box.name)
    upper = info["GraphDriver"]["Data"]["UpperDir"]
    try:
        os.setxattr(os.path.join(upper, "w/f"), "user.note", b"kept nowhere")
    except OSError as exc:  # a filesystem without user xattrs cannot show this
        pytest.skip(f"cannot set a user xattr under {upper}: {exc}")
    snap = await box.snapshot_directory("/w", capture="archive")
    assert snap.report is not None
    assert "xattrs" in snap.report.checked
    assert [(e.path, e.reason, e.detail) for e in snap.report.entries] == [
        ("f", "xattrs", "user.note")
    ]
    # Host capture carries it (docs/METADATA.md): nothing to report.
    host = await box.snapshot_directory("/w", capture="host")
    assert host.report is not None
    assert host.report.ok
    assert "xattrs" in host.report.checked
    files = {e.path: e for e in await client.snapshots.files(host.id)}
    # The volume store keeps a snapshot extracted in a volume and reads it back
    # through the engine's archive, which drops the attribute again.
    kept = (
        () if client.store.url.startswith("docker-volume:") else (("user.note", b"kept nowhere"),)
    )
    assert files["f"].xattrs == kept

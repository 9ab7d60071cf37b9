"""Issue 13's CLI pieces without Docker: references, durations, table fitting, the estimate bar."""

from __future__ import annotations

import io
from pathlib import Path

import click
import pytest
from rich.console import Console
from rich.progress import Progress

from docksnap import DirectorySnapshot, errors
from docksnap.cli import cli, refs, render
from docksnap.cli.exits import ExitCode, exit_code_for
from docksnap.cli.params import ttl_seconds
from docksnap.cli.progress import Meter, _TimeLeftColumn
from docksnap.service.progress import Operation, Phase, ProgressEvent
from docksnap.store.base import SnapshotInfo, SnapshotSource

DOCS = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600.0),
        ("90m", 5400.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("0.5s", 0.5),
        ("0", 0.0),
    ],
)
def test_ttl_accepts_what_its_help_says(text: str, seconds: float) -> None:
    assert ttl_seconds(click.Context(cli), click.Option(["--ttl"]), text) == seconds


@pytest.mark.parametrize("text", ["-5", "soon", "5w", "", "1e3"])
def test_ttl_refuses_the_rest_naming_it(text: str) -> None:
    with pytest.raises(click.BadParameter, match="is not a duration"):
        ttl_seconds(click.Context(cli), click.Option(["--ttl"]), text)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("3f2a", ("3f2a", None)),
        ("3f2a9c1e:/data", ("3f2a9c1e", "/data")),
        ("name:step-3", ("name:step-3", None)),
        ("name:step-3~2:/w/x", ("name:step-3~2", "/w/x")),
        ("name:a:b:/mnt", ("name:a:b", "/mnt")),
    ],
)
def test_restore_specs(text: str, parsed: tuple[str, str | None]) -> None:
    assert refs.restore_spec(text, "--restore") == parsed


@pytest.mark.parametrize("text", ["", ":/x", "abcd:", "name:", "name::/x"])
def test_bad_restore_specs(text: str) -> None:
    with pytest.raises(click.BadParameter, match="ID\\[:MOUNT_POINT\\]"):
        refs.restore_spec(text, "--restore")


def _info(snapshot_id: str, name: str, directory: str) -> SnapshotInfo:
    snap = DirectorySnapshot(id=snapshot_id, size=2048, dir=directory, name=name)
    return SnapshotInfo(snap, 1.0e9, 1.0e9, SnapshotSource("a-container-name", "img"))


IDS = ["3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61", "3f2a9c1e-9b7d-4c55-9a57-1f0e4d2b8a62"]


def test_short_ids_stay_unique() -> None:
    assert render.short_ids(IDS) == {IDS[0]: "3f2a9c1e-0", IDS[1]: "3f2a9c1e-9"}
    assert render.short_ids(IDS[:1]) == {IDS[0]: "3f2a9c1e"}


def test_table_fits_the_width_by_dropping_then_cutting() -> None:
    infos = [_info(IDS[0], "a-rather-long-snapshot-name", "/very/deep/directory/of/work")]
    full = render.snapshot_table(infos)
    assert IDS[0] in full[1]
    assert "CONTAINER" in full[0]
    for width in (80, 60, 45):
        lines = render.snapshot_table(infos, short_ids=True, width=width)
        assert all(len(line) <= width for line in lines), (width, lines)
        assert lines[1].startswith("3f2a9c1e ")
    narrow = render.snapshot_table(infos, short_ids=True, width=45)
    assert "CONTAINER" not in narrow[0]
    assert "CREATED" not in narrow[0]
    assert "…" in narrow[1]


def _bar_after_1000_bytes(expected: int | None) -> str:
    """The snapshot bar as drawn once 1000 bytes of an unsized stream have moved."""
    out = io.StringIO()
    meter = Meter(Console(file=out, force_terminal=True, width=120))
    if expected is not None:
        meter.expect(Operation.SNAPSHOT, expected)
    for phase, done in ((Phase.STARTED, 0), (Phase.ADVANCED, 1000)):
        meter(ProgressEvent(1, Operation.SNAPSHOT, phase, IDS[0], done, None))
    meter._progress.refresh()  # type: ignore[union-attr]
    seen = out.getvalue().rsplit("saving 3f2a9c1e", 1)[1]
    meter(ProgressEvent(1, Operation.SNAPSHOT, Phase.FINISHED, IDS[0], 2000, None))
    meter.close()
    return seen


def test_snapshot_bar_shows_an_estimated_total_only_when_given() -> None:
    assert "1000 B / ~3.9 KiB" in _bar_after_1000_bytes(4000)
    unknown = _bar_after_1000_bytes(None)
    assert "1000 B" in unknown
    assert "/ " not in unknown
    assert "eta" not in unknown


def test_time_left_column_only_for_a_known_total() -> None:
    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    column = _TimeLeftColumn()
    known = progress.add_task("saving", total=4000, stream=True)
    unknown = progress.add_task("saving", total=None, stream=True)
    for _ in range(2):
        progress.advance(known, 1000)
        progress.advance(unknown, 1000)
        now[0] += 1.0
    assert column.render(progress.tasks[known]).plain == "eta 0:00:02"
    assert column.render(progress.tasks[unknown]).plain == ""


def test_new_errors_keep_documented_exit_codes() -> None:
    """An ambiguous reference is a usage error (2); a refused restore a container error (4)."""
    ambiguous = errors.AmbiguousSnapshotError("abcd", ["abcd1", "abcd2"])
    assert exit_code_for(ambiguous) is ExitCode.USAGE
    running = errors.ContainerAlreadyRunningError("box", "container 'box' is running")
    assert exit_code_for(running) is ExitCode.CONTAINER
    assert "AmbiguousSnapshotError" in DOCS.read_text()

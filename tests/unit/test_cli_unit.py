"""The CLI's presentation, without Docker: formatting, exit codes, JSON shapes, progress."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

import docksnap
from docksnap import errors
from docksnap.cli import cli, render, shapes
from docksnap.cli.app import App, Result, parse_pairs
from docksnap.cli.commands.catalogue import _relative, _subtree
from docksnap.cli.exits import EXIT_CODES, ExitCode, exit_code_for
from docksnap.cli.params import byte_size
from docksnap.cli.progress import Meter
from docksnap.cli.streams import read_chunks, replaced_atomically
from docksnap.report import CaptureReport
from docksnap.service.merge import Conflict
from docksnap.store.base import SnapshotInfo, SnapshotSource
from docksnap.tarstream import TarEntry, TarFormatError
from tests.conformance.streams import build_tar

DOCS = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"
SNAP_ID = "3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61"


def entry(
    path: str,
    kind: str = "file",
    mode: int = 0o644,
    size: int = 0,
    link: str = "",
    uid: int = 0,
    gid: int = 0,
) -> TarEntry:
    return TarEntry(path, kind, mode, uid, gid, 1_700_000_000, size, link, 0)


# -- human formatting ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (12.9 * 2**20, "12.9 MiB"),
        (3 * 2**30, "3.0 GiB"),
        (2**60, "1024.0 PiB"),
    ],
)
def test_size(n: float, text: str) -> None:
    assert render.size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (90, "1m30s"),
        (3600, "1h"),
        (9000, "2h30m"),
        (90061, "1d1h"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(
    ("item", "text"),
    [
        (entry("f"), "-rw-r--r--"),
        (entry("d", "dir", 0o755), "drwxr-xr-x"),
        (entry("l", "symlink", 0o777), "lrwxrwxrwx"),
        (entry("h", "hardlink"), "hrw-r--r--"),
        (entry("c", "char", 0o600), "crw-------"),
        (entry("p", "fifo"), "prw-r--r--"),
        (entry("s", "file", 0o4755), "-rwsr-xr-x"),
        (entry("t", "dir", 0o1777), "drwxrwxrwt"),
    ],
)
def test_mode_string_like_ls(item: TarEntry, text: str) -> None:
    assert render.mode_string(item) == text


def test_file_lines_like_tar_tv() -> None:
    lines = render.file_lines(
        [
            entry(".", "dir", 0o755),
            entry("big", size=123456, uid=1000, gid=1000),
            entry("link", "symlink", 0o777, link="big"),
            entry("again", "hardlink", link="big"),
        ]
    )
    time = render.local_time(1_700_000_000)
    assert lines[0] == f"drwxr-xr-x 0/0            0 {time} ./"
    assert lines[1] == f"-rw-r--r-- 1000/1000 123456 {time} big"
    assert lines[2].endswith(" link -> big")
    assert lines[3].endswith(" again link to big")


def test_table_pads_and_right_aligns() -> None:
    lines = render.table(
        ["A", "SIZE", "C"], [["xx", "1 B", ""], ["y", "10.0 KiB", "z"]], frozenset({1})
    )
    assert lines == ["A       SIZE  C", "xx       1 B", "y   10.0 KiB  z"]


def test_describe_change() -> None:
    old, new = entry("f", size=5), entry("f", mode=0o600, size=10)
    assert render.describe_change(old, new) == "size 5 B -> 10 B; mode 0644 -> 0600"


# -- exit codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (click.UsageError("x"), 2),
        (errors.InvalidPathError("x", "relative"), 2),
        (errors.DockerUnavailableError("unix:///x", "refused"), 3),
        (errors.ContainerNotFoundError("c", "x"), 4),
        (errors.ContainerNotRunningError("c", "x"), 4),
        (errors.ContainerAlreadyRunningError("c", "x"), 4),
        (errors.ContainerStartError("c", "x"), 13),
        (errors.DirectoryNotFoundError("c", "/d"), 5),
        (errors.SnapshotNotFoundError(SNAP_ID), 6),
        (errors.SnapshotTooLargeError("/d", 1), 7),
        (errors.SnapshotCorruptError(SNAP_ID, "x"), 8),
        (errors.StoreFormatError("file:///s", "x"), 9),
        (errors.StoreUnavailableError("s3://b", "x"), 9),
        (errors.DockerError(500, "x"), 10),
        (errors.UnsafeArchiveError("../x", "climbs out"), 11),
        (TarFormatError(0, "truncated"), 11),
        (FileNotFoundError("x"), 14),
        (errors.CaptureIncompleteError("/d", CaptureReport()), 15),
        (errors.MergeConflictError([Conflict("a", "modify/modify")]), 16),
        (errors.ImageNotFoundError("img", "x"), 17),
        (BrokenPipeError(), 141),
        (KeyboardInterrupt(), 130),
        (RuntimeError("bug"), 1),
    ],
)
def test_each_error_class_has_its_exit_code(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_a_new_subclass_gets_its_parents_code() -> None:
    class Newer(errors.SnapshotNotFoundError):
        pass

    assert exit_code_for(Newer(SNAP_ID)) is ExitCode.SNAPSHOT_NOT_FOUND


def test_docs_list_every_exit_code() -> None:
    documented = {int(n) for n in re.findall(r"^\| (\d+) \|", DOCS.read_text(), re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}
    assert set(EXIT_CODES.values()) | {
        ExitCode.OK,
        ExitCode.UNEXPECTED,
        ExitCode.PROBLEMS_FOUND,
    } == set(ExitCode)


# -- JSON shapes ---------------------------------------------------------------------------


def test_record_round_trips_through_from_dict() -> None:
    snap = docksnap.DirectorySnapshot(id=SNAP_ID, size=10, dir="/d", name="n")
    record = shapes.record(snap)
    assert list(record) == ["id", "size", "dir", "name", "digest", "created_at"]
    assert docksnap.DirectorySnapshot.from_dict(record) == snap


def test_info_shape_has_stable_keys() -> None:
    snap = docksnap.DirectorySnapshot(id=SNAP_ID, size=10, dir="/d")
    doc = shapes.info(SnapshotInfo(snap, 1.0, 2.0, SnapshotSource("box", "img"), 60.0, 7))
    assert list(doc) == ["snapshot", "source", "created_at", "last_used_at", "ttl", "stored_size"]
    assert doc["source"] == {"container": "box", "image": "img"}
    assert doc["stored_size"] == 7
    bare = shapes.info(SnapshotInfo(snap, 1.0, 2.0))
    assert (bare["source"], bare["stored_size"]) == (None, None)


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1048576", 1 << 20),
        ("512M", 512 << 20),
        ("2GiB", 2 << 30),
        ("64k", 64 << 10),
    ],
)
def test_byte_size(text: str, value: int) -> None:
    assert byte_size(click.Context(cli), click.Option(["--x"]), text) == value


@pytest.mark.parametrize("text", ["0", "-1", "1.5G", "12 parsecs"])
def test_byte_size_refuses(text: str) -> None:
    with pytest.raises(click.BadParameter):
        byte_size(click.Context(cli), click.Option(["--x"]), text)


def test_labels_parse() -> None:
    assert parse_pairs("a=1, b=x=y,,", "L") == {"a": "1", "b": "x=y"}
    assert parse_pairs(None, "L") == {}
    with pytest.raises(click.BadParameter):
        parse_pairs("novalue", "L")


@pytest.mark.parametrize(
    ("path", "relative"),
    [
        ("sub", "sub"),
        ("./sub/", "sub"),
        ("/app/data", "."),
        ("/app/data/sub/x", "sub/x"),
        (".", "."),
        ("/app/data/", "."),
    ],
)
def test_files_path_is_relative_to_the_snapshot_dir(path: str, relative: str) -> None:
    assert _relative(path, "/app/data") == relative


def test_files_path_outside_the_snapshot_is_refused() -> None:
    with pytest.raises(errors.InvalidArgumentError, match="outside"):
        _relative("/app/other", "/app/data")


def test_subtree() -> None:
    entries = [entry("."), entry("sub"), entry("sub/a"), entry("subway")]
    assert [e.path for e in _subtree(entries, "sub")] == ["sub", "sub/a"]
    assert _subtree(entries, ".") == entries


# -- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_one_line_help_and_an_example(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert f"docksnap {name}" in result.output
    summary = cli.commands[name].get_short_help_str(limit=60)
    assert not summary.endswith("..."), f"{name}: the one-line help is cut: {summary!r}"


def test_usage_error_with_json_prints_an_error_document() -> None:
    result = CliRunner().invoke(cli, ["--json", "ls", "--bogus"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "NoSuchOption"
    assert error["exit_code"] == 2


def test_output_options_also_follow_the_subcommand(tmp_path: Path) -> None:
    store = ["--store", (tmp_path / "store").as_uri()]  # listing a store needs no Docker
    assert json.loads(CliRunner().invoke(cli, [*store, "ls", "--json"]).stdout) == []
    assert CliRunner().invoke(cli, [*store, "ls", "-q"]).stdout == ""
    assert CliRunner().invoke(cli, [*store, "ls"]).stdout == "no snapshots\n"


def test_bad_labels_are_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["ls"], env={"DOCKSNAP_LABELS": "nope"})
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.stderr


def test_emit_human_quiet_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    result = Result({"k": [1]}, ["human"], ["quiet"])
    App().emit(result)
    App(quiet=True).emit(result)
    App(as_json=True, quiet=True).emit(result)
    out = capsys.readouterr().out
    assert out.startswith("human\nquiet\n")
    assert json.loads(out[len("human\nquiet\n") :]) == {"k": [1]}


# -- progress ------------------------------------------------------------------------------


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class FakeStore:
    """Just enough of a store for the catalogue's import and export streams."""

    url = "fake:"

    def __init__(self) -> None:
        self.saved = b""

    async def save(self, snapshot: Any, tar: AsyncIterator[bytes], **_: Any) -> Any:
        self.saved = b"".join([piece async for piece in tar])
        return SnapshotInfo(snapshot, 0.0, 0.0, SnapshotSource("", ""))

    @asynccontextmanager
    async def open(self, snapshot_id: str) -> AsyncIterator[Any]:
        class Reader:
            size = 6

            def __aiter__(self) -> AsyncIterator[bytes]:
                return pieces(b"abc", b"def")

        yield Reader()


async def test_the_meter_draws_the_hooks_streams_as_bars() -> None:
    """The CLI's bars come from the client's progress hook; bytes pass unchanged."""
    screen = io.StringIO()
    meter = Meter(Console(file=screen, force_terminal=True, width=100))
    store = FakeStore()
    catalogue = docksnap.Catalogue(store, progress=meter)  # type: ignore[arg-type]
    tar = build_tar({"f": b"12345"})
    snap = await catalogue.import_tar(pieces(tar), dir="/d", size=len(tar))
    async with catalogue.export(SNAP_ID) as reader:
        assert reader.size == 6
        assert b"".join([p async for p in reader]) == b"abcdef"
    meter.close()
    # Imports are stored re-encoded (canonical headers): compare members, not bytes.
    with tarfile.open(fileobj=io.BytesIO(store.saved)) as stored:
        assert [(m.name, stored.extractfile(m).read()) for m in stored if m.isfile()] == [  # type: ignore[union-attr]
            ("f", b"12345")
        ]
    assert f"importing {snap.id[:8]}" in screen.getvalue()
    assert "exporting 3f2a9c1e" in screen.getvalue()
    assert "━" in screen.getvalue()


async def test_a_disabled_meter_draws_nothing_and_is_not_installed(tmp_path: Path) -> None:
    meter = Meter(None)
    assert not meter.enabled
    client = App(store=tmp_path.as_uri()).open_client(meter)
    assert client.progress is None
    await client.close()
    with meter.activity("nothing to show"):
        pass
    meter.close()


# -- streams -------------------------------------------------------------------------------


async def test_read_chunks_is_bounded() -> None:
    sizes = [len(p) async for p in read_chunks(io.BytesIO(b"x" * 2500), chunk_size=1000)]
    assert sizes == [1000, 1000, 500]


def test_replaced_atomically_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.tar"

    def interrupted_write() -> None:
        with replaced_atomically(target) as sink:
            sink.write(b"partial")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert list(tmp_path.iterdir()) == []
    with replaced_atomically(target) as sink:
        sink.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert target.stat().st_mode & 0o777 == 0o600


def test_files_show_the_xattrs_a_restore_sets() -> None:
    item = TarEntry(
        "bin/ping", "file", 0o755, 0, 0, 1_700_000_000, 3, "", 0,
        (("security.capability", b"\x01\x00\x00\x02"), ("user.note", b"hi there")),
    )  # fmt: skip
    lines = render.file_lines([item, entry("plain")])
    assert lines[1:3] == [
        "    security.capability=0x01000002",
        '    user.note="hi there"',
    ]
    assert len(lines) == 4
    assert shapes.entry(item)["xattrs"] == {
        "security.capability": "0x01000002",
        "user.note": '"hi there"',
    }
    assert shapes.entry(entry("plain"))["xattrs"] == {}

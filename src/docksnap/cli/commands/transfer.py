"""Moving snapshots: as plain tar archives (export, import) and between stores (copy)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import click

from docksnap.cli import refs, render, shapes
from docksnap.cli.app import App, Result, output_options, pass_app
from docksnap.cli.params import TTL_FORMATS, ttl_seconds
from docksnap.cli.progress import Meter
from docksnap.cli.streams import read_chunks, regular_file_size, replaced_atomically, write_chunks
from docksnap.service.client import Client
from docksnap.service.progress import Operation


@click.command()
@click.argument("snapshot_ref", metavar="ID")
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="Write the tar here (created 0600, complete or not at all). [default: stdout]",
)
@output_options
@pass_app
def export(app: App, snapshot_ref: str, output: Path | None) -> None:
    """Write a snapshot as a tar archive to FILE or stdout.

    Every byte is verified as it is read. `tar -xf` gives back the directory.

    \b
    Example:
      docksnap export 3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61 -o work.tar
    """
    to_stdout = output is None or str(output) == "-"
    if to_stdout and sys.stdout.isatty():
        raise click.UsageError(
            "refusing to write a tar archive to a terminal: use -o FILE or redirect stdout"
        )
    if to_stdout and app.as_json:
        raise click.UsageError("with --json, stdout carries the JSON document: use -o FILE")

    async def body(client: Client, meter: Meter) -> Result:
        snapshot_id = await refs.snapshot_id(client, snapshot_ref)
        async with client.snapshots.export(snapshot_id) as reader:
            chunks = aiter(reader)
            if output is None or to_stdout:
                written = await write_chunks(chunks, sys.stdout.buffer)
                return Result({"id": snapshot_id, "file": None, "size": written})
            with replaced_atomically(output) as sink:
                written = await write_chunks(chunks, sink)
        document = {"id": snapshot_id, "file": str(output), "size": written}
        return Result(document, [f"exported {snapshot_id} to {output} ({render.size(written)})"])

    app.run(body)


@click.command("import")
@click.argument("source", metavar="FILE", type=click.File("rb", lazy=False))
@click.option(
    "--dir",
    "directory",
    required=True,
    metavar="DIR",
    help="The directory this is a snapshot of: where it restores by default.",
)
@click.option("--name", help="A label for the snapshot.")
@click.option(
    "--image",
    default="",
    metavar="IMAGE",
    help="Image recorded as the source; the docker-volume: store also runs its "
    "helper from it (required there).",
)
@click.option(
    "--ttl",
    callback=ttl_seconds,
    metavar="DURATION",
    help=f"Delete the snapshot (at `docksnap gc`) after this long unused: {TTL_FORMATS}.",
)
@click.option(
    "--allow-devices",
    is_flag=True,
    help="Accept device nodes and fifos (refused by default: a restore would create them).",
)
@output_options
@pass_app
def import_(
    app: App,
    source: BinaryIO,
    directory: str,
    name: str | None,
    image: str,
    ttl: float | None,
    allow_devices: bool,
) -> None:
    """Store a tar archive (FILE or - for stdin) as a snapshot.

    Members with absolute names, `..` that climbs out, links written through,
    device files (without --allow-devices), members the engine would refuse to
    extract, or headers that tar readers read differently are refused, naming
    the member; then nothing is stored. The archive is stored re-encoded with
    canonical headers, so its size may differ from FILE's.

    \b
    Example:
      tar -C ./work -cf - . | docksnap import - --dir /work --name from-laptop
    """
    if source.isatty():
        raise click.UsageError(
            "refusing to read a tar archive from a terminal: give FILE or redirect stdin"
        )

    label = "stdin" if source is sys.stdin.buffer else Path(source.name).name

    async def body(client: Client, meter: Meter) -> Result:
        meter.name(Operation.IMPORT, label)
        snap = await client.snapshots.import_tar(
            read_chunks(source),
            dir=directory,
            name=name,
            image=image,
            ttl=ttl,
            allow_devices=allow_devices,
            size=regular_file_size(source),
        )
        info = snap.info
        assert info is not None  # always set on the record the library just committed
        return Result(shapes.info(info), render.snapshot_table([info]), [snap.id])

    app.run(body)


@click.command()
@click.argument("snapshot_ref", metavar="ID")
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL",
    help="The store to copy into: file:///path, s3://bucket/prefix[?endpoint=URL] "
    "or docker-volume:.",
)
@output_options
@pass_app
def copy(app: App, snapshot_ref: str, target: str) -> None:
    """Copy a snapshot into another store, verified.

    The snapshot keeps its id there. Between chunked stores (file://, s3://)
    only the chunks the target lacks travel, each checked against its hash.
    The copy appears complete or not at all, and copying again changes nothing.
    S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE.

    \b
    Example:
      docksnap copy 3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61 --to s3://team/snaps
    """

    async def body(client: Client, meter: Meter) -> Result:
        snapshot_id = await refs.snapshot_id(client, snapshot_ref)
        report = await client.snapshots.copy(snapshot_id, to=target)
        document = {
            "snapshot": shapes.info(report.snapshot),
            "to": target,
            "chunks_copied": report.chunks_copied,
            "bytes_copied": report.bytes_copied,
            "chunks_present": report.chunks_present,
            "streamed": report.streamed,
        }
        if report.streamed:
            moved = f"{render.size(report.bytes_copied)} streamed"
        else:
            moved = (
                f"{report.chunks_copied} chunks ({render.size(report.bytes_copied)}) sent, "
                f"{report.chunks_present} already there"
            )
        return Result(document, [f"copied {snapshot_id} to {target}: {moved}"], [snapshot_id])

    app.run(body)

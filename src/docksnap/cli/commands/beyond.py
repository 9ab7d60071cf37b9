"""Commands past the snapshot-a-directory core: snapshot-container and merge."""

from __future__ import annotations

import time

import click

from docksnap.cli import render
from docksnap.cli.app import App, Result, output_options, pass_app
from docksnap.cli.commands.containers import saved_result
from docksnap.cli.params import SECONDS, byte_size
from docksnap.cli.progress import Meter
from docksnap.service.client import Client
from docksnap.service.merge import POLICIES, MergeResult


@click.command("snapshot-container")
@click.argument("container")
@click.option("--name", help="A label for the snapshot (ls --name finds it).")
@click.option("--no-pause", is_flag=True, help="Do not pause the container while reading.")
@click.option("--strict", is_flag=True, help="Store nothing if anything cannot be captured.")
@click.option("--ttl", type=SECONDS, metavar="SECONDS", help="Delete after this long unused.")
@click.option(
    "--size-limit",
    callback=byte_size,
    metavar="SIZE",
    help="Refuse changes whose tar stream is larger (e.g. 2GiB). [default: 16GiB]",
)
@output_options
@pass_app
def snapshot_container(
    app: App,
    container: str,
    name: str | None,
    no_pause: bool,
    strict: bool,
    ttl: float | None,
    size_limit: int | None,
) -> None:
    """Snapshot a container's filesystem changes against its image.

    Added, changed and deleted files are stored; volumes are not (snapshot them
    with `docksnap snapshot`). Restore with `docksnap run IMAGE
    --from-container-snapshot ID`, on this engine or another sharing the store.

    \b
    Example:
      docksnap snapshot-container box --name configured
    """

    async def body(client: Client, meter: Meter) -> Result:
        started = time.monotonic()
        snap = await client.container(container).snapshot_container(
            name=name, pause=not no_pause, strict=strict, ttl=ttl, size_limit=size_limit
        )
        result = await saved_result(client, snap, time.monotonic() - started)
        result.document["kind"] = "container"
        return result

    app.run(body)


@click.command()
@click.argument("base", metavar="BASE")
@click.argument("ours", metavar="OURS")
@click.argument("theirs", metavar="THEIRS")
@click.option("--name", help="A label for the merged snapshot.")
@click.option(
    "--on-conflict",
    type=click.Choice(POLICIES),
    default="fail",
    show_default=True,
    help="fail: store nothing and list the conflicts; ours/theirs: take that side; "
    "both: keep ours and write theirs beside it as NAME.theirs.",
)
@click.option(
    "--text-merge",
    is_flag=True,
    help="Merge text files both sides edited line by line first (when their edits do not overlap).",
)
@output_options
@pass_app
def merge(
    app: App,
    base: str,
    ours: str,
    theirs: str,
    name: str | None,
    on_conflict: str,
    text_merge: bool,
) -> None:
    """Three-way merge of OURS and THEIRS against BASE.

    The new snapshot has every change of OURS and of THEIRS since BASE.

    The three must be snapshots of one directory. The merged snapshot is
    verified and reuses the inputs' stored chunks.

    \b
    Example:
      docksnap merge BASE_ID OURS_ID THEIRS_ID --name merged --on-conflict both
    """

    async def body(client: Client, meter: Meter) -> Result:
        with meter.activity("merging"):
            result = await client.snapshots.merge(
                base, ours, theirs, name=name, on_conflict=on_conflict, text_merge=text_merge
            )
        return Result(result.to_dict(), _merge_lines(result), [result.snapshot.id])

    app.run(body)


def _merge_lines(result: MergeResult) -> list[str]:
    snap = result.snapshot
    lines = [
        f"merged into {snap.id} ({render.size(snap.size)}): {result.from_ours} members from "
        f"ours, {result.from_theirs} from theirs, {len(result.conflicts)} conflict(s)"
    ]
    lines += [f"  {c.kind:<14} {c.path}  -> {c.resolution}" for c in result.conflicts]
    lines += [
        f"  skipped {path} (hard link to a member of the other side)" for path in result.skipped
    ]
    return lines

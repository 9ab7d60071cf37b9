"""Commands on the host's restore cache: cache ls, cache rm, cache prune."""

from __future__ import annotations

import click

from docksnap.cli import render, shapes
from docksnap.cli.app import App, Result, output_options, pass_app
from docksnap.cli.progress import Meter
from docksnap.service.client import Client


@click.group("cache")
def cache() -> None:
    """List and clear this host's restore cache.

    `run` fills an entry at a snapshot's first restore and mounts a
    copy-on-write view of it for every restore after (see docs/CACHE.md).
    Size limit: DOCKSNAP_CACHE_SIZE (default 10GiB); least recently used
    entries no container reads are evicted.

    \b
    Example:
      docksnap cache ls
      docksnap cache prune
    """


@cache.command("ls")
@output_options
@pass_app
def ls(app: App) -> None:
    """List cache entries, least recently used first.

    \b
    Example:
      docksnap cache ls --json
    """

    async def body(client: Client, meter: Meter) -> Result:
        entries = await client.cache.list()
        rows = [
            [
                e.name,
                e.snapshot_id,
                render.size(e.size),
                render.local_time(e.last_used_at),
                "complete" if e.complete else "filling",
                str(e.references // 2) if e.in_use else "-",
            ]
            for e in entries
        ]
        headers = ["ENTRY", "SNAPSHOT", "SIZE", "LAST USED", "STATE", "IN USE BY"]
        lines = render.table(headers, rows) if entries else ["no cache entries"]
        lines.append(
            f"{render.size(sum(e.size for e in entries))} of {render.size(client.cache.size_limit)}"
        )
        return Result([shapes.cache_entry(e) for e in entries], lines, [e.name for e in entries])

    app.run(body, progress=False)


@cache.command("rm")
@click.argument("reference", metavar="ENTRY_OR_SNAPSHOT_ID")
@output_options
@pass_app
def rm(app: App, reference: str) -> None:
    """Remove a cache entry, or every entry of a snapshot id.

    An entry a container reads is kept (exit 4): remove that container first.
    The stored snapshot is not touched.

    \b
    Example:
      docksnap cache rm 3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61
    """

    async def body(client: Client, meter: Meter) -> Result:
        removed = await client.cache.remove(reference)
        return Result({"removed": removed}, [f"removed {name}" for name in removed], removed)

    app.run(body, progress=False)


@cache.command("prune")
@output_options
@pass_app
def prune(app: App) -> None:
    """Remove every cache entry no container reads (and fills that died).

    \b
    Example:
      docksnap cache prune
    """

    async def body(client: Client, meter: Meter) -> Result:
        removed = await client.cache.prune()
        lines = [f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'}"]
        return Result({"removed": removed}, lines + [f"  {n}" for n in removed], removed)

    app.run(body, progress=False)

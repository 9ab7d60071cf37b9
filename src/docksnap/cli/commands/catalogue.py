"""Commands on the store's catalogue: ls, show, files, diff, rm, prune, gc, verify, stats."""

from __future__ import annotations

import logging

import click

from docksnap.cli import refs, render, shapes
from docksnap.cli.app import App, Result, output_options, pass_app
from docksnap.cli.exits import ExitCode
from docksnap.cli.params import SECONDS
from docksnap.cli.progress import Meter
from docksnap.errors import DockerUnavailableError, InvalidArgumentError
from docksnap.model import normalize_path
from docksnap.service.catalogue import DEFAULT_GC_GRACE
from docksnap.service.client import Client
from docksnap.service.orphans import OrphanReport
from docksnap.store.base import VerifyReport
from docksnap.tarstream import TarEntry

SHOW_FILES = 20
log = logging.getLogger(__name__)


@click.command("ls")
@click.option("--name", help="Only snapshots with this name.")
@click.option("--container", help="Only snapshots taken from this container.")
@click.option("--dir", "directory", metavar="DIR", help="Only snapshots of this directory.")
@click.option("--no-trunc", is_flag=True, help="Full ids, and columns as wide as they need.")
@output_options
@pass_app
def ls(
    app: App, name: str | None, container: str | None, directory: str | None, no_trunc: bool
) -> None:
    """List snapshots, newest first.

    Ids are shortened to a unique prefix (any command takes one) and the
    table fits the terminal; --no-trunc prints it whole.

    \b
    Example:
      docksnap ls --name nightly --json
    """
    width = None if no_trunc else render.output_width()

    async def body(client: Client, meter: Meter) -> Result:
        infos = [
            info
            async for info in client.snapshots.list(name=name, container=container, dir=directory)
        ]
        kinds = [await client.snapshots.kind(i) for i in infos]
        table = render.snapshot_table(infos, kinds, short_ids=not no_trunc, width=width)
        lines = table if infos else ["no snapshots"]
        document = [{**shapes.info(i), "kind": k} for i, k in zip(infos, kinds, strict=True)]
        return Result(document, lines, [i.id for i in infos])

    app.run(body)


@click.command()
@click.argument("snapshot_id", metavar="ID")
@click.option(
    "--report",
    "with_report",
    is_flag=True,
    help="Also list what the capture did not take faithfully (reads the whole snapshot).",
)
@output_options
@pass_app
def show(app: App, snapshot_id: str, with_report: bool) -> None:
    """Show a snapshot: its record, source, times and first files.

    \b
    Example:
      docksnap show 3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61 --report
    """

    async def body(client: Client, meter: Meter) -> Result:
        result = await _show(client, snapshot_id)
        if not with_report:
            return result
        report = await client.snapshots.report(result.quiet_lines[0])  # the resolved id
        document = {**result.document, "report": report.to_dict() if report else None}
        return Result(document, [*result.lines, *render.report_lines(report)], result.quiet_lines)

    app.run(body)


async def _show(client: Client, snapshot_id: str) -> Result:
    """The record, source, times, kind and first files of one snapshot."""
    info = await client.snapshots.resolve(snapshot_id)
    files = await client.snapshots.files(info.id)
    source = info.source
    ttl = (
        "-"
        if info.ttl is None
        else (
            f"{render.duration(info.ttl)} of disuse (expires "
            f"{render.local_time(info.last_used_at + info.ttl)})"
        )
    )
    shown = min(len(files), SHOW_FILES)
    kind = await client.snapshots.kind(info)
    lines = render.key_values(
        [
            ("id", info.id),
            ("name", info.name or "-"),
            ("kind", kind),
            ("dir", info.dir),
            ("size", f"{render.size(info.size)} ({info.size} bytes)"),
            ("stored size", _stored_size(info.stored_size)),
            ("digest", info.snapshot.digest or "-"),
            ("container", (source.container if source else "") or "-"),
            ("image", render.image((source.image if source else "") or "-")),
            ("created", render.local_time(info.created_at)),
            ("last used", render.local_time(info.last_used_at)),
            ("ttl", ttl),
            (
                "files",
                f"{len(files)} entries"
                + (
                    f", the first {shown} shown (`docksnap files ID` lists all)"
                    if shown < len(files)
                    else ""
                ),
            ),
        ]
    )
    lines += render.file_lines(files[:shown], prefix="  ")
    document = {**shapes.show(info, files, SHOW_FILES), "kind": kind}
    return Result(document, lines, [info.id])


def _stored_size(stored: int | None) -> str:
    """What the save added to the store (SnapshotInfo.stored_size); older ones: "-"."""
    if stored is None:
        return "- (not recorded)"
    return f"{render.size(stored)} ({stored} bytes, added by this save)"


def _relative(path: str, snapshot_dir: str) -> str:
    """PATH as the index names it: relative to the snapshot's directory ("." is its root)."""
    if path.startswith("/"):
        canonical = normalize_path(path, what="PATH")
        if canonical == snapshot_dir:
            return "."
        prefix = snapshot_dir.rstrip("/") + "/"
        if not canonical.startswith(prefix):
            raise InvalidArgumentError(
                f"PATH {path} is outside the snapshot's directory {snapshot_dir}"
            )
        return canonical[len(prefix) :]
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/") or "."


def _subtree(entries: list[TarEntry], root: str) -> list[TarEntry]:
    if root == ".":
        return entries
    return [e for e in entries if e.path == root or e.path.startswith(root + "/")]


@click.command()
@click.argument("snapshot_id", metavar="ID")
@click.argument("path", required=False)
@output_options
@pass_app
def files(app: App, snapshot_id: str, path: str | None) -> None:
    """List a snapshot's files like `tar -tv`.

    With PATH, only that file or directory tree. PATH is relative to the
    snapshot's directory, or absolute inside it.

    \b
    Example:
      docksnap files 3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61 src/
    """

    async def body(client: Client, meter: Meter) -> Result:
        info = await client.snapshots.resolve(snapshot_id)
        entries = await client.snapshots.files(info.id)
        if path is not None:
            entries = _subtree(entries, _relative(path, info.dir))
            if not entries:
                raise InvalidArgumentError(f"no file {path!r} in snapshot {snapshot_id}")
        return Result(
            [shapes.entry(e) for e in entries],
            render.file_lines(entries),
            [e.path for e in entries],
        )

    app.run(body)


@click.command()
@click.argument("old_id", metavar="ID1")
@click.argument("new_id", metavar="ID2")
@output_options
@pass_app
def diff(app: App, old_id: str, new_id: str) -> None:
    """Files added (+), removed (-), changed (~) from ID1 to ID2.

    Content is compared by size and modification time, as rsync does.

    \b
    Example:
      docksnap diff 3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61 8e1b2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e
    """

    async def body(client: Client, meter: Meter) -> Result:
        result = await client.snapshots.diff(
            await refs.snapshot_id(client, old_id), await refs.snapshot_id(client, new_id)
        )
        lines = [
            *render.file_lines(result.added, prefix="+ "),
            *render.file_lines(result.removed, prefix="- "),
            *(
                f"~ {render.display_path(change.new)}  "
                f"{render.describe_change(change.old, change.new, change.fields)}"
                for change in result.changed
            ),
        ]
        counts = (
            f"{len(result.added)} added, {len(result.removed)} removed, "
            f"{len(result.changed)} changed"
        )
        quiet = [
            *(f"+ {e.path}" for e in result.added),
            *(f"- {e.path}" for e in result.removed),
            *(f"~ {new.path}" for _, new in result.changed),
        ]
        return Result(shapes.diff(result), [*lines, counts] if lines else ["no differences"], quiet)

    app.run(body)


@click.command()
@click.argument("snapshot_ids", nargs=-1, required=True, metavar="ID...")
@output_options
@pass_app
def rm(app: App, snapshot_ids: tuple[str, ...]) -> None:
    """Delete snapshots.

    Their data is reclaimed by the next `docksnap gc`. Every ID is looked up
    first: if one is unknown, nothing is deleted.

    \b
    Example:
      docksnap rm 3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61
    """

    async def body(client: Client, meter: Meter) -> Result:
        ids = list(dict.fromkeys([await refs.snapshot_id(client, ref) for ref in snapshot_ids]))
        for snapshot_id in ids:
            await client.snapshots.delete(snapshot_id)
        return Result({"deleted": ids}, [f"deleted {i}" for i in ids])

    app.run(body)


@click.command()
@click.option(
    "--keep-last",
    type=click.IntRange(min=0),
    required=True,
    metavar="N",
    help="How many of the newest snapshots to keep.",
)
@click.option(
    "--all-names",
    is_flag=True,
    help="Keep the newest N overall, instead of the newest N of each name.",
)
@click.option("--name", help="Prune only the snapshots with this name.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
@output_options
@pass_app
def prune(app: App, keep_last: int, all_names: bool, name: str | None, dry_run: bool) -> None:
    """Delete all but the newest N snapshots of each name.

    Unnamed snapshots count as one name. --name limits it to one name;
    --dry-run only lists what would go.

    \b
    Example:
      docksnap prune --name nightly --keep-last 3 --dry-run
    """

    async def body(client: Client, meter: Meter) -> Result:
        deleted = await client.snapshots.prune(
            keep_last=keep_last, per_name=not all_names, name=name, dry_run=dry_run
        )
        verb = "would delete" if dry_run else "deleted"
        lines = [f"{verb} {len(deleted)} snapshot(s)", *(f"  {i}" for i in deleted)]
        document: dict[str, object] = {"deleted": [] if dry_run else deleted}
        if dry_run:
            document["would_delete"] = deleted
        return Result(document, lines, deleted)

    app.run(body)


@click.command()
@click.option(
    "--grace",
    type=SECONDS,
    default=DEFAULT_GC_GRACE,
    show_default=True,
    metavar="SECONDS",
    help="Keep unreferenced data younger than this (writers' data).",
)
@output_options
@pass_app
def gc(app: App, grace: float) -> None:
    """Expire snapshots, reclaim data, remove engine orphans.

    Expired: unused for longer than their --ttl. Unused data: chunks no
    snapshot references, older than --grace (younger ones may be a writer's).
    Engine orphans: helper containers and restore volumes left by a docksnap
    that died (or whose container went with `docker rm -f`).

    \b
    Example:
      docksnap gc --grace 600
    """

    async def body(client: Client, meter: Meter) -> Result:
        expired = await client.snapshots.expire()
        report = await client.snapshots.gc(grace=grace)
        orphans = await reap_orphans_if_engine(client, grace)
        lines = [f"expired {i}" for i in expired] + [
            f"reclaimed {report.objects_deleted} object(s), {render.size(report.bytes_deleted)};"
            f" kept {report.objects_kept_young} younger than {render.duration(grace)}"
        ]
        if orphans.containers or orphans.volumes:
            lines.append(
                f"removed {len(orphans.containers)} orphaned helper container(s)"
                f" and {len(orphans.volumes)} orphaned restore volume(s)"
            )
        return Result(shapes.gc(expired, report, orphans), lines)

    app.run(body)


async def reap_orphans_if_engine(client: Client, grace: float) -> OrphanReport:
    """Engine orphans, unless no engine answers: a store's gc does not need one."""
    try:
        return await client.reap_orphans(grace=grace)
    except DockerUnavailableError as exc:
        log.warning("engine orphans not checked: %s", exc)
        return OrphanReport()


def _verify_lines(report: VerifyReport) -> tuple[list[str], list[str]]:
    """All lines, and the problem lines alone (for ``--quiet``)."""
    repaired = [
        f"repaired chunk {r.chunk} of {', '.join(r.snapshot_ids)} from {r.source}"
        for r in report.repaired
    ]
    problems = [f"{p.snapshot_id or '-'}  {p.object}: {p.detail}" for p in report.problems]
    summary = (
        f"checked {report.snapshots_checked} snapshot(s), {report.objects_checked} "
        f"object(s), {render.size(report.bytes_checked)}: "
    )
    verdict = "no problems" if report.ok else f"{len(report.problems)} problem(s)"
    if report.repaired:
        verdict = f"repaired {len(report.repaired)} chunk(s), " + verdict
    if report.damaged_snapshots:
        verdict += "; damaged: " + ", ".join(report.damaged_snapshots)
    return [*repaired, *problems, summary + verdict], problems


@click.command()
@click.argument("snapshot_id", metavar="[ID]", required=False)
@click.option(
    "--no-read-data",
    is_flag=True,
    help="Check that objects exist, without reading and hashing them.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Rewrite damaged chunks from an intact copy in this store or a --from store.",
)
@click.option(
    "--from",
    "sources",
    multiple=True,
    metavar="URL",
    help="A store to take intact chunks from with --repair (repeatable, tried in order).",
)
@output_options
@pass_app
def verify(
    app: App, snapshot_id: str | None, no_read_data: bool, repair: bool, sources: tuple[str, ...]
) -> None:
    """Check snapshots' data; exit 12 if anything is (still) wrong.

    Without ID, every snapshot. Each problem is listed. A chunk found damaged is
    quarantined, so the next snapshot of the same data stores it afresh. With
    --repair, each damaged chunk is rewritten from an intact copy (another pack or
    object of this store, else each --from store in turn); the snapshots still
    damaged afterwards are named.

    \b
    Example:
      docksnap verify || echo "the store is damaged"
      docksnap verify --repair --from s3://backup/docksnap
    """
    if sources and not repair:
        raise click.UsageError("--from needs --repair")
    if repair and no_read_data:
        raise click.UsageError("--repair reads the data; drop --no-read-data")

    async def body(client: Client, meter: Meter) -> Result:
        target = None if snapshot_id is None else await refs.snapshot_id(client, snapshot_id)
        report = await client.snapshots.verify(
            target, read_data=not no_read_data, repair=repair, sources=sources
        )
        lines, problems = _verify_lines(report)
        code = ExitCode.OK if report.ok else ExitCode.PROBLEMS_FOUND
        return Result(shapes.verify(report), lines, problems, code)

    app.run(body)


@click.command()
@output_options
@pass_app
def stats(app: App) -> None:
    """Show the store's totals: snapshots, bytes, deduplication.

    \b
    Example:
      docksnap --store file:///var/lib/docksnap stats
    """

    async def body(client: Client, meter: Meter) -> Result:
        totals = await client.snapshots.stats()
        lines = render.key_values(
            [
                ("store", client.store.url),
                ("snapshots", str(totals.snapshots)),
                ("logical size", render.size(totals.logical_bytes)),
                ("stored size", render.size(totals.stored_bytes)),
                ("chunks", str(totals.chunks)),
                ("dedup ratio", f"{totals.dedup_ratio:.2f}x"),
                ("compression", f"{totals.compression_ratio:.2f}x"),
                *((key, str(value)) for key, value in sorted(totals.extra.items())),
            ]
        )
        return Result(shapes.stats(client.store.url, totals), lines)

    app.run(body)

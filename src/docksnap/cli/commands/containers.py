"""Commands on containers: run, restore, snapshot, stop, rm-container."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import click

from docksnap import labels as lbl
from docksnap.cli import refs, render, shapes
from docksnap.cli.app import App, Result, output_options, output_options_without_v, pass_app
from docksnap.cli.params import SECONDS, TTL_FORMATS, byte_size, ttl_seconds
from docksnap.cli.progress import Meter
from docksnap.errors import (
    ContainerAlreadyRunningError,
    ContainerNotRunningError,
    InvalidArgumentError,
    SnapshotNotFoundError,
)
from docksnap.model import DirectorySnapshot, SnapshotRestore, normalize_path
from docksnap.service import runopts
from docksnap.service.client import Client
from docksnap.service.excludes import combine
from docksnap.service.hostcapture import CAPTURE_MODES, CaptureMode
from docksnap.service.progress import Operation
from docksnap.service.spool import DEFAULT_SPOOL_LIMIT


async def _expect_size(client: Client, meter: Meter, container: str, directory: str) -> None:
    """Give the snapshot bar a total: the last snapshot of this directory in this
    container, else the snapshot ``run`` restored there (its parent).

    Only an estimate (the directory may have changed size); without one the bar
    stays indeterminate rather than guessing. Skipped when nothing is drawn: a
    listing costs a request per snapshot on some stores.
    """
    if not meter.enabled:
        return
    try:
        path = normalize_path(directory, what="snapshot directory")
    except InvalidArgumentError:
        return  # the library reports it, in its own words
    async for info in client.snapshots.list(container=container, dir=path):
        meter.expect(Operation.SNAPSHOT, info.size)
        return
    labels = (await client.docker.inspect_container(container)).get("Config", {}).get("Labels")
    with contextlib.suppress(ValueError, AttributeError, SnapshotNotFoundError):
        parent = json.loads((labels or {}).get(lbl.RESTORED, "{}")).get(path)
        if isinstance(parent, str):
            meter.expect(Operation.SNAPSHOT, (await client.snapshots.get(parent)).size)


def _env(items: tuple[str, ...], env_files: tuple[str, ...]) -> dict[str, str]:
    """``--env-file`` files in order, then ``-e`` (``KEY=VALUE``, or ``KEY`` from this shell)."""
    env: dict[str, str] = {}
    for path in env_files:
        env.update(runopts.read_env_file(path))
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="'-e' / '--env'")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    try:
        return dict(runopts.parse_label(item) for item in items)
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc), param_hint="'-l' / '--label'") from None


@click.command(context_settings={"show_default": True})
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@click.option("--name", required=True, help="Name of the new container.")
@click.option(
    "--restore",
    "restores",
    multiple=True,
    metavar="ID[:MOUNT_POINT]",
    help="Restore this snapshot (id, id prefix or name:NAME), at its own directory "
    "or at MOUNT_POINT. Repeatable.",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Extract every restore over the image's files instead of a fresh volume.",
)
@click.option(
    "-e", "--env", multiple=True, metavar="KEY=VALUE", help="Environment variable. Repeatable."
)
@click.option(
    "--env-file",
    "env_files",
    multiple=True,
    metavar="FILE",
    help="Read KEY=VALUE lines from FILE (before -e). Repeatable.",
)
@click.option("--internet", is_flag=True, help="Network access through the engine's bridge.")
@click.option(
    "--network", metavar="NETWORK", help="Connect to this network (default: none, no network)."
)
@click.option(
    "-p",
    "--publish",
    multiple=True,
    metavar="[IP:][HOST_PORT:]PORT[/PROTO]",
    help="Publish a container port on the host (needs --network or --internet). Repeatable.",
)
@click.option(
    "-v",
    "--volume",
    "volumes",
    multiple=True,
    metavar="SRC:DST[:OPTS]",
    help="Bind mount a host path (absolute SRC) or a named volume. Repeatable.",
)
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Run as this user.")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory inside the container.")
@click.option(
    "-l", "--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label. Repeatable."
)
@click.option("-m", "--memory", metavar="BYTES", help="Memory limit, e.g. 512m or 2g.")
@click.option("--cpus", metavar="N", help="Number of CPUs, e.g. 1.5.")
@click.option(
    "--restart",
    metavar="POLICY",
    help="no, always, unless-stopped or on-failure[:MAX_RETRIES].",
)
@click.option(
    "--entrypoint",
    metavar="PROGRAM",
    help="Replace the image's entrypoint; CMD after -- then becomes its arguments.",
)
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option(
    "--restore-cache",
    type=click.Choice(["auto", "off"]),
    default=None,
    help="auto: restores mount a copy-on-write view of this host's restore cache "
    "(filled at a snapshot's first restore); off: stream every restore. "
    "[default: DOCKSNAP_RESTORE_CACHE, else auto]",
)
@click.option(
    "--from-container-snapshot",
    "container_snapshot_id",
    metavar="ID",
    help="Start from IMAGE plus this whole-container snapshot (deleted files stay deleted).",
)
@output_options_without_v
@pass_app
def run(
    app: App,
    image: str,
    command: tuple[str, ...],
    name: str,
    restores: tuple[str, ...],
    merge: bool,
    env: tuple[str, ...],
    env_files: tuple[str, ...],
    internet: bool,
    network: str | None,
    publish: tuple[str, ...],
    volumes: tuple[str, ...],
    user: str | None,
    workdir: str | None,
    labels: tuple[str, ...],
    memory: str | None,
    cpus: str | None,
    restart: str | None,
    entrypoint: str | None,
    remove: bool,
    restore_cache: str | None,
    container_snapshot_id: str | None,
) -> None:
    """Start a named container with snapshots restored into it.

    The options are docker run's, in its formats. CMD (after --) replaces the
    image's entrypoint, unless --entrypoint is given: then CMD is its arguments.
    The container runs in the background without network access unless
    --internet or --network is given; -p needs one of them (on an engine
    without a usable bridge, a network made with `docker network create`).
    Here -v means --volume, as in docker run (--verbose stays available).

    \b
    Example:
      docksnap run docksnap-test:latest --name box2 --restore name:step-3:/work \\
        --network mynet -p 127.0.0.1:8080:80 -v "$PWD/cache:/cache" -- sleep 1d
    """
    specs = [refs.restore_spec(text, "--restore") for text in restores]
    for snapshot_ref, mount_point in specs:
        if mount_point is not None and mount_point.rstrip("/") == "" and not merge:
            raise click.BadParameter(
                f"restoring {snapshot_ref} to / needs --merge (a fresh volume cannot mask /)",
                param_hint="--restore",
            )
    if publish and not (network or internet):
        raise click.UsageError(
            "-p/--publish needs a network that can publish ports: add --network NAME "
            "(a bridge network, e.g. made by `docker network create NAME`) or --internet"
        )
    if internet and network:
        raise click.UsageError("--internet and --network conflict: give one of them")
    if remove and restart not in (None, "no"):
        raise click.UsageError(f"--rm and --restart {restart} conflict: give one of them")
    environment = _env(env, env_files)
    user_labels = _labels(labels)
    entry: list[str] | None = [entrypoint] if entrypoint is not None else list(command) or None
    args: list[str] | None = list(command) if entrypoint is not None else None

    async def body(client: Client, meter: Meter) -> Result:
        plan = []
        for snapshot_ref, mount_point in specs:
            info = await client.snapshots.resolve(snapshot_ref)
            if mount_point is None and info.dir == "/" and not merge:
                raise click.BadParameter(
                    f"snapshot {info.id} is of /, which only --merge can restore",
                    param_hint="--restore",
                )
            plan.append(SnapshotRestore(info.snapshot, mount_point=mount_point, merge=merge))
        whole = None
        if container_snapshot_id is not None:
            whole = (await client.snapshots.resolve(container_snapshot_id)).snapshot
        started = time.monotonic()
        with meter.activity(f"starting {name}"):
            await client.container(name).start(
                image,
                entrypoint=entry,
                command=args,
                env=environment,
                enable_internet=internet,
                snapshots=plan,
                publish=publish,
                volumes=volumes,
                user=user,
                workdir=workdir,
                labels=user_labels,
                network=network,
                memory=memory,
                cpus=cpus,
                restart=restart,
                remove=remove,
                container_snapshot=whole,
                restore_cache=restore_cache,
            )
        elapsed = time.monotonic() - started
        document = {
            "name": name,
            "image": image,
            "restores": [
                {"id": r.snapshot.id, "target": r.target, "merge": r.merge, "size": r.snapshot.size}
                for r in plan
            ],
        }
        if whole is not None:
            document["container_snapshot"] = whole.id
        lines = [
            f"started {name} from {image}"
            + (f" + container snapshot {whole.id}" if whole is not None else "")
            + f" in {elapsed:.2f} s"
        ] + [
            f"  restored {r.snapshot.id} ({render.size(r.snapshot.size)}) at {r.target}"
            + (" (merged)" if r.merge else "")
            for r in plan
        ]
        return Result(document, lines, [name])

    app.run(body)


@click.command()
@click.argument("snapshot_refs", nargs=-1, required=True, metavar="ID[:MOUNT_POINT]...")
@click.option("--into", "container", required=True, metavar="CONTAINER", help="The container.")
@click.option(
    "--force",
    is_flag=True,
    help="Restore into a running container too (its programs see files change under them).",
)
@output_options
@pass_app
def restore(app: App, snapshot_refs: tuple[str, ...], container: str, force: bool) -> None:
    """Restore snapshots into a container that already exists.

    Merge semantics, as docker cp: each snapshot's files are extracted over the
    container's own, at the snapshot's directory or MOUNT_POINT; files the
    snapshot lacks stay (masking needs a fresh mount, which only `docksnap run`
    makes). For a created or stopped container; a running one is refused
    unless --force. ID is an id, a unique prefix of one, or name:NAME.

    \b
    Example:
      docker-compose up --no-start && docksnap restore name:db-seed --into shop_db_1
    """
    specs = [refs.restore_spec(text, "ID[:MOUNT_POINT]") for text in snapshot_refs]

    async def body(client: Client, meter: Meter) -> Result:
        plan = [
            SnapshotRestore(
                (await client.snapshots.resolve(ref)).snapshot, mount_point=mount_point, merge=True
            )
            for ref, mount_point in specs
        ]
        try:
            with meter.activity(f"restoring into {container}"):
                done = await client.container(container).restore(plan, force=force)
        except ContainerAlreadyRunningError as exc:
            raise ContainerAlreadyRunningError(
                container,
                f"container {container!r} is running; --force restores into it anyway "
                "(its programs may see files change under them)",
            ) from exc
        document = {
            "container": container,
            "restores": [
                {"id": r.snapshot.id, "target": r.target, "size": r.snapshot.size} for r in done
            ],
        }
        lines = [
            f"restored {r.snapshot.id} ({render.size(r.snapshot.size)}) into {container}"
            f" at {r.target}"
            for r in done
        ]
        return Result(document, lines, [container])

    app.run(body)


@click.command()
@click.argument("container")
@click.argument("directory", metavar="DIR")
@click.option("--name", help="A label for the snapshot (ls --name finds it).")
@click.option(
    "--no-pause",
    is_flag=True,
    help="Do not pause the container while reading (faster, maybe inconsistent).",
)
@click.option(
    "--ttl",
    callback=ttl_seconds,
    metavar="DURATION",
    help=f"Delete the snapshot (at `docksnap gc`) after this long unused: {TTL_FORMATS}.",
)
@click.option(
    "--size-limit",
    callback=byte_size,
    metavar="SIZE",
    help="Refuse a directory whose tar stream is larger (e.g. 2GiB). [default: 16GiB]",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="PATTERN",
    help="Leave out paths matching PATTERN (.gitignore syntax, relative to DIR). Repeatable.",
)
@click.option(
    "--exclude-from",
    "exclude_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Read exclude patterns from a local FILE, one per line. Repeatable.",
)
@click.option(
    "--ignore-file",
    is_flag=True,
    help="Also honour DIR/.docksnapignore inside the container.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Store nothing if anything cannot be captured faithfully (see `show --report`).",
)
@click.option(
    "--spool-limit",
    callback=byte_size,
    metavar="SIZE",
    help="Most bytes spooled to a temporary file while the store catches up with the"
    " engine (0: none; past it the pause lasts longer). [default: 4GiB]",
)
@click.option(
    "--capture",
    type=click.Choice(CAPTURE_MODES),
    default="auto",
    show_default=True,
    help="How to read DIR: host (through the container's root from this host; keeps"
    " nanosecond mtimes, user.* xattrs and ACLs), archive (the engine's archive API),"
    " auto (host when possible, else archive).",
)
@click.option(
    "--parent",
    default="auto",
    show_default=True,
    metavar="REF|auto|none",
    help="Host capture: reuse, unread, the files this snapshot (an id, a prefix or"
    " name:NAME) holds unchanged (same inode, size, mtime and ctime); auto: the newest"
    " snapshot of this container's DIR; none: read every file.",
)
@output_options
@pass_app
def snapshot(
    app: App,
    container: str,
    directory: str,
    name: str | None,
    no_pause: bool,
    ttl: float | None,
    size_limit: int | None,
    excludes: tuple[str, ...],
    exclude_files: tuple[str, ...],
    ignore_file: bool,
    strict: bool,
    spool_limit: int | None,
    capture: CaptureMode,
    parent: str,
) -> None:
    """Snapshot a directory of a container into the store.

    A running container is paused while its directory is read (unless
    --no-pause); a stopped one (exited or created) is read as it is, as
    docker cp does.

    \b
    Example:
      docksnap snapshot box /work --name after-step-3 --exclude 'node_modules/' --exclude '*.log'
    """
    patterns = combine(excludes, exclude_files)

    async def body(client: Client, meter: Meter) -> Result:
        box = client.container(container)
        state = await box.describe()
        await _expect_size(client, meter, container, directory)
        chosen: str | None = parent
        if parent == "none":
            chosen = None
        elif parent != "auto":
            chosen = await refs.snapshot_id(client, parent)
        started = time.monotonic()
        snap = await box.snapshot_directory(
            directory,
            name=name,
            pause=not no_pause,
            ttl=ttl,
            size_limit=size_limit,
            exclude=patterns,
            ignore_file=ignore_file,
            strict=strict,
            capture=capture,
            spool_limit=DEFAULT_SPOOL_LIMIT if spool_limit is None else spool_limit,
            parent=chosen,
        )
        elapsed = time.monotonic() - started
        result = await saved_result(
            client, snap, elapsed, pause=not no_pause, paused=box.running and not no_pause
        )
        if box.running:
            return result
        lines = [*result.lines, f"container {container} is not running ({state}): not paused"]
        return Result(result.document, lines, result.quiet_lines)

    app.run(body)


_CAPTURE_WORDS = {"host": "host (container root)", "archive": "engine's archive API"}


async def saved_result(
    client: Client,
    snap: DirectorySnapshot,
    elapsed: float,
    *,
    pause: bool | None = None,
    paused: bool = False,
) -> Result:
    """What `snapshot` and `snapshot-container` print: the record, speed and report line.

    ``pause`` (asked for) and ``paused`` (happened) add the pause figures, for
    the records that carry ``paused_s``.
    """
    info = snap.info or await client.snapshots.get(snap.id)
    speed = (
        f"saved {render.size(snap.size)} in {elapsed:.2f} s"
        f" ({render.size(snap.size / max(elapsed, 1e-6))}/s)"
    )
    document = shapes.info(info)
    if pause is not None:
        paused_s = snap.paused_s or 0.0
        speed += f", container paused {paused_s:.2f} s" if pause else ", not paused"
        document = {**document, "paused": paused, "paused_s": paused_s}
    if snap.capture is not None:
        speed += f", read through the {_CAPTURE_WORDS[snap.capture]}"
        document = {**document, "capture": snap.capture}
    if snap.reuse is not None:
        document = {**document, **snap.reuse.to_dict()}
        if snap.reuse.parent is not None:
            speed += (
                f"; {snap.reuse.reused_files} files ({render.size(snap.reuse.reused_bytes)})"
                f" reused from {snap.reuse.parent}, {snap.reuse.read_files} read"
            )
    lines = [*render.snapshot_table([info]), speed]
    if snap.report is not None:
        lines.append(render.report_line(snap.report))
        document["report"] = snap.report.to_dict()
    return Result(document, lines, [snap.id])


@click.command()
@click.argument("name")
@click.option(
    "--timeout",
    type=SECONDS,
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait after SIGTERM before sending SIGKILL.",
)
@output_options
@pass_app
def stop(app: App, name: str, timeout: float) -> None:
    """Stop a container: SIGTERM, then SIGKILL after a timeout.

    The stopped container stays (for `docker logs`); `docksnap rm-container`
    removes it. Prints the container's exit code.

    \b
    Example:
      docksnap stop box --timeout 5
    """

    async def body(client: Client, meter: Meter) -> Result:
        box = client.container(name)
        with meter.activity(f"stopping {name}"):
            await box.signal(signal.SIGTERM)
            try:
                code, killed = await asyncio.wait_for(box.monitor(), timeout), False
            except TimeoutError:
                # PID 1 ignores SIGTERM unless it handles it: `docker stop` does the same.
                with contextlib.suppress(ContainerNotRunningError):
                    await box.signal(signal.SIGKILL)
                code, killed = await box.monitor(), True
        how = f", killed after {timeout:g} s" if killed else ""
        document = {"name": name, "exit_code": code, "killed": killed}
        return Result(document, [f"stopped {name} (exit code {code}{how})"])

    app.run(body)


@click.command("rm-container")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@output_options
@pass_app
def rm_container(app: App, names: tuple[str, ...]) -> None:
    """Remove containers and their restore volumes.

    Removing a container that does not exist succeeds: the command is idempotent.

    \b
    Example:
      docksnap rm-container box box2
    """

    async def body(client: Client, meter: Meter) -> Result:
        for name in names:
            await client.container(name).destroy()
        return Result({"removed": list(names)}, [f"removed {name}" for name in names])

    app.run(body)

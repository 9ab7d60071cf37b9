"""Commands on containers: run, snapshot, stop, rm-container."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import click

from docksnap.cli import render, shapes
from docksnap.cli.app import App, Result, output_options, pass_app
from docksnap.cli.params import SECONDS, byte_size
from docksnap.cli.progress import Meter
from docksnap.errors import ContainerNotRunningError
from docksnap.model import SnapshotRestore
from docksnap.service.client import Client


def _restore_spec(text: str) -> tuple[str, str | None]:
    """``ID`` or ``ID:/mount/point`` (snapshot ids are UUIDs, which hold no colon)."""
    snapshot_id, sep, mount_point = text.partition(":")
    if not snapshot_id or (sep and not mount_point):
        raise click.BadParameter(f"{text!r} is not ID or ID:MOUNT_POINT", param_hint="--restore")
    return snapshot_id, mount_point or None


def _env(items: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


@click.command(context_settings={"show_default": True})
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@click.option("--name", required=True, help="Name of the new container.")
@click.option(
    "--restore",
    "restores",
    multiple=True,
    metavar="ID[:MOUNT_POINT]",
    help="Restore this snapshot, at its own directory or at MOUNT_POINT. Repeatable.",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Extract every restore over the image's files instead of a fresh volume.",
)
@click.option(
    "-e", "--env", multiple=True, metavar="KEY=VALUE", help="Environment variable. Repeatable."
)
@click.option("--internet", is_flag=True, help="Give the container network access.")
@output_options
@pass_app
def run(
    app: App,
    image: str,
    command: tuple[str, ...],
    name: str,
    restores: tuple[str, ...],
    merge: bool,
    env: tuple[str, ...],
    internet: bool,
) -> None:
    """Start a named container with snapshots restored into it.

    CMD (after --) replaces the image's entrypoint. The container runs in the
    background without network access unless --internet is given.

    \b
    Example:
      docksnap run docksnap-test:latest --name box2 --restore 3f2a...:/work -- sleep 1d
    """
    specs = [_restore_spec(text) for text in restores]
    environment = _env(env)

    async def body(client: Client, meter: Meter) -> Result:
        records = {
            snapshot_id: (await client.snapshots.get(snapshot_id)).snapshot
            for snapshot_id in dict.fromkeys(snapshot_id for snapshot_id, _ in specs)
        }
        plan = [
            SnapshotRestore(records[snapshot_id], mount_point=mount_point, merge=merge)
            for snapshot_id, mount_point in specs
        ]
        started = time.monotonic()
        with meter.activity(f"starting {name}"):
            await client.container(name).start(
                image,
                entrypoint=list(command) or None,
                env=environment,
                enable_internet=internet,
                snapshots=plan,
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
        lines = [f"started {name} from {image} in {elapsed:.2f} s"] + [
            f"  restored {r.snapshot.id} ({render.size(r.snapshot.size)}) at {r.target}"
            + (" (merged)" if r.merge else "")
            for r in plan
        ]
        return Result(document, lines, [name])

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
    type=SECONDS,
    metavar="SECONDS",
    help="Delete the snapshot (at `docksnap gc`) after this long unused.",
)
@click.option(
    "--size-limit",
    callback=byte_size,
    metavar="SIZE",
    help="Refuse a directory whose tar stream is larger (e.g. 2GiB). [default: 16GiB]",
)
@click.option(
    "--spool-limit",
    callback=byte_size,
    metavar="SIZE",
    help="Most bytes spooled to a temporary file while the store catches up with the"
    " engine (0: none; past it the pause lasts longer). [default: 4GiB]",
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
    spool_limit: int | None,
) -> None:
    """Snapshot a directory of a running container into the store.

    \b
    Example:
      docksnap snapshot box /work --name after-step-3
    """

    async def body(client: Client, meter: Meter) -> Result:
        started = time.monotonic()
        spool = {} if spool_limit is None else {"spool_limit": spool_limit}
        snap = await client.container(container).snapshot_directory(
            directory, name=name, pause=not no_pause, ttl=ttl, size_limit=size_limit, **spool
        )
        elapsed = time.monotonic() - started
        info = snap.info
        assert info is not None  # always set on the record the library just committed
        paused_s = snap.paused_s or 0.0
        lines = [
            *render.snapshot_table([info]),
            f"saved {render.size(snap.size)} in {elapsed:.2f} s"
            f" ({render.size(snap.size / max(elapsed, 1e-6))}/s),"
            + (f" container paused {paused_s:.2f} s" if not no_pause else " not paused"),
        ]
        return Result({**shapes.info(info), "paused_s": paused_s}, lines, [snap.id])

    app.run(body)


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

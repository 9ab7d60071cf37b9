"""The ``docksnap`` command: the group, its global options, and its subcommands."""

from __future__ import annotations

import click

from docksnap import __version__
from docksnap.cli.app import App, DocksnapGroup, output_options, parse_pairs
from docksnap.cli.commands import beyond, cache, catalogue, containers, demo, transfer
from docksnap.cli.malloc import limit_malloc_arenas
from docksnap.cli.params import SECONDS


@click.group(
    cls=DocksnapGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--docker-host",
    envvar="DOCKER_HOST",
    metavar="URL",
    help="Docker engine: unix:///path or tcp://host:port. "
    "[env DOCKER_HOST; default unix:///var/run/docker.sock]",
)
@click.option(
    "--store",
    envvar="DOCKSNAP_STORE",
    metavar="URL",
    help="Snapshot store: file:///path, s3://bucket/prefix or docker-volume:. "
    "[env DOCKSNAP_STORE; default file://$XDG_DATA_HOME/docksnap]",
)
@click.option(
    "--engine-timeout",
    envvar="DOCKSNAP_ENGINE_TIMEOUT",
    type=SECONDS,
    metavar="SECONDS",
    help="Give up on an engine call that gets no answer for this long. "
    "[env DOCKSNAP_ENGINE_TIMEOUT; default 120]",
)
@click.option(
    "--stall-timeout",
    envvar="DOCKSNAP_STALL_TIMEOUT",
    type=SECONDS,
    metavar="SECONDS",
    help="Give up on an archive stream that moves no byte for this long. "
    "[env DOCKSNAP_STALL_TIMEOUT; default 120]",
)
# Labels for everything docksnap creates: how the tests find what they leaked.
@click.option("--labels", envvar="DOCKSNAP_LABELS", hidden=True, metavar="K=V,...")
@output_options
@click.version_option(
    __version__, "--version", prog_name="docksnap", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(
    ctx: click.Context,
    docker_host: str | None,
    store: str | None,
    labels: str | None,
    engine_timeout: float | None,
    stall_timeout: float | None,
) -> None:
    """Durable directories for Docker containers: snapshot a directory of a
    running container, restore it into new ones.

    \b
    Example:
      docksnap run docksnap-test:latest --name box -- sh -c 'mkdir /w; date > /w/f; sleep 1d'
      docksnap snapshot box /w --name first
      docksnap run docksnap-test:latest --name box2 --restore ID -- sleep 1d

    Exit codes and JSON shapes: docs/CLI.md.
    """
    app = ctx.ensure_object(App)
    app.docker_host = docker_host or None
    app.store = store or None
    app.labels = parse_pairs(labels, "DOCKSNAP_LABELS")
    app.engine_timeout = engine_timeout
    app.stall_timeout = stall_timeout


for command in (
    containers.run,
    containers.snapshot,
    containers.restore,
    beyond.snapshot_container,
    catalogue.ls,
    catalogue.show,
    catalogue.files,
    catalogue.diff,
    beyond.merge,
    catalogue.rm,
    catalogue.prune,
    catalogue.gc,
    catalogue.verify,
    catalogue.stats,
    transfer.export,
    transfer.import_,
    transfer.copy,
    containers.stop,
    containers.rm_container,
    cache.cache,
    demo.demo,
):
    cli.add_command(command)

# Imported only when run (or listed by --help): `serve` brings the whole ASGI stack
# (FastAPI, pydantic, uvicorn), which no other command needs. It lives in
# docksnap.http, which sits above the CLI and reuses its options and exit codes.
cli.lazy_commands["serve"] = "docksnap.http.command:serve"


def main() -> None:
    """The console script's entry point."""
    limit_malloc_arenas()
    cli(prog_name="docksnap")

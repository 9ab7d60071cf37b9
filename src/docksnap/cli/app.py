"""The ``docksnap`` command group: global options, the client, output and errors.

Every command is a thin async body ``(client, meter) -> Result``: it calls the
library and says what to print. This module runs the body, prints the result
(``--json``, human or ``--quiet``) once the progress display is gone, and turns
every exception into a message and the exit code of :mod:`docksnap.cli.exits`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from docksnap.cli.exits import ExitCode, report
from docksnap.cli.progress import Meter
from docksnap.errors import DocksnapError
from docksnap.service.client import Client
from docksnap.service.pause import recover_stale_pauses


@dataclass(frozen=True, slots=True)
class Result:
    """What a command prints: a JSON document, human lines, and lines for ``--quiet``."""

    document: Any
    lines: Sequence[str] = ()
    quiet_lines: Sequence[str] = ()
    exit_code: ExitCode = ExitCode.OK


Body = Callable[[Client, Meter], Awaitable[Result]]


@dataclass(slots=True)
class App:
    """The global options, shared by every command through click's context object."""

    docker_host: str | None = None
    store: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    engine_timeout: float | None = None
    stall_timeout: float | None = None
    as_json: bool = False
    quiet: bool = False
    verbose: int = 0

    def open_client(self, meter: Meter) -> Client:
        """The one place a :class:`Client` is built from the global options."""
        return Client(
            docker_host=self.docker_host,
            store=self.store,
            labels=self.labels,
            progress=meter if meter.enabled else None,
            engine_timeout=self.engine_timeout,
            stall_timeout=self.stall_timeout,
        )

    def run(self, body: Body, *, progress: bool = True) -> None:
        """Run ``body`` with a client, print its result, exit with its code."""
        _configure_logging(self.verbose)
        meter = Meter.for_stderr(quiet=self.quiet or not progress)
        try:
            result = asyncio.run(self._session(body, meter))
        finally:
            meter.close()
        self.emit(result)
        if result.exit_code:
            raise click.exceptions.Exit(int(result.exit_code))

    async def _session(self, body: Body, meter: Meter) -> Result:
        async with self.open_client(meter) as client:
            await _recover_pauses(client)
            return await body(client, meter)

    def emit(self, result: Result) -> None:
        if self.as_json:
            click.echo(json.dumps(result.document, indent=2, ensure_ascii=False))
            return
        for line in result.quiet_lines if self.quiet else result.lines:
            click.echo(line)


pass_app = click.make_pass_decorator(App, ensure=True)
_F = TypeVar("_F", bound=Callable[..., Any])


def _set_flag(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        app = ctx.ensure_object(App)
        if name == "verbose":
            app.verbose += value
        elif value:
            setattr(app, name, True)

    return callback


def output_options(command: _F) -> _F:
    """``--json``, ``-q`` and ``-v``, accepted after the subcommand as well as before it."""
    return _output_options(command, ("-v", "--verbose"))


def output_options_without_v(command: _F) -> _F:
    """For ``run``, where ``-v`` means ``--volume`` as in ``docker run``: ``--verbose`` only."""
    return _output_options(command, ("--verbose",))


def _output_options(command: _F, verbose_flags: tuple[str, ...]) -> _F:
    for decorator in (
        click.option(
            "--json",
            is_flag=True,
            expose_value=False,
            callback=_set_flag("as_json"),
            help="Print one JSON document on stdout (see docs/CLI.md).",
        ),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            expose_value=False,
            callback=_set_flag("quiet"),
            help="No progress; print only ids.",
        ),
        click.option(
            *verbose_flags,
            count=True,
            expose_value=False,
            callback=_set_flag("verbose"),
            help="Tracebacks and more logging.",
        ),
    ):
        command = decorator(command)
    return command


class DocksnapGroup(click.Group):
    """Reports every error of a subcommand with its message and exit code.

    ``lazy_commands`` maps a command name to ``module:attribute``, imported only
    when that command is looked up (click's lazy-loading pattern).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        # In the order of a session, not alphabetical.
        return [*self.commands, *(n for n in self.lazy_commands if n not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, _, attribute = self.lazy_commands[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            app = ctx.obj if isinstance(ctx.obj, App) else App()
            code = report(exc, as_json=app.as_json, verbose=app.verbose)
            if code is ExitCode.BROKEN_PIPE:
                _silence_stdout()
            ctx.exit(int(code))


async def _recover_pauses(client: Client) -> None:
    """Unpause what a killed docksnap left paused (each logged as a warning).

    Costs one directory listing when nothing is stale; never fails a command.
    """
    try:
        await recover_stale_pauses(client.docker, client.docker.address.url)
    except (DocksnapError, OSError) as exc:
        logging.getLogger(__name__).debug("could not check for stale pauses: %s", exc)


def _silence_stdout() -> None:
    # Python would otherwise complain again when it flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


class _EchoHandler(logging.Handler):
    """Log lines on stderr, through click so they follow any redirection of stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"docksnap: {record.levelname.lower()}: {self.format(record)}", err=True)


def _configure_logging(verbose: int) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _EchoHandler) for h in root.handlers):
        root.addHandler(_EchoHandler())
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    # httpx logs every request at INFO: only worth seeing at -vv.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def parse_pairs(text: str | None, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` (or ``k=v`` items) as a dict; a malformed item is a usage error."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        pairs[key] = value
    return pairs

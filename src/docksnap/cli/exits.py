"""Exit codes: one table from error class to code, and how an error is reported.

The table is the CLI's contract with scripts; docs/CLI.md lists the same codes
(a unit test holds the two together). A class not in the table is looked up by
its bases, so a new subclass of a known error gets its parent's code.
"""

from __future__ import annotations

import json
import traceback
from enum import IntEnum
from typing import Any, TypeVar

import click

from docksnap import errors
from docksnap.tarstream import TarError


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    DOCKER_UNAVAILABLE = 3
    CONTAINER = 4
    DIRECTORY_NOT_FOUND = 5
    SNAPSHOT_NOT_FOUND = 6
    SNAPSHOT_TOO_LARGE = 7
    SNAPSHOT_CORRUPT = 8
    STORE = 9
    DOCKER = 10
    ARCHIVE_REFUSED = 11
    PROBLEMS_FOUND = 12
    START_FAILED = 13
    LOCAL_FILE = 14
    CAPTURE_INCOMPLETE = 15
    MERGE_CONFLICT = 16
    IMAGE_NOT_FOUND = 17
    HOST_CAPTURE_UNAVAILABLE = 18
    INTERRUPTED = 130
    BROKEN_PIPE = 141


EXIT_CODES: dict[type[BaseException], ExitCode] = {
    click.UsageError: ExitCode.USAGE,
    errors.InvalidArgumentError: ExitCode.USAGE,
    errors.DockerUnavailableError: ExitCode.DOCKER_UNAVAILABLE,
    errors.ContainerError: ExitCode.CONTAINER,
    errors.ContainerStartError: ExitCode.START_FAILED,
    errors.DirectoryNotFoundError: ExitCode.DIRECTORY_NOT_FOUND,
    errors.SnapshotNotFoundError: ExitCode.SNAPSHOT_NOT_FOUND,
    errors.SnapshotTooLargeError: ExitCode.SNAPSHOT_TOO_LARGE,
    errors.SnapshotCorruptError: ExitCode.SNAPSHOT_CORRUPT,
    errors.StoreError: ExitCode.STORE,
    errors.DockerError: ExitCode.DOCKER,
    errors.CaptureIncompleteError: ExitCode.CAPTURE_INCOMPLETE,
    errors.MergeConflictError: ExitCode.MERGE_CONFLICT,
    errors.ImageNotFoundError: ExitCode.IMAGE_NOT_FOUND,
    errors.CacheEntryNotFoundError: ExitCode.SNAPSHOT_NOT_FOUND,
    errors.CacheEntryInUseError: ExitCode.CONTAINER,
    errors.HostCaptureUnavailableError: ExitCode.HOST_CAPTURE_UNAVAILABLE,
    # A malformed or oversized tar stream is refused like an unsafe one: nothing stored.
    errors.UnsafeArchiveError: ExitCode.ARCHIVE_REFUSED,
    TarError: ExitCode.ARCHIVE_REFUSED,
    BrokenPipeError: ExitCode.BROKEN_PIPE,
    OSError: ExitCode.LOCAL_FILE,
    KeyboardInterrupt: ExitCode.INTERRUPTED,
}

_HINTS: dict[type[BaseException], str] = {
    errors.DockerTimeoutError: (
        "the engine stopped answering (`docker info` hangs too?); what was created was "
        "removed. If it is only slow, raise --engine-timeout / --stall-timeout"
    ),
    errors.DockerUnavailableError: (
        "start an engine (`scripts/setup docker`, or `sudo dockerd &`), or point "
        "--docker-host / DOCKER_HOST at one that runs"
    ),
    errors.ContainerNotFoundError: "`docker ps -a` lists the containers on this engine",
    errors.ContainerNotRunningError: (
        "start one with `docksnap run IMAGE --name NAME` (or `docker start NAME`)"
    ),
    errors.ContainerAlreadyRunningError: (
        "stop it first (`docksnap stop NAME`) or choose another --name"
    ),
    errors.ContainerStartError: (
        "check the image and the command after `--`; nothing was left behind"
    ),
    errors.DirectoryNotFoundError: "check the path, e.g. `docker exec NAME ls -la DIR`",
    errors.SnapshotNotFoundError: (
        "`docksnap ls` lists this store's snapshots; --store / DOCKSNAP_STORE selects another"
    ),
    errors.AmbiguousSnapshotError: (
        "give more characters of the id (`docksnap ls --no-trunc` shows them whole)"
    ),
    errors.SnapshotTooLargeError: "snapshot a smaller directory, or raise --size-limit",
    errors.SnapshotCorruptError: (
        "`docksnap verify` lists every damaged snapshot; remove it with `docksnap rm ID`"
    ),
    errors.StoreFormatError: "this store was written by a newer docksnap: upgrade docksnap",
    errors.StoreUnavailableError: "the store kept failing; check its address and try again",
    errors.StoreError: "check --store / DOCKSNAP_STORE and the store's permissions",
    errors.DockerError: "the engine refused; its message says why (a missing image: `docker pull`)",
    errors.UnsafeArchiveError: "nothing was stored; fix or drop that member and import again",
    TarError: "nothing was stored; the input must be one complete, safe tar archive",
    KeyboardInterrupt: "operations in flight were rolled back; nothing half-made is visible",
    errors.CaptureIncompleteError: (
        "exclude what cannot be captured (--exclude), or drop --strict to store it with a report"
    ),
    errors.MergeConflictError: (
        "choose a side with --on-conflict ours|theirs|both, or try --text-merge"
    ),
    errors.ImageNotFoundError: "pull or load that image on this engine first (`docker pull`)",
    errors.CacheEntryNotFoundError: "`docksnap cache ls` lists this host's restore cache",
    errors.CacheEntryInUseError: "`docksnap rm-container NAME` releases its view first",
    errors.HostCaptureUnavailableError: (
        "use --capture archive (or auto) to read it through the engine's archive API"
    ),
}


_T = TypeVar("_T")


def _lookup(table: dict[type[BaseException], _T], exc: BaseException) -> _T | None:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return None


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of ``exc``: its most specific class in the table, else UNEXPECTED."""
    return _lookup(EXIT_CODES, exc) or ExitCode.UNEXPECTED


def hint_for(exc: BaseException) -> str | None:
    """What to do about ``exc``, when there is something to say (also used by the HTTP API)."""
    return _lookup(_HINTS, exc)


def report(exc: BaseException, *, as_json: bool, verbose: int) -> ExitCode:
    """Tell the user what went wrong (stderr; with --json also a document on stdout)."""
    code = exit_code_for(exc)
    if code is ExitCode.BROKEN_PIPE:
        return code  # the reader went away; there is no one to tell
    message, hint = _describe(exc, code)
    if isinstance(exc, click.UsageError):
        exc.show()
    else:
        click.echo(f"docksnap: error: {message}", err=True)
        for line in _detail_lines(exc):
            click.echo(line, err=True)
        if hint:
            click.echo(f"hint: {hint}", err=True)
    if verbose:
        traceback.print_exception(exc)
    if as_json:
        document = {
            "type": type(exc).__name__,
            "exit_code": int(code),
            "message": message,
            "hint": hint,
            **_detail_document(exc),
        }
        click.echo(json.dumps({"error": document}, indent=2))
    return code


def _detail_lines(exc: BaseException) -> list[str]:
    """The full list behind errors that carry one (every conflict, every skipped member)."""
    if isinstance(exc, errors.MergeConflictError):
        return [f"  conflict {c.kind:<14} {c.path}" for c in exc.conflicts]
    if isinstance(exc, errors.CaptureIncompleteError):
        return [f"  {e.reason:<9} {e.path}  {e.detail}" for e in exc.report.entries]
    return []


def _detail_document(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, errors.MergeConflictError):
        return {"conflicts": [c.to_dict() for c in exc.conflicts]}
    if isinstance(exc, errors.CaptureIncompleteError):
        return {"report": exc.report.to_dict()}
    return {}


def _describe(exc: BaseException, code: ExitCode) -> tuple[str, str | None]:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", _HINTS[KeyboardInterrupt]
    if isinstance(exc, click.UsageError):
        return exc.format_message(), None
    if code is ExitCode.UNEXPECTED:
        return (
            f"unexpected {type(exc).__name__}: {exc}",
            "this is a bug in docksnap; run again with -v and report the traceback",
        )
    if code is ExitCode.LOCAL_FILE:
        return str(exc), None
    return str(exc), hint_for(exc)

"""Errors as ``application/problem+json`` (RFC 9457), one ``type`` per CLI exit code.

The class → code table is the CLI's, :data:`docksnap.cli.exits.EXIT_CODES`: an
error means the same thing to a script and to an HTTP caller, so there is one
table and this module only names its codes as URIs and picks an HTTP status
for each. A problem document carries the same ``exit_code`` and ``hint`` that
``docksnap --json`` prints.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from docksnap.cli.exits import ExitCode, exit_code_for, hint_for

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:docksnap:problem:"

# HTTP status per exit code. Refusals caused by what the caller sent are 4xx;
# only faults of the server's own store, engine or code are 5xx.
_STATUS: dict[ExitCode, int] = {
    ExitCode.UNEXPECTED: 500,
    ExitCode.USAGE: 400,
    ExitCode.DOCKER_UNAVAILABLE: 503,
    ExitCode.CONTAINER: 409,
    ExitCode.DIRECTORY_NOT_FOUND: 404,
    ExitCode.SNAPSHOT_NOT_FOUND: 404,
    ExitCode.SNAPSHOT_TOO_LARGE: 413,
    ExitCode.SNAPSHOT_CORRUPT: 500,
    ExitCode.STORE: 503,
    # The engine refused what the caller asked for (no such image, bad command).
    ExitCode.DOCKER: 422,
    ExitCode.ARCHIVE_REFUSED: 400,
    ExitCode.START_FAILED: 422,
    ExitCode.LOCAL_FILE: 500,
    # strict capture refused what it could not take faithfully; nothing stored.
    ExitCode.CAPTURE_INCOMPLETE: 422,
    ExitCode.MERGE_CONFLICT: 409,
    # An image the engine lacks, named by the caller (whole-container restore).
    ExitCode.IMAGE_NOT_FOUND: 422,
    # capture="host" asked of an engine or container it cannot work for.
    ExitCode.HOST_CAPTURE_UNAVAILABLE: 422,
    ExitCode.INTERRUPTED: 503,
}

# Problems of the HTTP layer itself, which no library call raises.
HTTP_TYPES: dict[int, str] = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "request-too-large",
    415: "unsupported-media-type",
}


def type_uri(code: ExitCode) -> str:
    """``urn:docksnap:problem:snapshot-not-found`` for ``ExitCode.SNAPSHOT_NOT_FOUND``."""
    return TYPE_PREFIX + code.name.lower().replace("_", "-")


def problem_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and problem document for an error a handler raised."""
    code = exit_code_for(exc)
    status = _STATUS.get(code, 500)
    if code is ExitCode.UNEXPECTED or code is ExitCode.LOCAL_FILE:
        # The message of an unexpected error may name server paths or internals.
        log.error("unexpected error", exc_info=exc)
        detail, hint = "internal error; the server log has the details", None
    else:
        detail, hint = str(exc), hint_for(exc)
    return status, {
        "type": type_uri(code),
        "title": code.name.replace("_", " ").lower(),
        "status": status,
        "detail": detail,
        "error": type(exc).__name__,
        "exit_code": int(code),
        "hint": hint,
    }


def http_problem(status: int, detail: str) -> dict[str, Any]:
    """A problem of the HTTP layer (authentication, routing, body size)."""
    kind = HTTP_TYPES.get(status, "bad-request")
    code = ExitCode.USAGE if status in (400, 404, 405, 413, 415) else None
    return {
        "type": TYPE_PREFIX + kind,
        "title": kind.replace("-", " "),
        "status": status,
        "detail": detail,
        "error": None,
        "exit_code": int(code) if code is not None else None,
        "hint": None,
    }


def problem_response(status: int, document: dict[str, Any], **headers: str) -> JSONResponse:
    return JSONResponse(document, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette exception handler for every docksnap (and unexpected) error."""
    status, document = problem_for(exc)
    return problem_response(status, document)

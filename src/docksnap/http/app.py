"""The ASGI application: the /v1 API, the dashboard, errors, and the OpenAPI document."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from docksnap import __version__
from docksnap.errors import DocksnapError
from docksnap.http import api, dashboard
from docksnap.http.auth import Authenticator
from docksnap.http.guard import DEFAULT_MAX_BODY, Guard
from docksnap.http.history import StatsHistory
from docksnap.http.problems import http_problem, on_error, problem_response
from docksnap.http.progress import route_progress
from docksnap.http.runtime import Runtime
from docksnap.service.client import Client

OPENAPI_URL = "/v1/openapi.json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything the app needs: the CLI's engine and store options, the token, limits."""

    token: str
    state_dir: Path
    docker_host: str | None = None
    store: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    max_body: int = DEFAULT_MAX_BODY


def create_app(config: ServeConfig) -> Any:
    """The app, wrapped in its guard; the client opens and closes with the app's lifespan."""
    auth = Authenticator(config.token)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = Client(
            docker_host=config.docker_host,
            store=config.store,
            labels=config.labels,
            progress=route_progress,
        )
        async with client:
            rt = Runtime(client, auth, StatsHistory(config.state_dir, client.store.url))
            app.state.runtime = rt
            rt.changed()  # a first sample, so the chart has a start
            try:
                yield
            finally:
                await rt.drain()

    app = FastAPI(
        title="docksnap",
        version=__version__,
        summary="Durable directories for Docker containers",
        description=_DESCRIPTION,
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.HERE / "static"), name="static")
    app.add_exception_handler(DocksnapError, on_error)
    app.add_exception_handler(RequestValidationError, _on_invalid_request)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return Guard(app, auth, max_body=config.max_body)


async def _on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = "; ".join(
        f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', '')}"
        for error in exc.errors()[:5]
    )
    return problem_response(400, http_problem(400, f"invalid request: {details}"))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    return problem_response(
        exc.status_code, http_problem(exc.status_code, str(exc.detail)), **headers
    )


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with this API's error model: problem+json, 400 not 422."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version="3.1.0",
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = _problem_schema()
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    document["security"] = [{"bearer": []}]
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, why in _COMMON_ERRORS.items():
                responses.setdefault(status, {"description": why})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {"application/problem+json": {"schema": _PROBLEM_REF}}
    app.openapi_schema = document
    return document


def _problem_schema() -> dict[str, Any]:
    from docksnap.http.schemas import Problem

    return Problem.model_json_schema()


_COMMON_ERRORS = {
    "400": "Invalid request (type urn:docksnap:problem:usage or bad-request)",
    "401": "Missing or wrong bearer token",
    "403": "Cookie session without a valid CSRF token",
    "404": "No such snapshot, directory or route",
    "409": "The container's state prevents the operation",
    "413": "Request body or snapshot over its size limit",
    "422": "The Docker engine refused (e.g. no such image)",
    "500": "Stored data failed verification, or a bug",
    "503": "The Docker engine or the store is unavailable",
}

_DESCRIPTION = """\
docksnap's HTTP API: start containers with snapshots restored, snapshot their
directories, and manage the store. Every request needs `Authorization: Bearer
<token>`. Errors are `application/problem+json` documents whose `type`
(`urn:docksnap:problem:<kind>`) and `exit_code` match the CLI's exit codes
(docs/CLI.md). Long operations (start, snapshot, verify, gc) stream progress as
Server-Sent Events when asked with `Accept: text/event-stream`; closing that
connection cancels the operation.
"""

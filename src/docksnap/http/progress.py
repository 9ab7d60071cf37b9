"""Progress of long operations, as Server-Sent Events on the request that started them.

A caller that sends ``Accept: text/event-stream`` to an operation endpoint
(snapshot, start, import, verify, gc) gets ``200`` and a stream of events
instead of one JSON document at the end:

- ``progress``: ``{"operation", "stage", "snapshot_id", "done", "total",
  "elapsed"}`` at most four times a second and at least once a second
  (``stage`` is the library operation moving bytes, e.g. ``restore`` during a
  start; ``done``/``total`` are its bytes, ``total`` null when unknown; the
  heartbeat keeps proxies from closing an idle connection);
- then exactly one ``result`` (the document the plain request returns) or
  ``problem`` (an RFC 9457 document, with the status it would have had).

Why events on the same request, not a job resource to poll: nothing to store,
expire or authorize separately, and the operation's lifetime is the
connection's: closing it cancels the operation, which rolls back as Ctrl-C does
in the CLI (a snapshot being written never becomes visible).

The import streams its events while it is still reading the request body (see
:class:`_BodyReadingEventStream`): a client that goes away mid-upload ends the
body early, and the import stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from docksnap.http.problems import problem_for
from docksnap.service.progress import Phase, ProgressEvent

EVENT_STREAM = "text/event-stream"
_MIN_INTERVAL = 0.25
_HEARTBEAT = 1.0


@dataclass(slots=True)
class Reporter:
    """The progress of one request's operation, fed by the library's progress hook.

    ``stage`` is the library operation moving bytes right now (a start restores
    each snapshot in turn: ``restore``); ``done``/``total`` are its bytes.
    """

    operation: str
    stage: str | None = None
    snapshot_id: str | None = None
    done: int = 0
    total: int | None = None
    started: float = 0.0

    def on_progress(self, event: ProgressEvent) -> None:
        if event.phase is Phase.STARTED or event.snapshot_id != self.snapshot_id:
            self.done, self.total = 0, None
        self.stage = str(event.operation)
        self.snapshot_id = event.snapshot_id
        self.done = event.bytes_done
        self.total = event.bytes_total

    def event(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "stage": self.stage,
            "snapshot_id": self.snapshot_id,
            "done": self.done,
            "total": self.total,
            "elapsed": round(time.monotonic() - self.started, 3),
        }


# The reporter of the operation running in this task: library progress hooks
# are per client, so events are routed to the request that caused them.
CURRENT: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "docksnap_http_progress", default=None
)


def route_progress(event: ProgressEvent) -> None:
    """The client's progress hook: hand the event to the request that caused it.

    The library calls hooks from the task that moves the stream, which inherited
    the request's context, so the context variable finds the right reporter;
    events of operations no evented request waits for are dropped.
    """
    reporter = CURRENT.get()
    if reporter is not None:
        reporter.on_progress(event)


def wants_events(request: Request) -> bool:
    return EVENT_STREAM in request.headers.get("accept", "")


async def run_operation(
    request: Request,
    operation: str,
    work: Callable[[], Awaitable[Any]],
    *,
    status_code: int = 200,
    reads_body: bool = False,
) -> Response:
    """Run ``work`` (which returns a JSON-able document) as a plain or an evented request.

    ``reads_body``: ``work`` reads the request body itself (the streamed import),
    so the evented answer must leave ``receive`` to it.
    """
    reporter = Reporter(operation, started=time.monotonic())
    token = CURRENT.set(reporter)
    try:
        if not wants_events(request):
            return JSONResponse(await work(), status_code=status_code)
        # The task copies the context now, reporter included.
        task = asyncio.ensure_future(work())
    finally:
        CURRENT.reset(token)
    response_class = _BodyReadingEventStream if reads_body else StreamingResponse
    return response_class(
        _events(task, reporter),
        media_type=EVENT_STREAM,
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


class _BodyReadingEventStream(StreamingResponse):
    """An event stream for an operation that is still reading the request body.

    Starlette's StreamingResponse, under an ASGI server older than spec 2.4
    (uvicorn), listens for the client's disconnect by calling ``receive`` itself,
    which would take pieces of the request body from under the operation. Here
    only the operation reads: a client that goes away mid-upload makes its read
    raise ``ClientDisconnect``, so the operation fails and stores nothing. (One
    that goes away after the whole body arrived is noticed by no one; the
    operation completes, as a plain request's would.)
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.stream_response(send)
        if self.background is not None:
            await self.background()


async def _events(task: asyncio.Future[Any], reporter: Reporter) -> AsyncIterator[str]:
    try:
        last_sent: dict[str, Any] | None = None
        last_time = 0.0
        while not task.done():
            await asyncio.wait({task}, timeout=_MIN_INTERVAL)
            now = time.monotonic()
            state = reporter.event()
            fresh = last_sent is None or state["done"] != last_sent["done"]
            if (fresh and now - last_time >= _MIN_INTERVAL) or now - last_time >= _HEARTBEAT:
                yield _format("progress", state)
                last_sent, last_time = state, now
        final = reporter.event()
        if last_sent is None or final["done"] != last_sent["done"]:
            yield _format("progress", final)
        try:
            yield _format("result", task.result())
        except Exception as exc:
            _, document = problem_for(exc)
            yield _format("problem", document)
    finally:
        # The client went away (or the server is stopping): cancel the operation,
        # and wait for its rollback before the response is considered finished.
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _format(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

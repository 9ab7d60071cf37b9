"""Progress of the streams docksnap moves: one observer for every operation.

``Client(progress=hook)`` installs a hook that :class:`~docksnap.Container` and
:class:`~docksnap.Catalogue` call around every stream they move (snapshot,
restore, export, import, copy) and every whole-store pass (verify, gc). The hook
receives plain frozen :class:`ProgressEvent` values: a command line draws bars
from them, an HTTP server can forward them as Server-Sent Events.

The contract for a hook:

* It is called on the event loop's thread, between two pieces of a stream, so
  it may use loop-bound objects (``asyncio.Queue.put_nowait``) but must return
  quickly and never block: the stream waits while it runs.
* Each operation sends ``STARTED``, then ``ADVANCED`` at most every
  :data:`MIN_INTERVAL` seconds while bytes move, then exactly one ``FINISHED``
  or ``FAILED`` (also when the operation is cancelled). ``task`` tells the events
  of concurrent operations apart.
* An exception raised by the hook is logged and swallowed: an observer cannot
  break a snapshot.

With no hook installed nothing is wrapped and no event is built.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.1  # seconds between two ADVANCED events of one operation


class Operation(enum.StrEnum):
    """What moves: the operations that report progress."""

    SNAPSHOT = "snapshot"
    RESTORE = "restore"
    EXPORT = "export"
    IMPORT = "import"
    COPY = "copy"
    VERIFY = "verify"
    GC = "gc"


class Phase(enum.StrEnum):
    STARTED = "started"
    ADVANCED = "advanced"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of one operation.

    ``snapshot_id`` is ``None`` for passes over the whole store (verify or gc
    without an id). ``bytes_done`` counts the bytes moved so far (for verify and
    gc, known only when they finish: bytes checked, bytes reclaimed);
    ``bytes_total`` is the stream's length when known in advance, else ``None``.
    """

    task: int
    operation: Operation
    phase: Phase
    snapshot_id: str | None
    bytes_done: int = 0
    bytes_total: int | None = None


ProgressHook = Callable[[ProgressEvent], None]

_tasks = itertools.count(1)


class Tracker:
    """The events of one operation; made by :func:`track`."""

    __slots__ = ("_hook", "_last", "done", "operation", "snapshot_id", "task", "total")

    def __init__(
        self,
        hook: ProgressHook | None,
        operation: Operation,
        snapshot_id: str | None,
        total: int | None,
    ) -> None:
        self._hook = hook
        self.task = next(_tasks) if hook is not None else 0
        self.operation = operation
        self.snapshot_id = snapshot_id
        self.total = total
        self.done = 0
        self._last = 0.0

    def stream(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` passed through unchanged, counted. Without a hook: ``chunks`` itself."""
        if self._hook is None:
            return aiter(chunks)
        return self._counted(chunks)

    async def _counted(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for piece in chunks:
            self.advance(len(piece))
            yield piece

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes; report them if :data:`MIN_INTERVAL` has passed."""
        self.done += n
        if self._hook is not None:
            now = time.monotonic()
            if now - self._last >= MIN_INTERVAL:
                self._last = now
                self.emit(Phase.ADVANCED)

    def emit(self, phase: Phase) -> None:
        if self._hook is None:
            return
        event = ProgressEvent(
            self.task, self.operation, phase, self.snapshot_id, self.done, self.total
        )
        try:
            self._hook(event)
        except Exception:
            log.exception("progress hook failed on %s", event)


@contextmanager
def track(
    hook: ProgressHook | None,
    operation: Operation,
    snapshot_id: str | None,
    total: int | None = None,
) -> Iterator[Tracker]:
    """Report ``STARTED`` now, then ``FINISHED`` or ``FAILED`` when the body ends."""
    tracker = Tracker(hook, operation, snapshot_id, total)
    tracker.emit(Phase.STARTED)
    try:
        yield tracker
    except BaseException:
        tracker.emit(Phase.FAILED)
        raise
    tracker.emit(Phase.FINISHED)

"""Progress on stderr: a byte bar for every snapshot stream that moves.

A :class:`Meter` is the client's progress hook (``Client(progress=meter)``): each
stream the library moves (snapshot, restore, export, import, copy) becomes a bar
with real bytes, rate and elapsed time; passes that report no bytes while they
run (verify, gc) become a spinner. Steps of the CLI's own that move no stream
(starting or stopping a container) use :meth:`Meter.activity`.

Everything here is inert unless stderr is a terminal and ``--quiet`` is off, so
a pipe never receives an escape code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

from docksnap.cli import render
from docksnap.service.progress import Operation, Phase, ProgressEvent

_VERBS = {
    Operation.SNAPSHOT: "saving",
    Operation.RESTORE: "restoring",
    Operation.EXPORT: "exporting",
    Operation.IMPORT: "importing",
    Operation.COPY: "copying",
    Operation.VERIFY: "verifying",
    Operation.GC: "collecting garbage",
}
# Passes whose bytes are known only at the end: a spinner, not a bar.
_PASSES = frozenset({Operation.VERIFY, Operation.GC, Operation.COPY})


class _BytesColumn(ProgressColumn):
    def __init__(self) -> None:
        # Never wrapped: on a narrow terminal the bar shrinks instead.
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        if not task.fields.get("stream"):
            return Text("")
        done = render.size(task.completed)
        if task.total is None:
            return Text(done)
        about = "~" if task.fields.get("estimated") else ""
        return Text(f"{done} / {about}{render.size(task.total)}")


class _TimeLeftColumn(ProgressColumn):
    """``eta 0:00:12`` while a stream of known (or estimated) size moves; else nothing."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        left = task.time_remaining
        if not task.fields.get("stream") or task.total is None or task.finished or left is None:
            return Text("")
        minutes, seconds = divmod(int(left), 60)
        return Text(f"eta {minutes // 60}:{minutes % 60:02d}:{seconds:02d}")


class _RateColumn(ProgressColumn):
    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        # While running, rich's recent-window speed; once done, the average.
        speed = task.completed / task.elapsed if task.finished and task.elapsed else task.speed
        if not task.fields.get("stream") or speed is None:
            return Text("")
        return Text(f"{render.size(speed)}/s")


class Meter:
    """One progress display per command, started at its first task."""

    def __init__(self, console: Console | None) -> None:
        self._console = console
        self._progress: Progress | None = None
        self._tasks: dict[int, tuple[contextlib.ExitStack, Callable[[int], None]]] = {}
        self._names: dict[Operation, str] = {}
        self._expected: dict[Operation, int] = {}

    def expect(self, operation: Operation, total: int) -> None:
        """An estimate of the size of this command's next ``operation`` stream.

        Its bar then shows a total (marked ``~``) and a time left; a stream
        with neither a size nor an estimate stays indeterminate.
        """
        self._expected[operation] = total

    @classmethod
    def for_stderr(cls, *, quiet: bool) -> Meter:
        console = Console(stderr=True)
        # is_interactive: a terminal that can redraw a line (not TERM=dumb).
        return cls(console if console.is_interactive and not quiet else None)

    @property
    def enabled(self) -> bool:
        """Whether anything is drawn (a terminal, not ``--quiet``)."""
        return self._console is not None

    def close(self) -> None:
        for stack, _ in self._tasks.values():
            stack.close()
        self._tasks.clear()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def name(self, operation: Operation, what: str) -> None:
        """Show ``what`` instead of the snapshot id on this command's ``operation`` bars
        (e.g. the file being imported, which the library does not know)."""
        self._names[operation] = what

    def __call__(self, event: ProgressEvent) -> None:
        """The client's progress hook: one bar (or spinner) per operation."""
        if event.phase is Phase.STARTED:
            stack = contextlib.ExitStack()
            stream = event.operation not in _PASSES
            total, estimated = event.bytes_total, False
            if total is None and event.operation in self._expected:
                total, estimated = self._expected.pop(event.operation), True
            advance = stack.enter_context(
                self._task(self._describe(event), total, stream=stream, estimated=estimated)
            )
            self._tasks[event.task] = (stack, advance)
            return
        entry = self._tasks.get(event.task)
        if entry is None:
            return
        stack, advance = entry
        advance(event.bytes_done)
        if event.phase in (Phase.FINISHED, Phase.FAILED):
            del self._tasks[event.task]
            stack.close()

    def _describe(self, event: ProgressEvent) -> str:
        verb = _VERBS[event.operation]
        what = self._names.get(event.operation) or (event.snapshot_id or "")[:8]
        return f"{verb} {what}" if what else verb

    @contextlib.contextmanager
    def activity(self, description: str) -> Iterator[None]:
        """A spinner with elapsed time for a step that moves no stream of its own."""
        with self._task(description, None, stream=False):
            yield

    @contextlib.contextmanager
    def _task(
        self, description: str, total: int | None, *, stream: bool, estimated: bool = False
    ) -> Iterator[Callable[[int], None]]:
        progress = self._start()
        if progress is None:
            yield lambda n: None
            return
        task = progress.add_task(description, total=total, stream=stream, estimated=estimated)
        done = 0

        def advance(upto: int) -> None:
            """Move the bar to ``upto`` bytes (a running total, as events carry)."""
            nonlocal done
            progress.advance(task, upto - done)
            done = upto

        try:
            yield advance
        finally:
            # A stream of unknown length ends full; the elapsed time stops.
            progress.update(
                task,
                total=total if total is not None else max(done, 1),
                completed=done if stream else 1,
            )
            progress.stop_task(task)

    def _start(self) -> Progress | None:
        if self._console is None:
            return None
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                _BytesColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                _TimeLeftColumn(),
                console=self._console,
                transient=True,
                # Output is printed after the display stops; nothing to redirect.
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
        return self._progress

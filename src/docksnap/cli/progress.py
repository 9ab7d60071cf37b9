"""Progress on stderr: a byte bar for every snapshot stream that moves.

The library has no progress callback, and needs none: the CLI hands the client's
containers a :class:`MeteredStore`, which passes every tar stream through
unchanged and counts it, so snapshot and restore show real bytes, rate and
elapsed time; export and import count the streams they read and write. Steps
that move no stream (verify, gc) show a spinner.

Everything here is inert unless stderr is a terminal and ``--quiet`` is off, so
a pipe never receives an escape code.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

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
from docksnap.model import DirectorySnapshot
from docksnap.store.base import (
    CopyReport,
    GcReport,
    SnapshotInfo,
    SnapshotSource,
    SnapshotStore,
    StoreStats,
    TarReader,
    VerifyReport,
)
from docksnap.tarstream import TarEntry


class _BytesColumn(ProgressColumn):
    def __init__(self) -> None:
        # Never wrapped: on a narrow terminal the bar shrinks instead.
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        if not task.fields.get("stream"):
            return Text("")
        done = render.size(task.completed)
        return Text(done if task.total is None else f"{done} / {render.size(task.total)}")


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

    @classmethod
    def for_stderr(cls, *, quiet: bool) -> Meter:
        console = Console(stderr=True)
        # is_interactive: a terminal that can redraw a line (not TERM=dumb).
        return cls(console if console.is_interactive and not quiet else None)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    async def stream(
        self, chunks: AsyncIterator[bytes], description: str, total: int | None = None
    ) -> AsyncIterator[bytes]:
        """Pass ``chunks`` through unchanged, counting them on a bar."""
        with self._task(description, total, stream=True) as advance:
            async for piece in chunks:
                advance(len(piece))
                yield piece

    @contextlib.contextmanager
    def activity(self, description: str) -> Iterator[None]:
        """A spinner with elapsed time for a step that moves no stream of its own."""
        with self._task(description, None, stream=False):
            yield

    @contextlib.contextmanager
    def _task(
        self, description: str, total: int | None, *, stream: bool
    ) -> Iterator[Callable[[int], None]]:
        progress = self._start()
        if progress is None:
            yield lambda n: None
            return
        task = progress.add_task(description, total=total, stream=stream)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress.advance(task, n)

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
                console=self._console,
                transient=True,
                # Output is printed after the display stops; nothing to redirect.
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
        return self._progress


class _MeteredReader:
    def __init__(self, inner: TarReader, meter: Meter, description: str) -> None:
        self._inner = inner
        self._meter = meter
        self._description = description

    @property
    def size(self) -> int | None:
        return self._inner.size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._meter.stream(aiter(self._inner), self._description, self._inner.size)


class MeteredStore:
    """A :class:`SnapshotStore` that counts the streams it saves and reads on a meter."""

    def __init__(self, inner: SnapshotStore, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    @property
    def url(self) -> str:
        return self._inner.url

    async def save(
        self,
        snapshot: DirectorySnapshot,
        tar: AsyncIterator[bytes],
        *,
        source: SnapshotSource,
        ttl: float | None = None,
    ) -> SnapshotInfo:
        counted = self._meter.stream(tar, f"saving {snapshot.dir}")
        return await self._inner.save(snapshot, counted, source=source, ttl=ttl)

    @contextlib.asynccontextmanager
    async def open(self, snapshot_id: str, *, image: str | None = None) -> AsyncIterator[TarReader]:
        async with self._inner.open(snapshot_id, image=image) as reader:
            yield _MeteredReader(reader, self._meter, f"reading {snapshot_id[:8]}")

    async def index(self, snapshot_id: str) -> list[TarEntry]:
        return await self._inner.index(snapshot_id)

    async def get(self, snapshot_id: str) -> SnapshotInfo:
        return await self._inner.get(snapshot_id)

    async def list(self) -> list[SnapshotInfo]:
        return await self._inner.list()

    async def delete(self, snapshot_id: str) -> None:
        await self._inner.delete(snapshot_id)

    async def touch(self, snapshot_id: str, when: float) -> None:
        await self._inner.touch(snapshot_id, when)

    async def verify(
        self, snapshot_id: str | None = None, *, read_data: bool = True
    ) -> VerifyReport:
        return await self._inner.verify(snapshot_id, read_data=read_data)

    async def gc(self, *, grace: float) -> GcReport:
        return await self._inner.gc(grace=grace)

    async def stats(self) -> StoreStats:
        return await self._inner.stats()

    async def copy_from(self, source: SnapshotStore, snapshot_id: str) -> CopyReport:
        return await self._inner.copy_from(source, snapshot_id)

    async def close(self) -> None:
        await self._inner.close()

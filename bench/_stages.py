"""Where a docksnap operation spends its time: stage timers plus pyinstrument.

pyinstrument samples only the thread that started it (the event loop), while the
chunked store hashes, compresses and writes on worker threads. So, for ``--profile``
runs only, the worker also wraps the functions that make up each pipeline stage:

* functions that run on threads are timed *exclusively* (a wrapped callee's time is
  not counted again in its wrapped caller) and summed over all threads, in wall
  and thread-CPU seconds; with 2 cores, a stage whose CPU seconds approach the
  operation's wall time x 2 is the bottleneck;
* coroutines (Docker API calls, waits on the pipeline) are timed inclusively on the
  event loop: they overlap each other and the thread stages.

Nothing in ``src/`` is edited: the wrappers are installed on the classes and modules
at run time, in the profiled worker process only.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Stat:
    calls: int = 0
    wall: float = 0.0
    cpu: float = 0.0


@dataclass
class StageTimer:
    """Accumulates time per stage label; thread-safe."""

    stats: dict[str, Stat] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    def add(self, label: str, kind: str, wall: float, cpu: float = 0.0) -> None:
        with self._lock:
            stat = self.stats.setdefault(label, Stat())
            self.kinds[label] = kind
            stat.calls += 1
            stat.wall += wall
            stat.cpu += cpu

    def sync(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        """Exclusive timing of a function that runs on any thread."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack: list[list[float]] = self._local.__dict__.setdefault("stack", [])
            frame = [0.0, 0.0]  # wall and cpu of wrapped callees
            stack.append(frame)
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
                stack.pop()
                if stack:
                    stack[-1][0] += wall
                    stack[-1][1] += cpu
                self.add(label, "thread", wall - frame[0], cpu - frame[1])

        return wrapper

    def coro(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        """Inclusive wall time of a coroutine function."""

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(label, "loop", time.perf_counter() - t0)

        return wrapper

    async def waits(self, source: Any, label: str) -> AsyncIterator[Any]:
        """Pass an async iterable through, timing each wait for its next item."""
        iterator = aiter(source)
        while True:
            t0 = time.perf_counter()
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                self.add(label, "loop", time.perf_counter() - t0)
                return
            self.add(label, "loop", time.perf_counter() - t0)
            yield item


MISSING: list[str] = []  # stages whose function no longer exists in docksnap


def _patch(owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
    original = getattr(owner, name, None)
    if original is None:  # docksnap changed under the bench: time what is left
        MISSING.append(f"{getattr(owner, '__name__', owner)}.{name}")
        return
    setattr(owner, name, wrap(original))


def install(timer: StageTimer) -> None:
    """Wrap the stages of docksnap's snapshot and restore paths (see module doc)."""
    from docksnap.docker.client import ArchiveStream, DockerClient
    from docksnap.store.chunked import reader, store, writer
    from docksnap.store.chunked.cutter import StreamCutter
    from docksnap.store.chunked.packs import PackBuilder
    from docksnap.store.objects.local import LocalObjectStore
    from docksnap.tarstream import TarIndexer

    def sync(owner: Any, name: str, label: str) -> None:
        _patch(owner, name, lambda fn: timer.sync(fn, label))

    def coro(owner: Any, name: str, label: str) -> None:
        _patch(owner, name, lambda fn: timer.coro(fn, label))

    # save pipeline: cutter thread, cpu pool, io pool
    sync(writer.StreamWriter, "_cut_stream", "cutter: stream BLAKE3 + loop")
    sync(writer.StreamWriter, "_take_segment", "cutter: wait for a free segment (cpu full)")
    sync(StreamCutter, "feed", "cutter: copy into 4 MiB segment")
    sync(StreamCutter, "_cut", "cutter: FastCDC cut points")
    sync(TarIndexer, "feed", "cutter: tar index")
    sync(writer.StreamWriter, "_store_segment", "cpu: segment loop")
    sync(writer, "hash_hex", "cpu: BLAKE3 per chunk")
    sync(writer, "encode_chunk", "cpu: zstd compress")
    sync(writer.StreamWriter, "_store_if_absent", "cpu: wait for a put slot (io full)")
    sync(writer.StreamWriter, "_put", "io: put bookkeeping")
    # store format 2: chunks go into packs (one put per pack)
    sync(writer.StreamWriter, "_pack_if_absent", "cpu: index lookup + add to pack")
    sync(PackBuilder, "_seal_locked", "cpu: pack seal (join, table)")
    sync(writer.StreamWriter, "_submit_pack", "cpu: wait for a pack slot (io full)")
    sync(writer.StreamWriter, "_put_pack", "io: pack put bookkeeping")
    if hasattr(writer, "queue"):
        inbox = _timed_queue_module(timer, "cutter: wait for input (stream starved)")
        writer.queue = inbox
    # restore: io pool
    sync(reader.ChunkFetcher, "fetch_group", "io: join chunks into a piece")
    sync(reader.PackFetcher, "_fetch_many", "io: ranged pack reads + join")
    sync(reader, "decode_chunk", "io: zstd decompress")
    sync(reader, "hash_hex", "io: BLAKE3 verify")
    # the local object store (either direction)
    sync(LocalObjectStore, "exists", "store: exists (stat)")
    sync(LocalObjectStore, "_write_temp", "store: write + fsync chunk file")
    sync(LocalObjectStore, "_sync_dir", "store: fsync directory")
    sync(LocalObjectStore, "put_if_absent", "store: link + unlink")
    sync(LocalObjectStore, "put", "store: put (rest)")
    sync(LocalObjectStore, "get", "store: read object")
    sync(LocalObjectStore, "get_range", "store: ranged read (pack)")
    sync(LocalObjectStore, "list", "store: list")
    sync(store.ChunkedStore, "_commit", "store: commit (manifest)")
    sync(store.ChunkedStore, "_commit_v2", "store: commit v2 (pack indexes, manifest)")
    sync(store.ChunkedStore, "_write_manifest", "store: encode + write manifest")
    # event loop
    coro(writer.StreamWriter, "send", "loop: writer.send (waits = pipeline backpressure)")
    coro(writer.StreamWriter, "finish", "loop: writer.finish (drain after stream end)")
    for name in (
        "inspect_container",
        "pause_container",
        "unpause_container",
        "create_container",
        "start_container",
        "remove_container",
        "create_volume",
        "inspect_volume",
        "list_volumes",
        "remove_volume",
        "stat_path",
    ):
        coro(DockerClient, name, f"docker: {name}")
    _wrap_archives(timer, DockerClient, ArchiveStream)


def _timed_queue_module(timer: StageTimer, label: str) -> types.SimpleNamespace:
    """A stand-in for the ``queue`` module whose SimpleQueue times ``get`` (the inbox)."""
    timed_get = timer.sync(queue.SimpleQueue.get, label)

    class TimedQueue(queue.SimpleQueue):  # type: ignore[type-arg]
        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            return timed_get(self, block, timeout)

    return types.SimpleNamespace(SimpleQueue=TimedQueue, Empty=queue.Empty)


def _wrap_archives(timer: StageTimer, client: Any, stream: Any) -> None:
    get_archive, put_archive = client.get_archive, client.put_archive

    @asynccontextmanager
    async def timed_get(self: Any, container: str, path: str) -> AsyncIterator[Any]:
        t0 = time.perf_counter()
        try:
            async with get_archive(self, container, path) as archive:
                chunks = timer.waits(archive.chunks, "loop: GET wait for engine bytes")
                yield stream(chunks=chunks)
        finally:
            timer.add("docker: get_archive (whole stream)", "loop", time.perf_counter() - t0)

    async def timed_put(self: Any, container: str, path: str, tar: Any, **kw: Any) -> None:
        t0 = time.perf_counter()
        try:
            source = timer.waits(tar, "loop: PUT wait for store pieces")
            await put_archive(self, container, path, source, **kw)
        finally:
            timer.add("docker: put_archive (whole stream)", "loop", time.perf_counter() - t0)

    client.get_archive, client.put_archive = timed_get, timed_put


@dataclass
class OpProfile:
    """pyinstrument on the event loop plus the stage timers, for one operation."""

    timer: StageTimer
    profiler: Any

    @classmethod
    def start(cls) -> OpProfile:
        from pyinstrument import Profiler

        timer = StageTimer()
        install(timer)
        profiler = Profiler(interval=0.001, async_mode="enabled")
        profiler.start()
        return cls(timer, profiler)

    def finish(self, request: Any, seconds: float, cpu: float) -> None:
        self.profiler.stop()
        lines = [
            f"docksnap bench profile: {request.op} of {request.dir or request.container}",
            f"store {request.store}",
            f"wall {seconds:.3f} s, process CPU {cpu:.3f} s ({cpu / seconds:.2f} cores busy)",
            "",
            *render_stages(self.timer, seconds),
            *([f"(not timed, no longer in docksnap: {', '.join(MISSING)})"] if MISSING else []),
            "",
            "pyinstrument, event-loop thread only (time awaiting a thread shows as await):",
            self.profiler.output_text(unicode=False, color=False, short_mode=True),
        ]
        assert request.profile
        Path(request.profile).write_text("\n".join(lines))


def render_stages(timer: StageTimer, seconds: float) -> list[str]:
    rows = sorted(timer.stats.items(), key=lambda item: -item[1].wall)
    out = [
        "stages (thread: exclusive, summed over threads; loop: inclusive, overlapping)",
        f"  {'stage':<52} {'where':<6} {'calls':>7} {'wall s':>8} {'cpu s':>7} {'% of op':>7}",
    ]
    for label, stat in rows:
        if stat.wall < 0.0005:
            continue
        cpu = f"{stat.cpu:7.3f}" if timer.kinds[label] == "thread" else " " * 7
        out.append(
            f"  {label:<52} {timer.kinds[label]:<6} {stat.calls:>7} {stat.wall:8.3f} {cpu} "
            f"{100 * stat.wall / seconds:6.0f}%"
        )
    return out

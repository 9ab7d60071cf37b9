"""A blocking client: the async :class:`~docksnap.Client`'s methods, for plain scripts.

``docksnap.SyncClient`` runs an async client on an event loop of its own, in a
private daemon thread, and waits for each call there. So it works the same
everywhere: in a script with no event loop, and in a thread that already runs
one (a Jupyter cell, a pytest-asyncio test, an ASGI handler), where
``asyncio.run`` would fail with "event loop is already running". A call blocks
its caller's thread, including a running loop's, until it is done; use the
async client to overlap work.

Every method has the async one's contract (docstring, errors, rollback). If the
waiting thread is interrupted (Ctrl-C), the call is cancelled in the private
loop and its rollback runs to the end before the interrupt propagates.

    with docksnap.SyncClient() as client:
        box = client.container("agent-42")
        box.start("docksnap-test:latest", entrypoint=["sleep", "1d"])
        snap = box.snapshot_directory("/work", name="step-3")
        box.destroy()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from docksnap.model import DirectorySnapshot
from docksnap.service.catalogue import DEFAULT_GC_GRACE, Catalogue
from docksnap.service.client import DEFAULT_SIZE_LIMIT, Client
from docksnap.service.container import Container
from docksnap.service.orphans import OrphanReport
from docksnap.service.restore_cache import RestoreCache
from docksnap.store.base import SnapshotInfo, SnapshotStore, TarReader

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _LoopThread:
    """An event loop running forever in a daemon thread, and a way to wait on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="docksnap-sync", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the private loop; block until it is done; return or raise its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a SyncClient cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt): cancel the call and let its
            # rollback finish, so nothing half-made outlives the interrupt.
            if not future.done():
                future.cancel()
                with contextlib.suppress(BaseException):
                    concurrent.futures.wait([future])
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _blocking(
    method: Callable[Concatenate[Any, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[_Proxy, _P], _T]:
    """The async ``method`` as a blocking method of a proxy (same signature and docstring)."""

    def call(self: _Proxy, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._loop.call(method(self._inner, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


class _Proxy:
    def __init__(self, loop: _LoopThread, inner: Any) -> None:
        self._loop = loop
        self._inner = inner


class SyncContainer(_Proxy):
    """A blocking :class:`~docksnap.Container` (from :meth:`SyncClient.container`)."""

    _inner: Container

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def running(self) -> bool:
        """The state last seen, as :attr:`Container.running`."""
        return self._inner.running

    def __repr__(self) -> str:
        return f"<SyncContainer {self.name!r} running={self.running}>"

    refresh = _blocking(Container.refresh)
    describe = _blocking(Container.describe)
    start = _blocking(Container.start)
    monitor = _blocking(Container.monitor)
    signal = _blocking(Container.signal)
    destroy = _blocking(Container.destroy)
    snapshot_directory = _blocking(Container.snapshot_directory)
    snapshot_container = _blocking(Container.snapshot_container)
    restore = _blocking(Container.restore)


class SyncReader:
    """A snapshot's tar stream, read piece by piece in the caller's thread."""

    def __init__(self, loop: _LoopThread, reader: TarReader) -> None:
        self._loop = loop
        self._reader = reader

    @property
    def size(self) -> int | None:
        return self._reader.size

    def __iter__(self) -> Iterator[bytes]:
        pieces = aiter(self._reader)
        while (piece := self._loop.call(_next_or_none(pieces))) is not None:
            yield piece


class SyncCatalogue(_Proxy):
    """A blocking :class:`~docksnap.Catalogue` (``SyncClient.snapshots``)."""

    _inner: Catalogue

    def list(
        self, *, name: str | None = None, dir: str | None = None, container: str | None = None
    ) -> list[SnapshotInfo]:
        """Snapshots matching every given filter, newest first (a list, not an iterator)."""

        async def collect() -> list[SnapshotInfo]:
            return [i async for i in self._inner.list(name=name, dir=dir, container=container)]

        return self._loop.call(collect())

    @contextlib.contextmanager
    def export(self, snapshot_id: str) -> Iterator[SyncReader]:
        """The snapshot as a plain tar stream, verified as it is read: iterate for bytes."""
        manager = self._inner.export(snapshot_id)
        reader = self._loop.call(manager.__aenter__())
        try:
            yield SyncReader(self._loop, reader)
        except BaseException as exc:
            if not self._loop.call(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._loop.call(manager.__aexit__(None, None, None))

    def import_tar(
        self,
        tar: Iterable[bytes],
        *,
        dir: str,
        name: str | None = None,
        image: str = "",
        ttl: float | None = None,
    ) -> DirectorySnapshot:
        """Store a tar (any iterable of bytes, e.g. ``iter(lambda: f.read(1 << 20), b"")``).

        The iterable is consumed in the client's private thread.
        """
        return self._loop.call(
            self._inner.import_tar(_async_pieces(tar), dir=dir, name=name, image=image, ttl=ttl)
        )

    get = _blocking(Catalogue.get)
    resolve = _blocking(Catalogue.resolve)
    delete = _blocking(Catalogue.delete)
    verify = _blocking(Catalogue.verify)
    gc = _blocking(Catalogue.gc)
    stats = _blocking(Catalogue.stats)
    expire = _blocking(Catalogue.expire)
    prune = _blocking(Catalogue.prune)
    files = _blocking(Catalogue.files)
    diff = _blocking(Catalogue.diff)
    copy = _blocking(Catalogue.copy)
    report = _blocking(Catalogue.report)
    kind = _blocking(Catalogue.kind)
    merge = _blocking(Catalogue.merge)


class SyncCache(_Proxy):
    """A blocking :class:`~docksnap.RestoreCache` (``SyncClient.cache``)."""

    _inner: RestoreCache

    @property
    def size_limit(self) -> int:
        return self._inner.size_limit

    list = _blocking(RestoreCache.list)
    remove = _blocking(RestoreCache.remove)
    prune = _blocking(RestoreCache.prune)
    reap = _blocking(RestoreCache.reap)
    evict = _blocking(RestoreCache.evict)
    view = _blocking(RestoreCache.view)

    def disable(self, reason: str) -> None:
        """As :meth:`RestoreCache.disable` (no engine call)."""
        self._inner.disable(reason)

    def unusable_reason(self) -> str | None:
        """As :meth:`RestoreCache.unusable_reason` (no engine call)."""
        return self._inner.unusable_reason()


class SyncClient:
    """docksnap's client, blocking. Use as ``with docksnap.SyncClient() as client: ...``.

    Takes :class:`~docksnap.Client`'s arguments. ``container(name)`` returns a
    :class:`SyncContainer`, ``snapshots`` is a :class:`SyncCatalogue`, ``cache``
    a :class:`SyncCache`; their
    methods are the async ones, returning results instead of awaitables (and
    lists instead of async iterators). Safe to call from several threads: their
    calls share the private loop, and changes to one container still take turns.
    """

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        store: str | SnapshotStore | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        labels: Mapping[str, str] | None = None,
        restore_cache: str | None = None,
        cache_size: int | None = None,
    ) -> None:
        self._loop = _LoopThread()

        async def make() -> Client:
            # Built on the private loop: its locks and connections belong to that loop.
            return Client(
                docker_host=docker_host,
                store=store,
                size_limit=size_limit,
                labels=labels,
                restore_cache=restore_cache,
                cache_size=cache_size,
            )

        try:
            self._client = self._loop.call(make())
        except BaseException:
            self._loop.stop()
            raise
        self.snapshots = SyncCatalogue(self._loop, self._client.snapshots)
        self.cache = SyncCache(self._loop, self._client.cache)
        self._closed = False

    @property
    def client(self) -> Client:
        """The async client underneath (its coroutines run only on this client's loop)."""
        return self._client

    def container(self, name: str) -> SyncContainer:
        """A handle on the container called ``name``, which may or may not exist yet."""
        return SyncContainer(self._loop, self._client.container(name))

    def reap_orphans(self, *, grace: float = DEFAULT_GC_GRACE) -> OrphanReport:
        """As :meth:`Client.reap_orphans`: remove what a dead docksnap left behind."""
        return self._loop.call(self._client.reap_orphans(grace=grace))

    def close(self) -> None:
        """Close the store and the engine connection, then stop the private loop; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.call(self._client.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _next_or_none(pieces: AsyncIterator[bytes]) -> bytes | None:
    # StopAsyncIteration must not cross the thread boundary as an exception.
    return await anext(pieces, None)


async def _async_pieces(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece

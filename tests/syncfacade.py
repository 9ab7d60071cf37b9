"""The async client's interface over a ``docksnap.SyncClient``, for the shared contract tests.

Each ``await`` here calls the blocking method directly, in the test's own event
loop thread: exactly the situation of a Jupyter cell, where a loop is already
running and ``asyncio.run`` would fail. The contract tests written against
``docksnap.Client`` then run unchanged against the synchronous client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import docksnap
from docksnap.docker import DockerClient
from docksnap.sync import SyncCatalogue, SyncContainer


def _awaitable(method: Callable[..., Any]) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)  # blocks this loop's thread, as in Jupyter

    return call


class _Facade:
    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        return _awaitable(attribute) if callable(attribute) else attribute


class ContainerFacade(_Facade):
    _target: SyncContainer

    @property
    def name(self) -> str:
        return self._target.name

    @property
    def running(self) -> bool:
        return self._target.running


class CatalogueFacade(_Facade):
    _target: SyncCatalogue

    async def list(self, **filters: Any) -> AsyncIterator[docksnap.SnapshotInfo]:
        for info in self._target.list(**filters):
            yield info

    @contextlib.asynccontextmanager
    async def export(self, snapshot_id: str) -> AsyncIterator[Any]:
        with self._target.export(snapshot_id) as reader:
            yield _AsyncReader(reader)

    async def import_tar(self, tar: AsyncIterator[bytes], **kwargs: Any) -> Any:
        pieces = [piece async for piece in tar]  # test data: small
        return self._target.import_tar(pieces, **kwargs)


class _AsyncReader:
    def __init__(self, reader: Any) -> None:
        self.size = reader.size
        self._reader = reader

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._reader:
            yield piece


class ClientFacade:
    """Looks like ``docksnap.Client`` to the contract tests; drives a ``SyncClient``."""

    def __init__(self, sync: docksnap.SyncClient, labels: Mapping[str, str]) -> None:
        self.sync = sync
        self.snapshots = CatalogueFacade(sync.snapshots)
        self.extra_labels = dict(labels)
        # The tests' own engine calls (read_file, inspect) need a client on their loop.
        self.docker = DockerClient()

    def container(self, name: str) -> ContainerFacade:
        return ContainerFacade(self.sync.container(name))

    async def close(self) -> None:
        try:
            self.sync.close()
        finally:
            await self.docker.aclose()

"""The entry point: a Docker engine, a snapshot store, and the containers between them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType

from docksnap.docker import DockerClient
from docksnap.errors import InvalidArgumentError
from docksnap.labels import PREFIX
from docksnap.model import is_int
from docksnap.service.catalogue import Catalogue
from docksnap.service.container import Container
from docksnap.store import SnapshotStore, default_store_url, open_store

DEFAULT_SIZE_LIMIT = 16 * 1024**3


class Client:
    """docksnap's client. Use as ``async with docksnap.Client() as client: ...``.

    ``docker_host`` defaults to ``DOCKER_HOST`` (else the local unix socket);
    ``store`` is a URL (default ``DOCKSNAP_STORE``, else the local store under
    ``$XDG_DATA_HOME/docksnap``) or a :class:`~docksnap.store.SnapshotStore`.
    ``labels`` are added to every container and volume this client creates.
    """

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        store: str | SnapshotStore | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if not is_int(size_limit) or size_limit <= 0:
            raise InvalidArgumentError(f"size_limit must be a positive integer, got {size_limit!r}")
        reserved = [key for key in labels or {} if key.startswith(PREFIX)]
        if reserved:
            raise InvalidArgumentError(
                f"labels under {PREFIX} are reserved for docksnap: {reserved}"
            )
        self.docker = DockerClient(docker_host)
        self.size_limit = size_limit
        self.extra_labels = dict(labels or {})
        if store is None or isinstance(store, str):
            store = open_store(
                store or default_store_url(), docker=self.docker, extra_labels=self.extra_labels
            )
        self.store: SnapshotStore = store
        self.snapshots = Catalogue(self.store, open_store=self._open_store)
        self._turns: dict[str, asyncio.Lock] = {}

    def _open_store(self, url: str) -> SnapshotStore:
        """Another store on this client's engine (for copies), with this client's labels."""
        return open_store(url, docker=self.docker, extra_labels=self.extra_labels)

    def container(self, name: str) -> Container:
        """A handle on the container called ``name``, which may or may not exist yet.

        Handles with the same name share one turn, so their changes never interleave.
        """
        if not isinstance(name, str) or not name or "/" in name:
            raise InvalidArgumentError(f"invalid container name {name!r}")
        return Container(self, name, self._turns.setdefault(name, asyncio.Lock()))

    async def close(self) -> None:
        """Close the store and the engine connection; idempotent."""
        try:
            await self.store.close()
        finally:
            await self.docker.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

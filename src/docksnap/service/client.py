"""The entry point: a Docker engine, a snapshot store, and the containers between them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from types import TracebackType

from docksnap.docker import DockerClient, HelperVolumes
from docksnap.errors import InvalidArgumentError
from docksnap.labels import PREFIX
from docksnap.service import options
from docksnap.service.catalogue import DEFAULT_GC_GRACE, Catalogue
from docksnap.service.container import Container, ContainerContext
from docksnap.service.orphans import OrphanReport, reap_orphans
from docksnap.service.progress import ProgressHook
from docksnap.service.restore_cache import (
    CACHE_SIZE_ENV,
    DEFAULT_CACHE_SIZE,
    RESTORE_CACHE_ENV,
    RestoreCache,
)
from docksnap.store import SnapshotStore, default_store_url, open_store

DEFAULT_SIZE_LIMIT = 16 * 1024**3


class Client:
    """docksnap's client. Use as ``async with docksnap.Client() as client: ...``.

    ``docker_host`` defaults to ``DOCKER_HOST`` (else the local unix socket);
    ``store`` is a URL (default ``DOCKSNAP_STORE``, else the local store under
    ``$XDG_DATA_HOME/docksnap``) or a :class:`~docksnap.store.SnapshotStore`.
    ``labels`` are added to every container and volume this client creates.
    ``progress`` is called with a :class:`~docksnap.ProgressEvent` around every
    stream the client moves (see :mod:`docksnap.service.progress` for the rules).
    ``helper_image`` is the image the ``docker-volume:`` store makes its helper
    containers from (default: each snapshot's source image); other stores ignore it.
    ``engine_timeout`` (seconds for any engine call to answer) and
    ``stall_timeout`` (seconds an archive stream may go without a byte) default
    to ``DOCKSNAP_ENGINE_TIMEOUT`` / ``DOCKSNAP_STALL_TIMEOUT``, else 120 s each;
    running out raises :class:`~docksnap.errors.DockerTimeoutError`.

    ``restore_cache`` (``"auto"`` or ``"off"``; default ``DOCKSNAP_RESTORE_CACHE``,
    else ``"auto"``) is what ``Container.start`` does by default: with ``"auto"``
    masking restores on an engine of this host go through the restore cache
    (:mod:`docksnap.service.restore_cache`; ``client.cache``), whose size limit is
    ``cache_size`` bytes (default ``DOCKSNAP_CACHE_SIZE``, e.g. ``20GiB``, else 10 GiB).
    """

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        store: str | SnapshotStore | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        labels: Mapping[str, str] | None = None,
        progress: ProgressHook | None = None,
        helper_image: str | None = None,
        engine_timeout: float | None = None,
        stall_timeout: float | None = None,
        restore_cache: str | None = None,
        cache_size: int | None = None,
    ) -> None:
        size_limit = options.size_limit(size_limit)
        if restore_cache is None:
            restore_cache = os.environ.get(RESTORE_CACHE_ENV) or "auto"
        restore_cache = options.restore_cache(restore_cache)
        if cache_size is None:
            text = os.environ.get(CACHE_SIZE_ENV)
            cache_limit = options.cache_size(text, source=CACHE_SIZE_ENV) if text else None
        else:
            cache_limit = options.cache_size(cache_size)
        extra_labels = options.labels(labels, PREFIX)
        if progress is not None and not callable(progress):
            raise InvalidArgumentError(f"progress must be callable, got {progress!r}")
        self._helper_image = options.helper_image(helper_image)
        self.docker = DockerClient(
            docker_host, call_timeout=engine_timeout, stall_timeout=stall_timeout
        )
        self.size_limit = size_limit
        self.extra_labels = extra_labels
        self.progress = progress
        if store is None or isinstance(store, str):
            store = self._open_store(store or default_store_url())
        self.store: SnapshotStore = store
        self.snapshots = Catalogue(self.store, open_store=self._open_store, progress=progress)
        self.cache = RestoreCache(
            self.docker,
            self.store,
            labels=self.extra_labels,
            size_limit=DEFAULT_CACHE_SIZE if cache_limit is None else cache_limit,
            progress=progress,
        )
        self._context = ContainerContext(
            engine=self.docker,
            store=self.store,
            labels=self.extra_labels,
            size_limit=self.size_limit,
            progress=progress,
            cache=self.cache,
            restore_cache=restore_cache,
        )
        self._turns: dict[str, asyncio.Lock] = {}

    def _open_store(self, url: str) -> SnapshotStore:
        """A store on this client's engine (also copy targets), with this client's labels."""
        return open_store(
            url,
            engine=HelperVolumes(self.docker),
            helper_image=self._helper_image,
            extra_labels=self.extra_labels,
        )

    def container(self, name: str) -> Container:
        """A handle on the container called ``name``, which may or may not exist yet.

        Handles with the same name share one turn, so their changes never interleave.
        """
        if not isinstance(name, str) or not name or "/" in name:
            raise InvalidArgumentError(f"invalid container name {name!r}")
        return Container(self._context, name, self._turns.setdefault(name, asyncio.Lock()))

    async def reap_orphans(self, *, grace: float = DEFAULT_GC_GRACE) -> OrphanReport:
        """Remove helper containers, restore volumes and half-filled restore cache
        entries a dead docksnap left behind.

        Only resources carrying this client's labels; see :mod:`docksnap.service.orphans`
        for what counts as an orphan (never what a live docksnap uses).
        """
        if grace < 0:
            raise InvalidArgumentError(f"grace must be >= 0 seconds, got {grace!r}")
        report = await reap_orphans(self.docker, grace=grace, labels=self.extra_labels)
        entries = await self.cache.reap(grace=grace)
        return OrphanReport(report.containers, report.volumes + tuple(entries))

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

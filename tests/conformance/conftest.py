"""The stores under test, one factory per backend: adding a backend is one entry.

``OBJECT_STORES`` maps a name to a context manager factory yielding an
:class:`~docksnap.store.objects.ObjectStore`; ``SNAPSHOT_STORES`` maps a name to an
async context manager factory yielding a :class:`~docksnap.store.base.SnapshotStore`.
Each factory gets the test's ``request`` (to pull in fixtures such as a Docker
engine or an S3 server) and a fresh ``tmp_path``. ``MARKS`` marks the entries that
need a service, so ``-m "not s3"`` deselects them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from pathlib import Path
from typing import Any

import pytest

from docksnap.docker import DockerClient, HelperVolumes
from docksnap.store.base import SnapshotStore
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects import ObjectStore
from docksnap.store.objects.local import LocalObjectStore
from docksnap.store.volume import VolumeStore
from tests.conftest import SESSION_LABELS, session_volume_snapshots
from tests.s3support import chunked_s3, s3_objects

ObjectStoreFactory = Callable[[pytest.FixtureRequest, Path], AbstractContextManager[ObjectStore]]
SnapshotStoreFactory = Callable[
    [pytest.FixtureRequest, Path], AbstractAsyncContextManager[SnapshotStore]
]


@contextmanager
def local_objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    store = LocalObjectStore(tmp_path / "objects")
    try:
        yield store
    finally:
        store.close()


@asynccontextmanager
async def chunked_local(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SnapshotStore]:
    store = ChunkedStore(LocalObjectStore(tmp_path / "store"))
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def volume(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SnapshotStore]:
    """The seed's store on the real engine; the snapshots a test made are deleted afterwards.

    Only this session's: the engine's volumes are shared with whatever else runs.
    """
    request.getfixturevalue("docker_engine")
    docker = DockerClient()
    store = VolumeStore(HelperVolumes(docker), extra_labels=SESSION_LABELS)
    try:
        yield store
    finally:
        for snapshot_id in await session_volume_snapshots(docker):
            await store.delete(snapshot_id)
        await docker.aclose()


OBJECT_STORES: dict[str, ObjectStoreFactory] = {
    "local": local_objects,
    "s3": s3_objects,
}

SNAPSHOT_STORES: dict[str, SnapshotStoreFactory] = {
    "chunked-local": chunked_local,
    "chunked-s3": chunked_s3,
    "volume": volume,
}

MARKS: dict[str, list[pytest.MarkDecorator]] = {
    "s3": [pytest.mark.s3],
    "chunked-s3": [pytest.mark.s3],
    "volume": [pytest.mark.docker],
}


def _params(names: Iterable[str]) -> list[Any]:
    return [pytest.param(name, marks=MARKS.get(name, []), id=name) for name in names]


@pytest.fixture(params=_params(OBJECT_STORES))
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    with OBJECT_STORES[request.param](request, tmp_path) as store:
        yield store


@pytest.fixture(params=_params(SNAPSHOT_STORES))
async def snapshot_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SnapshotStore]:
    async with SNAPSHOT_STORES[request.param](request, tmp_path) as store:
        yield store

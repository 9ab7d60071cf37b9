"""Snapshot stores, and the one function that turns a store URL into a store.

``file:///path`` (default ``$XDG_DATA_HOME/docksnap``) and ``s3://bucket/prefix``
select the content-addressed store over that backend; ``docker-volume:`` the
seed's one-volume-per-snapshot store, which needs an engine: the service layer
passes one (this package imports nothing from ``docksnap.docker``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from docksnap.errors import InvalidArgumentError
from docksnap.store.base import SnapshotInfo, SnapshotSource, SnapshotStore, TarReader

if TYPE_CHECKING:
    from docksnap.store.volume import VolumeEngine

__all__ = [
    "SnapshotInfo",
    "SnapshotSource",
    "SnapshotStore",
    "TarReader",
    "default_store_url",
    "open_store",
]


def default_store_url(env: Mapping[str, str] | None = None) -> str:
    """``DOCKSNAP_STORE``, else ``file://`` under ``$XDG_DATA_HOME`` (``~/.local/share``)."""
    env = os.environ if env is None else env
    if env.get("DOCKSNAP_STORE"):
        return env["DOCKSNAP_STORE"]
    data_home = env.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data_home, "docksnap").absolute().as_uri()


def open_store(
    url: str,
    *,
    engine: VolumeEngine | None = None,
    helper_image: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> SnapshotStore:
    """The store at ``url``. No I/O happens until the store is first used.

    ``engine``, ``helper_image`` and ``extra_labels`` are for ``docker-volume:``
    only (see :class:`~docksnap.store.volume.VolumeStore`); the other stores need
    nothing but their URL.
    """
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from docksnap.store.chunked import ChunkedStore
        from docksnap.store.chunked.packs import LOCAL_PACK_TARGET
        from docksnap.store.objects.local import LocalObjectStore

        path = unquote(urlsplit(url).path)
        if not path.startswith("/"):
            raise InvalidArgumentError(f"store URL must name an absolute path: {url!r}")
        return ChunkedStore(LocalObjectStore(Path(path)), pack_size=LOCAL_PACK_TARGET)
    if scheme == "s3":
        from docksnap.store.chunked import ChunkedStore
        from docksnap.store.objects.s3 import S3ObjectStore

        return ChunkedStore(S3ObjectStore.from_url(url))
    if scheme == "docker-volume":
        from docksnap.store.volume import VolumeStore

        if engine is None:
            raise InvalidArgumentError(
                "the docker-volume: store needs a Docker engine: open it through "
                "docksnap.Client(store='docker-volume:')"
            )
        return VolumeStore(engine, helper_image=helper_image, extra_labels=extra_labels)
    raise InvalidArgumentError(
        f"unknown store URL {url!r}: use file:///path, s3://bucket[/prefix] or docker-volume:"
    )

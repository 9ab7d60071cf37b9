"""What docksnap keeps inside a snapshot's own tar stream, and reading it back.

Two things travel with the data rather than in the store's records, so that
every store keeps them without a format change and a copy or export carries
them along:

- a capture report, in the pax header of a second root-directory entry after
  the last member (:func:`docksnap.service.tarfilter.root_with_records`);
- for a whole-container snapshot, a first member named :data:`CONTAINER_MARKER`
  (an OCI-style reserved ``.wh..wh.`` name) holding the image it applies to.
  The kind of a snapshot is read from its index, which stores keep apart from
  the data, so listing needs no data read.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

from docksnap.errors import SnapshotCorruptError
from docksnap.report import CaptureReport
from docksnap.service.tarfilter import KEEP, TarFilter
from docksnap.store.base import SnapshotInfo, SnapshotStore
from docksnap.tarstream import normalize_name

CONTAINER_MARKER = ".wh..wh.docksnap.container"
KIND_DIRECTORY = "directory"
KIND_CONTAINER = "container"
_MARKER_READ = 64 * 1024


async def read_report(store: SnapshotStore, snapshot_id: str) -> CaptureReport | None:
    """The capture report stored with a snapshot, or ``None`` when it has none.

    Reads (and so verifies) the whole stream: the report sits in the pax header
    of a last entry for the root directory. A snapshot stored clean has no
    report; the volume store, which re-archives on read, never returns one.
    """
    reader_filter = TarFilter(lambda entry: KEEP)
    async with store.open(snapshot_id) as reader:
        async for _ in reader_filter.run(aiter(reader)):
            pass
    return CaptureReport.from_pax(reader_filter.root_pax)


async def snapshot_kind(store: SnapshotStore, info: SnapshotInfo) -> str:
    """``"container"`` for a whole-container snapshot, else ``"directory"``."""
    if info.dir != "/":
        return KIND_DIRECTORY
    entries = await store.index(info.id)
    first = next((e for e in entries if e.path != "."), None)
    return (
        KIND_CONTAINER if first is not None and first.path == CONTAINER_MARKER else KIND_DIRECTORY
    )


async def read_container_meta(store: SnapshotStore, snapshot_id: str) -> dict[str, Any]:
    """The marker of a whole-container snapshot: ``{"image": ..., "image_id": ...}``.

    Raises :class:`~docksnap.errors.SnapshotCorruptError` when the snapshot has
    no readable marker (it is then not a container snapshot).
    """
    head = bytearray()
    async with store.open(snapshot_id) as reader:
        async for piece in reader:
            head += piece
            if len(head) >= _MARKER_READ:
                break
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(head)), mode="r|") as tar:
            for member in tar:
                if normalize_name(member.name) != CONTAINER_MARKER:
                    continue
                handle = tar.extractfile(member)
                meta = json.loads(handle.read() if handle else b"")
                if isinstance(meta, dict):
                    return meta
                break
    except (tarfile.TarError, ValueError):
        pass
    raise SnapshotCorruptError(snapshot_id, "not a whole-container snapshot (no marker)")

"""Whole-container snapshots: a container's filesystem changes against its image.

Capture (``Container.snapshot_container``): the engine lists what the container
added, changed and deleted (``GET /containers/{id}/changes``); the root archive
is streamed through a filter that keeps only the added and changed paths, and
each deletion is written as an OCI whiteout record, an empty member named
``.wh.<name>`` in the deleted path's directory. A first member,
:data:`~docksnap.service.metadata.CONTAINER_MARKER`, records the image (name and
id) the changes apply to. The snapshot's ``dir`` is ``/``; it is stored, listed,
verified, copied, exported and collected like any other. Volumes and bind mounts
are not part of it (the engine's changes list leaves them out): snapshot them
with ``snapshot_directory``.

Restore (``start(image, container_snapshot=...)``): the image must exist on the
engine, with the id recorded at capture (:class:`~docksnap.errors.ImageNotFoundError`
otherwise). The engine exports the image's filesystem from a created, never
started helper; the stream is filtered to drop every deleted path, the
snapshot's members are appended (later members replace earlier ones on
extraction), and the engine imports the result as a one-layer image carrying
the original image's configuration. The new container runs from that image, so
deleted files stay deleted; the image is labelled with the container's name and
removed with it. The cost is one pass over the image's files per restore.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from docksnap import labels as lbl
from docksnap.docker import DockerClient
from docksnap.errors import ImageNotFoundError, InvalidArgumentError
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.service.capture import Capture
from docksnap.service.metadata import (
    CONTAINER_MARKER,
    KIND_CONTAINER,
    read_container_meta,
    snapshot_kind,
)
from docksnap.service.tarfilter import (
    DROP,
    END_OF_ARCHIVE,
    KEEP,
    Decision,
    TarFilter,
    member_bytes,
    member_header,
)
from docksnap.store import SnapshotSource, SnapshotStore
from docksnap.tarstream import TarEntry

if TYPE_CHECKING:
    from docksnap.service.container import ContainerContext

WHITEOUT = ".wh."
RESTORE_IMAGE_PREFIX = "docksnap-restore-"
_ADDED_OR_CHANGED = (0, 1)
_DELETED = 2


async def capture_container(
    context: ContainerContext,
    container: str,
    *,
    name: str | None,
    paused: bool,
    strict: bool,
    limit_stream: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]],
    unpause: Callable[[], Awaitable[None]],
    ttl: float | None,
) -> DirectorySnapshot:
    """Store the container's changes against its image; return the record (with its report).

    Called by :meth:`docksnap.Container.snapshot_container` inside the
    container's turn, paused or not; ``unpause`` runs as soon as the engine
    has sent its last byte. Atomic like any save.
    """
    docker = context.engine
    info = await docker.inspect_container(container)
    image_id = str(info.get("Image", ""))
    image_name = str((info.get("Config") or {}).get("Image", "")) or image_id
    changes = await docker.container_changes(container)
    changed = {str(c["Path"]).lstrip("/") for c in changes if c.get("Kind") in _ADDED_OR_CHANGED}
    deleted = _outermost(str(c["Path"]) for c in changes if c.get("Kind") == _DELETED)
    capture = Capture(
        docker,
        container,
        "/",
        paused=paused,
        strict=strict,
        select=lambda entry: entry.path in changed,
    )
    now = int(time.time())
    marker = json.dumps(
        {"kind": "container", "image": image_name, "image_id": image_id, "container": container}
    ).encode()

    async def whiteouts() -> bytes:
        return b"".join(member_bytes(_whiteout(path, now), b"") for path in deleted)

    async def stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        yield member_bytes(_file(CONTAINER_MARKER, len(marker), now), marker)
        async for piece in capture.stream(chunks, on_source_end=unpause, extra=whiteouts):
            yield piece

    record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir="/", name=name)
    source = SnapshotSource(container, image_name)
    async with docker.get_archive(container, "/.") as archive:
        saved = await context.store.save(
            record, limit_stream(stream(archive.chunks)), source=source, ttl=ttl
        )
    return dataclasses.replace(saved.snapshot, info=saved, report=capture.report)


async def image_with_snapshot(
    context: ContainerContext, image: str, snapshot: DirectorySnapshot, *, owner: str
) -> str:
    """Import ``image`` plus the container snapshot as a new image; return its id.

    The image is labelled for ``owner`` (removed with it by
    :func:`remove_owned_images`). Raises :class:`ImageNotFoundError` when the
    engine lacks ``image``, :class:`InvalidArgumentError` when ``image`` is not
    the one the snapshot was taken from.
    """
    docker = context.engine
    if await snapshot_kind(context.store, await context.store.get(snapshot.id)) != KIND_CONTAINER:
        raise InvalidArgumentError(
            f"snapshot {snapshot.id} is a directory snapshot, not a whole-container one "
            "(restore it with snapshots=[...])"
        )
    meta = await read_container_meta(context.store, snapshot.id)
    described = await docker.inspect_image(image)
    if described is None:
        raise ImageNotFoundError(
            image,
            f"image {image!r} does not exist on the Docker engine at {docker.address.url}; "
            f"container snapshot {snapshot.id} applies to it (pull or load it there first)",
        )
    if described.get("Id") != meta.get("image_id"):
        raise InvalidArgumentError(
            f"container snapshot {snapshot.id} was taken from image {meta.get('image')!r} "
            f"({meta.get('image_id')}), but {image!r} is {described.get('Id')}"
        )
    entries = await context.store.index(snapshot.id)
    deleted = {_deleted_path(e.path) for e in entries if _is_whiteout(e.path)}
    # The engine's import refuses a path twice: the image's version of every path
    # the snapshot carries is left out of the export.
    replaced = {e.path for e in entries if _content_only(e) is KEEP}
    labels = lbl.make_labels(lbl.Role.RESTORE, context.labels, {lbl.OWNER: owner})
    base_filter = TarFilter(_drop_deleted(deleted, replaced))
    delta_filter = TarFilter(_content_only)

    async def combined(export: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for piece in base_filter.run(export, end=False):
            yield piece
        async with context.store.open(snapshot.id) as reader:
            async for piece in delta_filter.run(aiter(reader), end=False):
                yield piece
        # Image hard links to a file the snapshot replaced: their target comes only
        # now, so they follow it (headers only, no data).
        still_there = _drop_deleted(deleted, set())
        for entry, _ in base_filter.dropped:
            if (
                entry.type == "hardlink"
                and entry.link in replaced
                and entry.path not in replaced
                and still_there(entry) is KEEP
            ):
                yield member_header(entry)
        yield END_OF_ARCHIVE

    helper = await docker.create_container(
        None,
        {
            "Image": image,
            "Labels": lbl.make_labels(lbl.Role.HELPER, context.labels),
            "Entrypoint": ["/"],
            "NetworkDisabled": True,
            "HostConfig": {"NetworkMode": "none"},
        },
    )
    try:
        async with docker.export_container(helper) as export:
            return await docker.import_image(
                combined(export.chunks),
                repo=RESTORE_IMAGE_PREFIX + uuid.uuid4().hex,
                changes=image_changes(described.get("Config") or {}, labels),
            )
    finally:
        await docker.remove_container(helper)


async def refuse_as_directory_snapshot(store: SnapshotStore, snapshot: DirectorySnapshot) -> None:
    """A whole-container snapshot restored as a directory would extract its whiteout
    records as files: refuse it, pointing at ``container_snapshot=``."""
    if snapshot.dir != "/":
        return
    if await snapshot_kind(store, await store.get(snapshot.id)) == KIND_CONTAINER:
        raise InvalidArgumentError(
            f"snapshot {snapshot.id} is a whole-container snapshot: "
            "restore it with start(image, container_snapshot=...)"
        )


async def remove_owned_images(docker: DockerClient, owner: str) -> None:
    """Remove the images made for ``owner``'s container snapshots. Idempotent."""
    found = await docker.list_images({lbl.ROLE: str(lbl.Role.RESTORE), lbl.OWNER: owner})
    for image in found:
        await docker.remove_image(str(image["Id"]))


def image_changes(config: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Dockerfile instructions that give an imported image ``config`` and ``labels``."""
    changes = [f"ENV {_quote(key)}={_quote(value)}" for key, _, value in _pairs(config.get("Env"))]
    for instruction, key in (("CMD", "Cmd"), ("ENTRYPOINT", "Entrypoint")):
        if config.get(key):
            changes.append(f"{instruction} {json.dumps(config[key])}")
    if config.get("WorkingDir"):
        changes.append(f"WORKDIR {config['WorkingDir']}")
    if config.get("User"):
        changes.append(f"USER {config['User']}")
    merged = {**(config.get("Labels") or {}), **labels}
    changes += [f"LABEL {_quote(k)}={_quote(v)}" for k, v in merged.items()]
    return changes


def _pairs(env: object) -> list[tuple[str, str, str]]:
    return [item.partition("=") for item in env or [] if isinstance(item, str)]  # type: ignore[attr-defined]


def _quote(text: str) -> str:
    # A JSON string is a valid double-quoted Dockerfile word (same escapes).
    return json.dumps(str(text))


def _outermost(paths: Any) -> list[str]:
    """Deleted paths without those under another deleted path, sorted."""
    every = set(paths)

    def under_another(path: str) -> bool:
        parent = path.rsplit("/", 1)[0]
        while parent:
            if parent in every:
                return True
            parent = parent.rsplit("/", 1)[0]
        return False

    return sorted(path for path in every if not under_another(path))


def _whiteout(path: str, mtime: int) -> TarEntry:
    parent, _, base = path.strip("/").rpartition("/")
    name = f"{parent}/{WHITEOUT}{base}" if parent else WHITEOUT + base
    return TarEntry(name, "file", 0, 0, 0, mtime, 0, "", -1)


def _file(path: str, size: int, mtime: int) -> TarEntry:
    return TarEntry(path, "file", 0o644, 0, 0, mtime, size, "", -1)


def _is_whiteout(path: str) -> bool:
    base = path.rpartition("/")[2]
    return base.startswith(WHITEOUT) and path != CONTAINER_MARKER


def _deleted_path(whiteout: str) -> str:
    parent, _, base = whiteout.rpartition("/")
    name = base[len(WHITEOUT) :]
    return f"{parent}/{name}" if parent else name


def _drop_deleted(deleted: set[str], replaced: set[str]) -> Callable[[TarEntry], Decision]:
    def decide(entry: TarEntry) -> Decision:
        path = entry.path
        if path in replaced:
            return DROP
        while True:
            if path in deleted:
                return DROP
            if "/" not in path:
                return KEEP
            path = path.rsplit("/", 1)[0]

    return decide


def _content_only(entry: TarEntry) -> Decision:
    """The snapshot's files, without the marker, whiteouts and the root entry."""
    if entry.path == "." or entry.path == CONTAINER_MARKER or _is_whiteout(entry.path):
        return DROP
    return KEEP

"""The /v1 API: containers and snapshots, shaped like workerd's calls where they overlap.

Every handler is one or a few calls of the public library on the server's one
:class:`~docksnap.Client`; documents are the CLI's ``--json`` shapes
(:mod:`docksnap.cli.shapes`). No parameter names a path on the server: imports
and exports travel in the request and response bodies, and paths inside a
snapshot are looked up in its index (:mod:`docksnap.http.files`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Path, Query, Request, Response
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from docksnap.cli import shapes
from docksnap.cli.commands.catalogue import reap_orphans_if_engine
from docksnap.errors import InvalidArgumentError
from docksnap.http import schemas
from docksnap.http.files import member_bytes, member_path, subtree
from docksnap.http.progress import EVENT_STREAM, run_operation
from docksnap.http.runtime import Runtime, runtime
from docksnap.model import SnapshotRestore
from docksnap.service.catalogue import DEFAULT_GC_GRACE
from docksnap.store.base import SnapshotInfo

SnapshotId = Annotated[str, Path(pattern=schemas.SNAPSHOT_ID, description="A snapshot id")]
ContainerName = Annotated[
    str, Path(pattern=schemas.CONTAINER_NAME, description="The Docker container's name")
]
CacheReference = Annotated[
    str,
    Path(
        pattern=schemas.CACHE_REFERENCE,
        description="A cache entry's name, or a snapshot id (every entry of that snapshot)",
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
TextFilter = Annotated[str | None, Query(max_length=4096)]

_EVENTS: dict[str, Any] = {EVENT_STREAM: {"schema": {"type": "string"}}}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": schemas.Problem, "description": "No such snapshot"}
}

router = APIRouter(prefix="/v1")


# -- containers -----------------------------------------------------------------------


@router.post(
    "/containers/{name}",
    status_code=201,
    response_model=schemas.Started,
    tags=["containers"],
    responses={201: {"content": _EVENTS}, 404: _NOT_FOUND[404]},
)
async def start_container(
    request: Request, name: ContainerName, body: schemas.StartRequest
) -> Response:
    """Create and start a container with snapshots restored (workerd's ``start()``).

    Unknown snapshot ids fail before anything is created; if the start fails,
    nothing it created is left behind. Progress as events with
    ``Accept: text/event-stream``.
    """
    rt = runtime(request)

    async def work() -> dict[str, Any]:
        restores = [
            SnapshotRestore(
                (await rt.client.snapshots.get(item.id)).snapshot,
                mount_point=item.mount_point,
                merge=item.merge,
            )
            for item in body.snapshots
        ]
        box = rt.client.container(name)
        await box.start(
            body.image,
            entrypoint=body.entrypoint,
            env=body.env,
            enable_internet=body.enable_internet,
            snapshots=restores,
        )
        return {
            "name": name,
            "image": body.image,
            "running": box.running,
            "restores": [
                {"id": r.snapshot.id, "target": r.target, "merge": r.merge, "size": r.snapshot.size}
                for r in restores
            ],
        }

    return await run_operation(request, "start", work, status_code=201)


@router.get("/containers/{name}", response_model=schemas.ContainerState, tags=["containers"])
async def inspect_container(request: Request, name: ContainerName) -> dict[str, Any]:
    """Whether the container runs (a container that does not exist does not)."""
    box = runtime(request).client.container(name)
    return {"name": name, "running": await box.refresh()}


@router.post(
    "/containers/{name}/snapshots",
    status_code=201,
    response_model=schemas.Taken,
    tags=["containers"],
    responses={201: {"content": _EVENTS}},
)
async def snapshot_directory(
    request: Request, name: ContainerName, body: schemas.SnapshotRequest
) -> Response:
    """Snapshot a directory of the running container (workerd's ``snapshotDirectory()``).

    Returns the portable record; the container is paused while its archive is
    read unless ``pause`` is false. Progress as events with
    ``Accept: text/event-stream``.
    """
    rt = runtime(request)

    async def work() -> dict[str, Any]:
        snapshot = await rt.client.container(name).snapshot_directory(
            body.dir,
            name=body.name,
            pause=body.pause,
            size_limit=body.size_limit,
            ttl=body.ttl,
            capture=body.capture,
        )
        rt.changed()
        return shapes.record(snapshot)

    return await run_operation(request, "snapshot", work, status_code=201)


@router.post("/containers/{name}/signal", response_model=schemas.Signalled, tags=["containers"])
async def signal_container(
    request: Request, name: ContainerName, body: schemas.SignalRequest
) -> dict[str, Any]:
    """Send a signal (a number from 1 to 64) to the container's main process."""
    await runtime(request).client.container(name).signal(body.signal)
    return {"name": name, "signal": body.signal}


@router.delete("/containers/{name}", status_code=204, tags=["containers"])
async def destroy_container(request: Request, name: ContainerName) -> Response:
    """Remove the container and its restore volumes. Idempotent."""
    await runtime(request).client.container(name).destroy()
    return Response(status_code=204)


# -- snapshots ------------------------------------------------------------------------


@router.get("/snapshots", response_model=schemas.Page, tags=["snapshots"])
async def list_snapshots(
    request: Request,
    name: TextFilter = None,
    dir: TextFilter = None,
    container: TextFilter = None,
    q: Annotated[
        str | None, Query(max_length=256, description="Substring of id, name, dir or container")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Snapshots matching every filter, newest first, a page at a time."""
    infos = await matching(runtime(request), name=name, dir=dir, container=container, q=q)
    page = infos[offset : offset + limit]
    more = offset + limit < len(infos)
    return {
        "items": [shapes.info(i) for i in page],
        "total": len(infos),
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }


async def matching(
    rt: Runtime,
    *,
    name: str | None = None,
    dir: str | None = None,
    container: str | None = None,
    q: str | None = None,
) -> list[SnapshotInfo]:
    """The catalogue's filters, plus a case-insensitive search over the visible fields."""
    found = [
        info async for info in rt.client.snapshots.list(name=name, dir=dir, container=container)
    ]
    if not q:
        return found
    needle = q.lower()
    return [i for i in found if any(needle in text.lower() for text in _searchable(i))]


def _searchable(info: SnapshotInfo) -> tuple[str, ...]:
    source = info.source.container if info.source else ""
    return (info.id, info.name or "", info.dir, source)


@router.get(
    "/snapshots/{id}", response_model=schemas.Info, tags=["snapshots"], responses=_NOT_FOUND
)
async def get_snapshot(request: Request, id: SnapshotId) -> dict[str, Any]:
    """One snapshot's catalogue entry."""
    return shapes.info(await runtime(request).client.snapshots.get(id))


@router.delete("/snapshots/{id}", status_code=204, tags=["snapshots"], responses=_NOT_FOUND)
async def delete_snapshot(request: Request, id: SnapshotId) -> Response:
    """Delete a snapshot's record; its data is reclaimed by gc."""
    rt = runtime(request)
    await rt.client.snapshots.delete(id)
    rt.changed()
    return Response(status_code=204)


@router.get(
    "/snapshots/{id}/files", response_model=schemas.Files, tags=["snapshots"], responses=_NOT_FOUND
)
async def list_files(
    request: Request,
    id: SnapshotId,
    prefix: Annotated[
        str | None,
        Query(max_length=4096, description="A file or directory, relative to the snapshot's dir"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Offset = 0,
) -> dict[str, Any]:
    """The snapshot's file index in archive order, or only the tree under ``prefix``."""
    entries = await runtime(request).client.snapshots.files(id)
    if prefix is not None:
        entries = subtree(entries, member_path(prefix))
        if not entries:
            raise InvalidArgumentError(f"no file {prefix!r} in snapshot {id}")
    page = entries[offset : offset + limit]
    return {
        "items": [shapes.entry(e) for e in page],
        "total": len(entries),
        "offset": offset,
        "next_offset": offset + limit if offset + limit < len(entries) else None,
    }


@router.get(
    "/snapshots/{id}/files/{path:path}",
    tags=["snapshots"],
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
        404: _NOT_FOUND[404],
    },
)
async def download_file(request: Request, id: SnapshotId, path: str) -> Response:
    """One regular file's bytes (a hard link gives its target's), verified as read."""
    rt = runtime(request)
    wanted = member_path(path)
    index = {e.path: e for e in await rt.client.snapshots.files(id)}
    entry = index.get(wanted)
    if entry is not None and entry.type == "hardlink":
        entry = index.get(entry.link)
    if entry is None or entry.type != "file":
        kind = "no file" if entry is None else f"not a regular file ({entry.type}):"
        raise InvalidArgumentError(f"{kind} {path!r} in snapshot {id}")
    stack = contextlib.AsyncExitStack()
    reader = await stack.enter_async_context(rt.client.snapshots.export(id))
    filename = quote(wanted.rsplit("/", 1)[-1], safe="")
    return StreamingResponse(
        _closing(member_bytes(reader, entry), stack),
        media_type="application/octet-stream",
        headers={
            "content-length": str(entry.size),
            "content-disposition": f"attachment; filename*=UTF-8''{filename}",
        },
        background=BackgroundTask(stack.aclose),
    )


@router.get(
    "/snapshots/{id}/diff/{other}",
    response_model=schemas.Diff,
    tags=["snapshots"],
    responses=_NOT_FOUND,
)
async def diff_snapshots(request: Request, id: SnapshotId, other: SnapshotId) -> dict[str, Any]:
    """Files added, removed and changed from snapshot ``id`` to ``other``."""
    return shapes.diff(await runtime(request).client.snapshots.diff(id, other))


@router.get(
    "/snapshots/{id}/export",
    tags=["snapshots"],
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-tar": {"schema": {"type": "string"}}}},
        404: _NOT_FOUND[404],
    },
)
async def export_snapshot(request: Request, id: SnapshotId) -> Response:
    """The snapshot as a plain tar, streamed and verified as it is read."""
    stack = contextlib.AsyncExitStack()
    reader = await stack.enter_async_context(runtime(request).client.snapshots.export(id))
    headers = {"content-disposition": f'attachment; filename="{id}.tar"'}
    if reader.size is not None:
        headers["content-length"] = str(reader.size)
    return StreamingResponse(
        _closing(aiter(reader), stack),
        media_type="application/x-tar",
        headers=headers,
        background=BackgroundTask(stack.aclose),
    )


async def _closing(
    chunks: AsyncIterator[bytes], stack: contextlib.AsyncExitStack
) -> AsyncIterator[bytes]:
    try:
        async for piece in chunks:
            yield piece
    finally:
        await stack.aclose()


@router.post(
    "/snapshots/import",
    status_code=201,
    response_model=schemas.Info,
    tags=["snapshots"],
    responses={201: {"content": _EVENTS}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def import_snapshot(
    request: Request,
    dir: Annotated[str, Query(min_length=1, max_length=4096, description="Restores here")],
    name: Annotated[str | None, Query(max_length=255)] = None,
    ttl: Annotated[float | None, Query(gt=0)] = None,
    image: Annotated[str, Query(max_length=512)] = "",
) -> Response:
    """Store a tar streamed in the request body as a snapshot of ``dir``.

    The body has no size limit and is never held whole. Members that are
    absolute, climb out with ``..``, write through an earlier symlink, or are
    devices are refused, naming the member, and nothing is stored. Progress as
    events with ``Accept: text/event-stream`` (bytes of the body read; the total
    is its ``Content-Length`` when sent).
    """
    rt = runtime(request)
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else None

    async def work() -> dict[str, Any]:
        snapshot = await rt.client.snapshots.import_tar(
            request.stream(), dir=dir, name=name, ttl=ttl, image=image, size=size
        )
        rt.changed()
        return shapes.info(snapshot.info or await rt.client.snapshots.get(snapshot.id))

    return await run_operation(request, "import", work, status_code=201, reads_body=True)


@router.post(
    "/snapshots/{id}/verify",
    response_model=schemas.VerifyResult,
    tags=["snapshots"],
    responses={200: {"content": _EVENTS}, 404: _NOT_FOUND[404]},
)
async def verify_snapshot(
    request: Request,
    id: SnapshotId,
    body: Annotated[schemas.VerifyRequest | None, Body()] = None,
) -> Response:
    """Re-read and re-hash one snapshot's stored bytes (``read_data: false``: metadata only).

    ``repair: true`` rewrites damaged chunks from intact copies in this store;
    ``problems`` are then what stays damaged.
    """
    return await _verify(request, id, body or schemas.VerifyRequest())


@router.post(
    "/store/verify",
    response_model=schemas.VerifyResult,
    tags=["store"],
    responses={200: {"content": _EVENTS}},
)
async def verify_store(
    request: Request, body: Annotated[schemas.VerifyRequest | None, Body()] = None
) -> Response:
    """Check every snapshot; problems are listed, not raised (``ok`` is false).

    ``repair: true`` rewrites damaged chunks from intact copies in this store;
    ``problems`` are then what stays damaged.
    """
    return await _verify(request, None, body or schemas.VerifyRequest())


async def _verify(request: Request, id: str | None, body: schemas.VerifyRequest) -> Response:
    rt = runtime(request)

    async def work() -> dict[str, Any]:
        report = await rt.client.snapshots.verify(id, read_data=body.read_data, repair=body.repair)
        return shapes.verify(report)

    return await run_operation(request, "verify", work)


@router.post(
    "/store/gc",
    response_model=schemas.GcResult,
    tags=["store"],
    responses={200: {"content": _EVENTS}},
)
async def gc(
    request: Request, body: Annotated[schemas.GcRequest | None, Body()] = None
) -> Response:
    """Delete expired snapshots, then reclaim unreferenced data older than ``grace`` seconds."""
    rt = runtime(request)
    grace = body.grace if body is not None else DEFAULT_GC_GRACE

    async def work() -> dict[str, Any]:
        expired = await rt.client.snapshots.expire()
        report = await rt.client.snapshots.gc(grace=grace)
        orphans = await reap_orphans_if_engine(rt.client, grace)
        rt.changed()
        return shapes.gc(expired, report, orphans)

    return await run_operation(request, "gc", work)


@router.get("/store/stats", response_model=schemas.Stats, tags=["store"])
async def stats(request: Request) -> dict[str, Any]:
    """Store totals: snapshots, logical and stored bytes, dedup and compression."""
    client = runtime(request).client
    return shapes.stats(client.store.url, await client.snapshots.stats())


@router.get("/store/history", response_model=schemas.History, tags=["store"])
async def history(request: Request) -> dict[str, Any]:
    """Store totals sampled by this server over time (at start and after every change)."""
    return {"samples": runtime(request).history.samples()}


# -- the restore cache ----------------------------------------------------------------


@router.get("/cache", response_model=schemas.CacheList, tags=["cache"])
async def list_cache(request: Request) -> dict[str, Any]:
    """This host's restore cache (`docksnap cache ls`), least recently used first."""
    cache = runtime(request).client.cache
    entries = await cache.list()
    return {
        "items": [shapes.cache_entry(e) for e in entries],
        "size": sum(e.size for e in entries),
        "size_limit": cache.size_limit,
    }


@router.delete(
    "/cache/{reference}",
    response_model=schemas.CacheRemoved,
    tags=["cache"],
    responses={
        404: {"model": schemas.Problem, "description": "No such cache entry"},
        409: {"model": schemas.Problem, "description": "A container reads the entry"},
    },
)
async def remove_cache_entry(request: Request, reference: CacheReference) -> dict[str, Any]:
    """Remove a cache entry, or every entry of a snapshot id (`docksnap cache rm`).

    An entry a container reads is kept (``409``; the others are removed first);
    the stored snapshot is not touched. Idempotent in effect: a second call is
    ``404``."""
    return {"removed": await runtime(request).client.cache.remove(reference)}


@router.post("/cache/prune", response_model=schemas.CacheRemoved, tags=["cache"])
async def prune_cache(request: Request) -> dict[str, Any]:
    """Remove every entry no container reads, and fills that died (`docksnap cache prune`)."""
    return {"removed": await runtime(request).client.cache.prune()}

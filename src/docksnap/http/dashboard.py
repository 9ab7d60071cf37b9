"""The dashboard: server-rendered pages over the same client, plus one small script.

Pages read the catalogue (and the restore cache) directly; everything that
changes state (verify, gc, cache prune, logout) goes through the /v1 API from
``static/dashboard.js`` with the CSRF header, so the guard's checks are the
only ones. Templates autoescape: every
name, path and link target that came from a snapshot is text, never markup.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from docksnap.cli import render, shapes
from docksnap.http import schemas
from docksnap.http.api import matching
from docksnap.http.auth import SESSION_COOKIE, SESSION_SECONDS
from docksnap.http.guard import _cookie, _headers
from docksnap.http.runtime import runtime
from docksnap.tarstream import TarEntry

HERE = FsPath(__file__).parent
TREE_LIMIT = 5000
PAGE = 100

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["size"] = lambda n: "\u2013" if n is None else render.size(n)
templates.env.filters["when"] = lambda t: "\u2013" if t is None else render.local_time(t)
templates.env.filters["mode"] = lambda e: render.mode_string(e)
templates.env.filters["urlpath"] = lambda p: quote(p)
# The stored-size column's tooltip: the API schema's definition, said once.
templates.env.globals["STORED_TIP"] = schemas.Info.model_fields["stored_size"].description

router = APIRouter(include_in_schema=False)
SnapshotId = Annotated[str, Path(pattern=schemas.SNAPSHOT_ID)]


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    session = _cookie(_headers(request.scope), SESSION_COOKIE) or ""
    csrf = runtime(request).auth.csrf_token(session)
    return templates.TemplateResponse(request, template, {"csrf": csrf, **context})


@router.get("/login")
async def login_form(request: Request, failed: int = 0) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"failed": bool(failed)})


@router.post("/login")
async def login(request: Request) -> Response:
    """Exchange the API token for a session cookie; the token itself is never stored."""
    headers = _headers(request.scope)
    origin = headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != headers.get("host"):
        return Response("foreign origin", status_code=403)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    auth = runtime(request).auth
    if not auth.check_token(token):
        return RedirectResponse("/login?failed=1", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.new_session(),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/")
async def snapshot_list(
    request: Request,
    q: Annotated[str, Query(max_length=256)] = "",
    offset: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    infos = await matching(runtime(request), q=q or None)
    return _page(
        request,
        "list.html",
        q=q,
        infos=infos[offset : offset + PAGE],
        total=len(infos),
        offset=offset,
        next_offset=offset + PAGE if offset + PAGE < len(infos) else None,
    )


@router.get("/containers/{name}")
async def container_timeline(
    request: Request, name: Annotated[str, Path(pattern=schemas.CONTAINER_NAME)]
) -> HTMLResponse:
    rt = runtime(request)
    infos = [i async for i in rt.client.snapshots.list(container=name)]
    infos.reverse()  # oldest first: a timeline reads downwards
    running = await rt.client.container(name).refresh()
    return _page(request, "timeline.html", name=name, infos=infos, running=running)


@router.get("/snapshots/{id}")
async def snapshot_page(request: Request, id: SnapshotId) -> HTMLResponse:
    catalogue = runtime(request).client.snapshots
    info = await catalogue.get(id)
    entries = await catalogue.files(id)
    others = [i async for i in catalogue.list() if i.id != id]
    # Snapshots of the same directory first: the diff one most likely wants.
    others.sort(key=lambda i: (i.dir != info.dir, -i.created_at))
    return _page(
        request,
        "snapshot.html",
        info=info,
        tree=build_tree(entries[:TREE_LIMIT]),
        file_count=len(entries),
        truncated=len(entries) > TREE_LIMIT,
        others=others[:200],
    )


@router.get("/diff")
async def diff_page(
    request: Request,
    a: Annotated[str, Query(pattern=schemas.SNAPSHOT_ID)],
    b: Annotated[str, Query(pattern=schemas.SNAPSHOT_ID)],
) -> HTMLResponse:
    catalogue = runtime(request).client.snapshots
    old, new = await catalogue.get(a), await catalogue.get(b)
    return _page(
        request, "diff.html", old=old, new=new, diff=shapes.diff(await catalogue.diff(a, b))
    )


@router.get("/store")
async def store_page(request: Request) -> HTMLResponse:
    rt = runtime(request)
    totals = shapes.stats(rt.client.store.url, await rt.client.snapshots.stats())
    samples = rt.history.samples()
    now = {
        "time": time.time(),
        "snapshots": totals["snapshots"],
        "logical_bytes": totals["logical_bytes"],
        "stored_bytes": totals["stored_bytes"],
    }
    return _page(
        request,
        "store.html",
        stats=totals,
        chart=chart([*samples, now]),
        cache=await rt.client.cache.list(),
        cache_limit=rt.client.cache.size_limit,
    )


# -- helpers ---------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    """One row of the file tree: a name, its entry (if the index has one), children."""

    name: str
    path: str
    entry: TarEntry | None = None
    children: dict[str, Node] = field(default_factory=dict)

    @property
    def sorted_children(self) -> list[Node]:
        # Directories first, then files, each by name, as file managers show them.
        return sorted(
            self.children.values(), key=lambda n: (not n.children and not n.is_dir, n.name)
        )

    @property
    def is_dir(self) -> bool:
        return self.entry is not None and self.entry.type == "dir"


def build_tree(entries: list[TarEntry]) -> Node:
    root = Node(".", ".")
    for entry in entries:
        if entry.path == ".":
            root.entry = entry
            continue
        node = root
        parts = entry.path.split("/")
        for depth, part in enumerate(parts):
            path = "/".join(parts[: depth + 1])
            node = node.children.setdefault(part, Node(part, path))
        node.entry = entry
    return root


def chart(samples: list[dict[str, Any]], width: int = 720, height: int = 240) -> dict[str, Any]:
    """Polylines of logical and stored bytes over time, in SVG user units."""
    t0, t1 = samples[0]["time"], samples[-1]["time"]
    top = max(max(s["logical_bytes"], s["stored_bytes"]) for s in samples) or 1
    span = (t1 - t0) or 1.0

    def points(key: str) -> str:
        # A step line: totals only change at a sample, they do not drift between.
        xy: list[str] = []
        for sample in samples:
            x = (sample["time"] - t0) / span * width
            y = height - sample[key] / top * height
            if xy:
                xy.append(f"{x:.1f},{xy[-1].split(',')[1]}")
            xy.append(f"{x:.1f},{y:.1f}")
        return " ".join(xy)

    return {
        "width": width,
        "height": height,
        "logical": points("logical_bytes"),
        "stored": points("stored_bytes"),
        "top": top,
        "start": t0,
        "end": t1,
        "count": len(samples),
    }

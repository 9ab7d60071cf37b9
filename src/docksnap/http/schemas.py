"""The request and response bodies of the /v1 API, as pydantic models.

They exist for two reasons: FastAPI validates requests against them, and the
OpenAPI document is generated from them. Responses are built by the CLI's own
shape functions (:mod:`docksnap.cli.shapes`), so ``docksnap --json`` and the
API print the same documents; these models only describe them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SNAPSHOT_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
# A restore cache entry's volume name, or a snapshot id (every entry of that snapshot).
CACHE_REFERENCE = r"^(docksnap-cache-[0-9a-f]{32}|" + SNAPSHOT_ID[1:-1] + r")$"
# Docker's own rule for container names.
CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Record(BaseModel):
    """The portable snapshot record; ``DirectorySnapshot.from_dict`` accepts it."""

    id: str
    size: int
    dir: str
    name: str | None
    digest: str | None
    created_at: float | None


class Taken(Record):
    """The answer to a snapshot request: the record, how long the container was paused,
    and how its directory was read (``host``: through the container's root from
    the server's host; ``archive``: the engine's archive API)."""

    paused_s: float | None = None
    capture: Literal["host", "archive"] | None = None


class Source(BaseModel):
    container: str
    image: str


class Info(BaseModel):
    """A catalogue entry: the record plus what the store knows."""

    snapshot: Record
    source: Source | None
    created_at: float
    last_used_at: float
    ttl: float | None
    stored_size: int | None = Field(
        description=(
            "Bytes the snapshot's save added to the store: the objects it created (new "
            "chunk data, compressed, plus its tar index). Chunks shared with snapshots "
            "saved earlier count for them, so this is not what deleting it frees. "
            "Recorded at save time; null when not recorded (older snapshots, the "
            "docker-volume: store)."
        )
    )


class Page(BaseModel):
    """One page of snapshots, newest first; ``next_offset`` is null on the last page."""

    items: list[Info]
    total: int
    offset: int
    next_offset: int | None


class Entry(BaseModel):
    """One member of a snapshot's file index; ``path`` is relative to its directory."""

    path: str
    type: Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo", "other"]
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    link: str


class Files(BaseModel):
    items: list[Entry]
    total: int
    offset: int
    next_offset: int | None


class Change(BaseModel):
    path: str
    fields: list[str]
    old: Entry
    new: Entry


class Diff(BaseModel):
    added: list[Entry]
    removed: list[Entry]
    changed: list[Change]


class Problem(BaseModel):
    """An error (RFC 9457). ``type`` is stable per error class; ``exit_code`` is the CLI's."""

    type: str
    title: str
    status: int
    detail: str
    error: str | None
    exit_code: int | None
    hint: str | None


class VerifyProblem(BaseModel):
    snapshot_id: str | None
    object: str
    detail: str


class VerifyRepair(BaseModel):
    chunk: str
    source: str
    snapshot_ids: list[str]


class VerifyResult(BaseModel):
    ok: bool
    snapshots_checked: int
    objects_checked: int
    bytes_checked: int
    problems: list[VerifyProblem]
    repaired: list[VerifyRepair]
    damaged_snapshots: list[str]


class Orphans(BaseModel):
    containers: list[str]
    volumes: list[str]


class GcResult(BaseModel):
    expired: list[str]
    objects_deleted: int
    bytes_deleted: int
    objects_kept_young: int
    orphans: Orphans


class Stats(BaseModel):
    store: str
    snapshots: int
    logical_bytes: int
    stored_bytes: int
    chunks: int
    dedup_ratio: float
    compression_ratio: float
    extra: dict[str, int]


class Sample(BaseModel):
    """Store totals at one moment (Unix seconds), as the server recorded them."""

    time: float
    snapshots: int
    logical_bytes: int
    stored_bytes: int


class History(BaseModel):
    samples: list[Sample]


class Deleted(BaseModel):
    deleted: list[str]


class CacheEntry(BaseModel):
    """One snapshot materialized in this host's restore cache (docs/CACHE.md).

    ``size`` is the snapshot's tar length; ``complete`` is false while it fills;
    ``references`` counts the volumes of the restores reading it (two a restore),
    and an entry ``in_use`` is never evicted or removed."""

    name: str
    snapshot_id: str
    size: int
    created_at: float
    last_used_at: float
    complete: bool
    in_use: bool
    references: int


class CacheList(BaseModel):
    """The entries, least recently used first; ``size`` their total, of ``size_limit``."""

    items: list[CacheEntry]
    size: int
    size_limit: int


class CacheRemoved(BaseModel):
    removed: list[str]


# -- requests -------------------------------------------------------------------


class RestoreRequest(_Strict):
    """A snapshot to restore: at its own directory, or at ``mount_point``."""

    id: str = Field(pattern=SNAPSHOT_ID)
    mount_point: str | None = Field(default=None, max_length=4096)
    merge: bool = False


class StartRequest(_Strict):
    image: str = Field(min_length=1, max_length=512)
    entrypoint: list[str] | None = Field(default=None, max_length=1024)
    env: dict[str, str] = Field(default_factory=dict, max_length=1024)
    enable_internet: bool = False
    snapshots: list[RestoreRequest] = Field(default_factory=list, max_length=64)


class Restored(BaseModel):
    id: str
    target: str
    merge: bool
    size: int


class Started(BaseModel):
    name: str
    image: str
    running: bool
    restores: list[Restored]


class ContainerState(BaseModel):
    name: str
    running: bool


class SnapshotRequest(_Strict):
    dir: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, max_length=255)
    pause: bool = True
    ttl: float | None = Field(default=None, gt=0)
    size_limit: int | None = Field(default=None, gt=0)
    capture: Literal["auto", "host", "archive"] = "auto"


class SignalRequest(_Strict):
    signal: int = Field(ge=1, le=64)


class Signalled(BaseModel):
    name: str
    signal: int


class VerifyRequest(_Strict):
    """``repair`` rewrites damaged chunks from intact copies in this store. Other
    stores (the CLI's ``--from URL``) are not offered here: the server would open
    any URL a client names, an S3 endpoint included."""

    read_data: bool = True
    repair: bool = False


class GcRequest(_Strict):
    grace: float = Field(default=3600.0, ge=0)

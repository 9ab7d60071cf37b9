"""Value types of the public API: frozen, validated on construction, picklable.

A :class:`DirectorySnapshot` is a plain record that callers keep wherever they
like (a database, a JSON file, another process) and hand back to ``start()``.
Because it comes back from outside, every field is validated again on the way in.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from docksnap.errors import InvalidPathError, InvalidSnapshotError
from docksnap.report import CaptureReport

_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_DIGEST = re.compile(r"blake3:[0-9a-f]{64}")


def new_snapshot_id() -> str:
    """A fresh random snapshot id: a lowercase UUIDv4, as the seed uses."""
    return str(uuid.uuid4())


def is_snapshot_id(value: object) -> bool:
    """Whether ``value`` is a well-formed snapshot id (safe to embed in a name or key)."""
    return isinstance(value, str) and _UUID4.fullmatch(value) is not None


def normalize_path(path: object, *, what: str = "path") -> str:
    """Return ``path`` canonicalized, or raise :class:`InvalidPathError` naming it.

    Refuses non-strings, relative paths, NUL bytes and ``..`` that would climb
    above ``/``. Repeated and trailing slashes and ``.``/``..`` components are
    resolved, so ``/app//data/`` and ``/app/x/../data`` both give ``/app/data``.
    """
    if not isinstance(path, str):
        raise InvalidPathError(repr(path), f"{what} must be a string")
    if not path.startswith("/"):
        raise InvalidPathError(path, f"{what} must be absolute (start with '/')")
    if "\0" in path:
        raise InvalidPathError(path, f"{what} must not contain NUL bytes")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            # posixpath.normpath would silently clamp "/.." to "/"; a caller who
            # wrote a path that climbs out of the root made a mistake we report.
            if not parts:
                raise InvalidPathError(path, f"{what} climbs above '/' with '..'")
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool``: a size of ``True`` is a caller's bug, not 1 byte."""
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(name: str, value: object) -> int:
    if not isinstance(value, int) or not is_int(value) or value < 0:
        raise InvalidSnapshotError(name, value, "must be a non-negative integer")
    return value


@dataclass(frozen=True, slots=True)
class CaptureReuse:
    """What a host capture took from its parent snapshot and what it read.

    ``parent`` is the id of the snapshot compared with (None: a full read).
    A regular file whose inode, size, mtime and ctime (nanoseconds) equal the
    parent's file at the same path is *reused*: its content is the parent's
    chunks, never opened. Every other regular file is *read*. Bytes are file
    content bytes (no headers, no padding); members that carry no content
    (directories, links, devices) count in neither.
    """

    parent: str | None
    reused_files: int = 0
    reused_bytes: int = 0
    read_files: int = 0
    read_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "reused_files": self.reused_files,
            "reused_bytes": self.reused_bytes,
            "read_files": self.read_files,
            "read_bytes": self.read_bytes,
        }


@dataclass(frozen=True, slots=True)
class DirectorySnapshot:
    """An immutable handle on one stored snapshot of a directory.

    ``id`` is a lowercase UUIDv4, ``size`` the byte length of the directory's tar
    stream, ``dir`` the absolute path it was taken from, ``name`` the caller's
    label (``None`` when not given or empty). ``digest`` and ``created_at`` are
    optional extras: a record carrying only the four seed fields still restores.
    ``digest`` names the content as the store committed it: the BLAKE3 of the tar
    stream, or for per-file snapshots of the chunked store the BLAKE3 of their
    chunk list (docs/FORMAT.md §11.11). Copies of one snapshot share it, except a
    per-file snapshot copied into a version-1 store, which records its stream's.

    ``info`` is set on the handles that ``snapshot_directory`` and ``import_tar``
    return: the full catalogue entry the store committed (source, TTL, times), so
    nobody has to fetch it again. It is a moment's answer, not part of the record:
    ``to_dict``, equality and ``repr`` ignore it, and ``from_dict`` never sets it.

    ``report`` is the capture report of the call that made the snapshot (``None``
    on records read back or built by hand); it is not part of the portable record.

    ``paused_s`` is set on the record ``snapshot_directory`` returns: the seconds
    the container was held paused for it (``0.0`` without a pause). It says how
    the snapshot was taken, not what it holds, so it takes no part in equality.
    ``capture`` is set alongside it: ``"host"`` when the directory was read
    through the container's root from this host, ``"archive"`` when through the
    engine's archive API. ``reuse`` (host capture only) says what an
    incremental capture took from its parent unread and what it read.
    """

    id: str
    size: int
    dir: str
    name: str | None = None
    digest: str | None = None
    created_at: float | None = None
    paused_s: float | None = field(default=None, compare=False)
    capture: str | None = field(default=None, compare=False)
    # What the store said when it returned this handle (snapshot_directory,
    # import_tar). Not part of the record: never compared, printed or serialized.
    info: SnapshotInfo | None = field(default=None, compare=False, repr=False, kw_only=True)
    report: CaptureReport | None = field(default=None, compare=False, repr=False, kw_only=True)
    reuse: CaptureReuse | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if not is_snapshot_id(self.id):
            raise InvalidSnapshotError("id", self.id, "must be a lowercase UUIDv4")
        _require_int("size", self.size)
        try:
            canonical = normalize_path(self.dir, what="snapshot dir")
        except InvalidPathError as exc:
            raise InvalidSnapshotError("dir", self.dir, exc.reason) from exc
        object.__setattr__(self, "dir", canonical)
        if self.name is not None and not isinstance(self.name, str):
            raise InvalidSnapshotError("name", self.name, "must be a string or None")
        if self.name == "":
            object.__setattr__(self, "name", None)
        if self.digest is not None and (
            not isinstance(self.digest, str) or not _DIGEST.fullmatch(self.digest)
        ):
            raise InvalidSnapshotError("digest", self.digest, "must be 'blake3:<64 hex>'")
        if self.created_at is not None and (
            not isinstance(self.created_at, float) and not is_int(self.created_at)
        ):
            raise InvalidSnapshotError("created_at", self.created_at, "must be a number")
        if self.info is not None and (
            not isinstance(self.info, SnapshotInfo) or self.info.id != self.id
        ):
            raise InvalidSnapshotError("info", self.info, f"must be the SnapshotInfo of {self.id}")
        if self.paused_s is not None and (
            not isinstance(self.paused_s, float | int)
            or isinstance(self.paused_s, bool)
            or not self.paused_s >= 0
        ):
            raise InvalidSnapshotError("paused_s", self.paused_s, "must be a non-negative number")
        if self.capture not in (None, "host", "archive"):
            raise InvalidSnapshotError("capture", self.capture, "must be 'host', 'archive' or None")

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data; extras appear only when set."""
        data: dict[str, Any] = {"id": self.id, "size": self.size, "dir": self.dir}
        data["name"] = self.name
        if self.digest is not None:
            data["digest"] = self.digest
        if self.created_at is not None:
            data["created_at"] = self.created_at
        if self.paused_s is not None:
            data["paused_s"] = self.paused_s
        if self.capture is not None:
            data["capture"] = self.capture
        return data

    @classmethod
    def from_dict(cls, data: object) -> DirectorySnapshot:
        """Build a snapshot from untrusted data, validating every field.

        Unknown keys are refused so that a typo (``"sise"``) is not silently dropped.
        """
        if not isinstance(data, dict):
            raise InvalidSnapshotError("record", data, "must be a mapping")
        allowed = {"id", "size", "dir", "name", "digest", "created_at", "paused_s", "capture"}
        unknown = set(data) - allowed
        if unknown:
            # Keys of a foreign record need not be strings, nor comparable to each other.
            names = sorted(repr(key) if not isinstance(key, str) else key for key in unknown)
            raise InvalidSnapshotError("record", names, "unknown fields")
        missing = {"id", "size", "dir"} - set(data)
        if missing:
            raise InvalidSnapshotError("record", sorted(missing), "missing required fields")
        return cls(
            id=data["id"],
            size=data["size"],
            dir=data["dir"],
            name=data.get("name"),
            digest=data.get("digest"),
            created_at=data.get("created_at"),
            paused_s=data.get("paused_s"),
            capture=data.get("capture"),
        )


@dataclass(frozen=True, slots=True)
class SnapshotRestore:
    """Restore ``snapshot`` when a container starts.

    By default the content appears at ``snapshot.dir``, or at ``mount_point``, in
    a fresh volume private to the container: the mount point shows exactly the
    snapshot (it masks what the image had there) and the stored snapshot is never
    modified. With ``merge=True`` the files are extracted into the container's
    own filesystem instead, over what the image has (the seed's behaviour); only
    then may the target be ``/``.
    """

    snapshot: DirectorySnapshot
    mount_point: str | None = None
    merge: bool = False
    target: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.snapshot, DirectorySnapshot):
            raise InvalidSnapshotError("snapshot", self.snapshot, "must be a DirectorySnapshot")
        if self.mount_point is not None:
            target = normalize_path(self.mount_point, what="mount point")
            object.__setattr__(self, "mount_point", target)
        else:
            target = self.snapshot.dir
        if target == "/" and not self.merge:
            raise InvalidPathError(
                target,
                "a directory snapshot cannot be restored to the root directory "
                "(use merge=True to extract over the image's files)",
            )
        object.__setattr__(self, "target", target)

    @classmethod
    def of(cls, item: DirectorySnapshot | SnapshotRestore) -> SnapshotRestore:
        """Accept the shorthand of a bare snapshot in ``start(snapshots=[...])``."""
        return item if isinstance(item, SnapshotRestore) else cls(item)


@dataclass(frozen=True, slots=True)
class SnapshotSource:
    """Where a snapshot came from: the container's name and the image it ran."""

    container: str
    image: str


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A catalogue entry: the portable record plus what the store knows about it.

    ``created_at`` and ``last_used_at`` are Unix seconds; ``ttl`` is seconds of
    disuse after which :meth:`docksnap.Catalogue.expire` deletes the snapshot.
    ``stored_size`` is what saving it added to the store: the bytes of the objects
    that save created (its new chunk data, compressed, and its tar index). Chunks
    it shared with snapshots saved before it count for them, not for it; it is
    not what deleting it frees, as later snapshots may share its chunks. Recorded
    at save time (a copy keeps the original's figure); ``None`` for snapshots
    saved before it was recorded and in stores that do not record it.
    """

    snapshot: DirectorySnapshot
    created_at: float
    last_used_at: float
    source: SnapshotSource | None = None
    ttl: float | None = None
    stored_size: int | None = None

    @property
    def id(self) -> str:
        return self.snapshot.id

    @property
    def name(self) -> str | None:
        return self.snapshot.name

    @property
    def dir(self) -> str:
        return self.snapshot.dir

    @property
    def size(self) -> int:
        return self.snapshot.size

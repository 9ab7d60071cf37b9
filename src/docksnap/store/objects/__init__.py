"""The object-store seam under the content-addressed store.

A deliberately small, synchronous key → bytes interface: the chunked store calls
it from worker threads, so a blocking implementation (a local directory, an S3
client) parallelizes by running several calls at once. Keys are ``/``-separated
relative names such as ``chunks/ab/abcdef…``; implementations map them onto
their own namespace (a directory, a bucket prefix).

Every method says whether it is atomic and idempotent, and which errors are
worth a retry, because the store's crash safety is built on exactly these
promises (see docs/FORMAT.md, "Write order").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from docksnap.errors import InvalidArgumentError, StoreError


def check_key(key: str) -> None:
    """Refuse a key outside the one key space every backend shares.

    Keys are relative ``/``-separated names whose components are non-empty and
    do not start with ``.``: so no key leaves a local store's root, and names
    starting with ``.`` stay free for a backend's own temporary objects.
    """
    if not key or "\x00" in key or "\\" in key:
        raise InvalidArgumentError(f"invalid object key {key!r}")
    if any(not part or part.startswith(".") for part in key.split("/")):
        raise InvalidArgumentError(
            f"object key {key!r} has an empty component or one starting with '.'"
        )


def check_prefix(prefix: str) -> None:
    """Refuse a list prefix that could name anything outside the store."""
    if "\x00" in prefix or "\\" in prefix or prefix.startswith("/"):
        raise InvalidArgumentError(f"invalid list prefix: {prefix!r}")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise InvalidArgumentError(f"list prefix must stay inside the store: {prefix!r}")


class ObjectNotFoundError(StoreError):
    """The key does not exist. Permanent: retrying will not help."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A listed object: its key, its size in bytes, its last-modified time (Unix s)."""

    key: str
    size: int
    mtime: float


class ObjectStore(Protocol):
    """A flat namespace of immutable-by-convention byte objects. Thread-safe."""

    @property
    def url(self) -> str:
        """Where the objects live, e.g. ``file:///srv/docksnap`` or ``s3://bucket/prefix``."""
        ...

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Write ``data`` under ``key``, replacing any existing object.

        Atomic: readers see the old object or the new one, never a mix or a
        prefix, also if the process dies mid-write. Idempotent. Transient faults
        are retried inside; what escapes is a :class:`StoreError`.
        """
        ...

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Create ``key`` only if it does not exist; return whether this call created it.

        Atomic and race-free: of concurrent callers on one key exactly one gets
        ``True`` and the object holds that caller's bytes. ``False`` means the key
        already existed and was left untouched.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists now. Read-only; a snapshot of a moment, not a lock."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object. :class:`ObjectNotFoundError` if absent. Idempotent."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; a short object is an error, never a short read."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, each exactly once, any order."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``. Idempotent: deleting a missing key succeeds."""
        ...

    def close(self) -> None:
        """Release resources; idempotent."""
        ...

"""The contract every snapshot store keeps, and the records it returns.

The service layer talks to stores only through :class:`SnapshotStore`. A store
receives a directory as a tar stream and gives it back as a tar stream; how it
keeps the bytes in between (content-addressed chunks, a Docker volume) is its
own business. The conformance suite in ``tests/conformance`` holds every store
to this contract. The records a store returns, :class:`SnapshotInfo` and
:class:`SnapshotSource`, are plain values defined in :mod:`docksnap.model`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "GcReport",
    "Problem",
    "Repair",
    "SnapshotInfo",
    "SnapshotSource",
    "SnapshotStore",
    "StoreStats",
    "TarReader",
    "VerifyReport",
]

from docksnap.model import DirectorySnapshot, SnapshotInfo, SnapshotSource
from docksnap.tarstream import TarEntry


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing verification found wrong: which snapshot, which object, what."""

    snapshot_id: str | None
    object: str
    detail: str


@dataclass(frozen=True, slots=True)
class Repair:
    """One damaged chunk that ``verify(repair=True)`` rewrote: its hash, where the
    intact copy came from (a store URL, or a pack or object of this store), and
    the snapshots that were damaged by it."""

    chunk: str
    source: str
    snapshot_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of :meth:`SnapshotStore.verify`; ``ok`` when nothing is wrong.

    ``problems`` is what is wrong when verify returns: with ``repair``, what
    repair could not fix (re-verified after it); ``repaired`` lists what it fixed.
    """

    snapshots_checked: int
    objects_checked: int
    bytes_checked: int
    problems: tuple[Problem, ...] = ()
    repaired: tuple[Repair, ...] = ()

    @property
    def damaged_snapshots(self) -> tuple[str, ...]:
        """The ids of the snapshots with a problem, sorted (no duplicates)."""
        return tuple(sorted({p.snapshot_id for p in self.problems if p.snapshot_id}))

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class GcReport:
    """Result of :meth:`SnapshotStore.gc`."""

    objects_deleted: int
    bytes_deleted: int
    objects_kept_young: int = 0


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Totals of a store. Ratios are 1.0 when the store does not compress or share."""

    snapshots: int
    logical_bytes: int
    stored_bytes: int
    chunks: int = 0
    dedup_ratio: float = 1.0
    compression_ratio: float = 1.0
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CopyReport:
    """Result of :meth:`SnapshotStore.copy_from`: the copy's record on the target,
    and what travelled.

    ``chunks_copied``/``bytes_copied`` count stored objects written to the target
    (for a streamed copy: none counted, ``bytes_copied`` is the stream's size);
    ``chunks_present`` counts chunks the target already had.
    """

    snapshot: SnapshotInfo
    chunks_copied: int = 0
    bytes_copied: int = 0
    chunks_present: int = 0
    streamed: bool = False


class TarReader(Protocol):
    """A snapshot's tar stream being read back.

    Iterating yields the stream in order; every byte has been verified before it
    is yielded. Iteration raises :class:`~docksnap.errors.SnapshotCorruptError`
    when stored data fails verification. ``size`` is the exact number of bytes
    iteration yields, or ``None`` when the store cannot know it in advance.

    The stream holds the same members (names, types, modes, owners, times,
    contents) as the one saved. Stores that keep the bytes themselves, like the
    chunked store, return it byte for byte; the volume store returns Docker's
    re-archiving of the volume: members in Docker's order, and the root
    directory's times those of the volume.
    """

    @property
    def size(self) -> int | None: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class SnapshotStore(Protocol):
    """Keeps snapshots. All methods are safe to call concurrently.

    A store gets everything it needs when it is built (the volume store: its
    engine and helper image); no method takes Docker-specific arguments.
    """

    @property
    def url(self) -> str:
        """Where the store lives, e.g. ``file:///var/lib/docksnap``."""
        ...

    async def save(
        self,
        snapshot: DirectorySnapshot,
        tar: AsyncIterator[bytes],
        *,
        source: SnapshotSource,
        ttl: float | None = None,
    ) -> SnapshotInfo:
        """Store ``tar`` under ``snapshot.id``; return the committed record.

        Atomic: when this returns, the snapshot is complete and visible; if it
        raises (including when ``tar`` raises, e.g. on a size limit) nothing is
        visible and only orphan data that :meth:`gc` reclaims may remain. The
        returned record's ``size`` is the stream's byte length. Not idempotent:
        saving an id that exists raises :class:`~docksnap.errors.StoreError`.
        """
        ...

    def open(self, snapshot_id: str) -> AbstractAsyncContextManager[TarReader]:
        """Read a snapshot's tar stream back, verified.

        Entering raises :class:`~docksnap.errors.SnapshotNotFoundError` for an
        unknown id. Read-only and idempotent; reading refreshes nothing (the
        caller decides whether a read counts as use, see :meth:`touch`).
        """
        ...

    async def index(self, snapshot_id: str) -> list[TarEntry]:
        """The snapshot's tar entries in stream order (path, type, mode, owner, size …)."""
        ...

    async def get(self, snapshot_id: str) -> SnapshotInfo:
        """The record of one snapshot, or :class:`~docksnap.errors.SnapshotNotFoundError`."""
        ...

    async def list(self) -> list[SnapshotInfo]:
        """Every committed snapshot, in no particular order."""
        ...

    async def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot's record; its data goes at the next :meth:`gc`.

        Raises :class:`~docksnap.errors.SnapshotNotFoundError` for an unknown id.
        """
        ...

    async def touch(self, snapshot_id: str, when: float) -> None:
        """Record a use (a restore) at ``when``; a TTL counts from the last use."""
        ...

    async def verify(
        self,
        snapshot_id: str | None = None,
        *,
        read_data: bool = True,
        repair: bool = False,
        sources: Sequence[SnapshotStore] = (),
    ) -> VerifyReport:
        """Check one or all snapshots; with ``read_data`` every stored byte is re-hashed.

        ``repair`` (needs ``read_data``) rewrites damaged data from an intact copy
        in this store or in ``sources``, in order; what stays damaged is in the
        report's ``problems``. A store that cannot repair reports its problems as
        they are. A transient fault raises
        :class:`~docksnap.errors.StoreUnavailableError`: it is no verdict on the data.
        """
        ...

    async def gc(self, *, grace: float) -> GcReport:
        """Delete data no snapshot references and older than ``grace`` seconds.

        Safe beside concurrent writers whose snapshot takes less than ``grace``:
        their new data is younger than that, and data they reuse is only moved
        aside, not destroyed, until a later pass finds it still unreferenced
        (docs/FORMAT.md, "Garbage collection").
        """
        ...

    async def stats(self) -> StoreStats:
        """Totals over the whole store."""
        ...

    async def copy_from(self, source: SnapshotStore, snapshot_id: str) -> CopyReport:
        """Copy ``snapshot_id`` from ``source`` (another store) into this one, verified.

        The store picks the fastest way it knows for that source (a chunked store
        copies only the chunks it lacks from another chunked store) and otherwise
        saves the source's verified tar stream
        (:func:`docksnap.store.copy.stream_copy`). Idempotent; atomic on this store
        (the snapshot appears complete, under the same id, or not at all). Errors
        as :func:`docksnap.store.copy.copy_snapshot`.
        """
        ...

    async def close(self) -> None:
        """Release connections and threads; idempotent."""
        ...

"""Verification: re-read what the manifests promise and report every discrepancy.

Unlike a read, verification does not stop at the first bad chunk: it reports each
one as a :class:`~docksnap.store.base.Problem` naming the snapshot and the chunk.

What counts as damage: bytes that do not decode or hash to their name, an object
that is definitely not there, and an object the backend refuses to read with a
lasting error (a local disk's EIO). A transient fault that outlived the retries
(:class:`StoreUnavailableError`: a reset connection, S3 503s) says nothing about
the data: verification stops and raises it, and reports (and quarantines)
nothing on its account. Only decode and hash failures are quarantined.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import blake3

from docksnap.errors import (
    SnapshotCorruptError,
    SnapshotNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from docksnap.store.base import Problem, VerifyReport
from docksnap.store.chunked.format import (
    PER_FILE_MANIFEST,
    ChunkRef,
    Manifest,
    chunk_key,
    chunk_list_digest,
)
from docksnap.store.chunked.reader import PIECE_SIZE, READ_AHEAD, Fetcher, group_chunks
from docksnap.store.chunked.records import Records

_Checked = list[tuple[ChunkRef, bytes | memoryview | None, str | None]]


@dataclass(slots=True)
class _Tally:
    snapshots: int = 0
    objects: int = 0
    nbytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    def report(self) -> VerifyReport:
        return VerifyReport(
            snapshots_checked=self.snapshots,
            objects_checked=self.objects,
            bytes_checked=self.nbytes,
            problems=tuple(self.problems),
        )


@dataclass(slots=True)
class DamagedChunk:
    """A chunk verify could not read intact, and the snapshots (id → manifest
    version) whose streams need it: what a repair must rewrite, and where."""

    ref: ChunkRef
    snapshots: dict[str, int] = field(default_factory=dict)


class Verifier:
    """Checks manifests, their indexes and chunks. Runs on a control thread.

    After :meth:`run`, :attr:`damaged` holds every chunk it found damaged, by hash.
    """

    def __init__(
        self,
        records: Records,
        io_pool: ThreadPoolExecutor,
        fetcher_for: Callable[[Manifest], Fetcher],
        present_for: Callable[[Manifest], Callable[[str], bool]],
        on_damaged: Callable[[Manifest, ChunkRef], str] | None = None,
    ) -> None:
        self._records = records
        self._objects = records.objects
        self._io = io_pool
        self._fetcher_for = fetcher_for
        self._present_for = present_for
        self._on_damaged = on_damaged
        self.damaged: dict[str, DamagedChunk] = {}

    def run(self, snapshot_ids: Iterable[str], *, read_data: bool) -> VerifyReport:
        tally = _Tally()
        for snapshot_id in snapshot_ids:
            manifest = self._manifest_or_problem(snapshot_id, tally)
            if manifest is None:
                continue
            tally.snapshots += 1
            self._check_index(manifest, read_data, tally)
            if read_data:
                self._read_stream(manifest, tally)
            else:
                self._check_presence(manifest, tally)
        return tally.report()

    def _manifest_or_problem(self, snapshot_id: str, tally: _Tally) -> Manifest | None:
        try:
            return self._records.manifest(snapshot_id, Manifest)
        except SnapshotNotFoundError:
            return None  # deleted since it was listed
        except (SnapshotCorruptError, StoreError) as exc:
            tally.problems.append(Problem(snapshot_id, f"manifests/{snapshot_id}", _damage(exc)))
            return None

    def _check_index(self, manifest: Manifest, read_data: bool, tally: _Tally) -> None:
        ref = manifest.index
        if ref is None:
            return
        tally.objects += 1
        if not read_data:
            if not self._objects.exists(ref.key):
                tally.problems.append(Problem(manifest.id, ref.key, "index is missing"))
            return
        try:
            self._records.index_bytes(manifest.id, ref)
        except (SnapshotCorruptError, StoreError) as exc:
            tally.problems.append(Problem(manifest.id, ref.key, _damage(exc)))

    def _check_presence(self, manifest: Manifest, tally: _Tally) -> None:
        unique = sorted({ref.hash for ref in manifest.chunks})
        check = self._present_for(manifest)
        for digest, present in zip(unique, self._io.map(check, unique), strict=True):
            tally.objects += 1
            if not present:
                detail = f"chunk {digest} is missing (neither {chunk_key(digest)} nor trash)"
                tally.problems.append(Problem(manifest.id, digest, detail))

    def _read_stream(self, manifest: Manifest, tally: _Tally) -> None:
        """Fetch every chunk in order (prefetched), hashing the whole stream too."""
        fetcher = self._fetcher_for(manifest)
        stream = blake3.blake3()
        per_file = manifest.version == PER_FILE_MANIFEST
        intact = True
        window: deque[Future[_Checked]] = deque()
        groups = group_chunks(manifest.chunks, PIECE_SIZE)
        while True:
            while len(window) < READ_AHEAD and (group := next(groups, None)) is not None:
                window.append(self._io.submit(_check_group, fetcher, group))
            if not window:
                break
            for ref, data, problem in window.popleft().result():
                tally.objects += 1
                if data is None:
                    intact = False
                    damaged = self.damaged.setdefault(ref.hash, DamagedChunk(ref))
                    damaged.snapshots[manifest.id] = manifest.version
                    detail = problem or "unreadable"
                    if self._on_damaged is not None:
                        detail += self._on_damaged(manifest, ref)
                    tally.problems.append(Problem(manifest.id, ref.hash, detail))
                    continue
                tally.nbytes += len(data)
                if intact and not per_file:
                    stream.update(data)
        # A per-file snapshot's digest is over its chunk list (§11.11): every chunk
        # was just checked against its hash, so the two together prove the stream.
        if per_file:
            actual, what = chunk_list_digest(manifest.chunks), "chunk-list digest"
        else:
            actual, what = f"blake3:{stream.hexdigest()}", "whole-stream digest"
        if intact and actual != manifest.digest:
            detail = f"{what} is {actual}, manifest says {manifest.digest}"
            tally.problems.append(Problem(manifest.id, "stream", detail))


def _check_group(fetcher: Fetcher, refs: Sequence[ChunkRef]) -> _Checked:
    checked: _Checked = []
    for ref in refs:
        try:
            checked.append((ref, fetcher.fetch(ref), None))
        except (SnapshotCorruptError, StoreError) as exc:
            checked.append((ref, None, _damage(exc)))
    return checked


def _damage(exc: SnapshotCorruptError | StoreError) -> str:
    """The problem to report for a failed read; re-raises a transient fault, which
    is no verdict on the data (and must never quarantine a good copy)."""
    if isinstance(exc, StoreUnavailableError):
        raise exc
    if isinstance(exc, SnapshotCorruptError):
        return exc.detail
    return f"unreadable: {exc}"

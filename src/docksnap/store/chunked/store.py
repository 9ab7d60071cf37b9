"""The content-addressed snapshot store over any :class:`ObjectStore`.

A snapshot is its tar stream cut into FastCDC chunks, each stored once under its
BLAKE3 name, plus a manifest that lists them. The manifest is written last, with
``put_if_absent``: it is the one commit point, so a snapshot is either complete
and visible or not there at all. docs/FORMAT.md describes every object.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import ParamSpec, TypeVar

import msgspec

from docksnap.errors import (
    InvalidSnapshotError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    StoreError,
    StoreFormatError,
)
from docksnap.model import DirectorySnapshot
from docksnap.store.base import (
    GcReport,
    SnapshotInfo,
    SnapshotSource,
    StoreStats,
    TarReader,
    VerifyReport,
)
from docksnap.store.chunked.format import (
    CHUNKS,
    CONFIG_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_VERSION,
    MANIFEST_VERSION,
    MANIFESTS,
    TAG_RAW,
    TAG_ZSTD,
    TRASH,
    ChunkDecodeError,
    ChunkerParams,
    IndexRef,
    LastUsed,
    Manifest,
    ManifestHeader,
    ManifestRefs,
    SourceRecord,
    StoreConfig,
    TarIndex,
    VersionProbe,
    chunk_key,
    decode_record,
    digest_of_key,
    encode_record,
    hash_hex,
    id_of_key,
    index_key,
    is_snapshot_id,
    manifest_key,
    open_record,
    trash_key,
    used_key,
)
from docksnap.store.chunked.gc import Collector
from docksnap.store.chunked.reader import READ_AHEAD, ChunkedTarReader, ChunkFetcher
from docksnap.store.chunked.verify import Verifier
from docksnap.store.chunked.writer import (
    BATCH_SIZE,
    SEGMENT_SIZE,
    BufferCache,
    Pools,
    StreamResult,
    StreamWriter,
)
from docksnap.store.objects import ObjectNotFoundError, ObjectStore
from docksnap.tarstream import TarEntry

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


class ChunkedStore:
    """Deduplicated, compressed, verified snapshots over an object store.

    ``workers`` threads hash, check and compress chunks (CPU-bound: one per core);
    ``io_workers`` threads talk to the object store (local fsyncs and S3 requests
    both gain from many in flight). ``max_write_seconds`` bounds how long a save may
    rely on chunks it found already stored without checking them again; gc's grace
    period must be longer (see docs/FORMAT.md). ``chunker`` applies only when this
    store creates a new store; an existing store's ``config`` always wins.

    Every method is safe to call concurrently, from several tasks and processes.
    """

    def __init__(
        self,
        objects: ObjectStore,
        *,
        workers: int = 2,
        io_workers: int = 16,
        read_ahead: int = READ_AHEAD,
        max_write_seconds: float = 1800.0,
        gc_lease_seconds: float = 3600.0,
        chunker: ChunkerParams | None = None,
    ) -> None:
        self._objects = objects
        self._workers = max(1, workers)
        self._io_workers = max(1, io_workers)
        self._read_ahead = read_ahead
        self._max_write_seconds = max_write_seconds
        self._gc_lease_seconds = gc_lease_seconds
        self._new_store_chunker = chunker or ChunkerParams()
        self._config: StoreConfig | None = None
        self._pools: Pools | None = None
        self._control: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return self._objects.url

    @property
    def objects(self) -> ObjectStore:
        return self._objects

    # --- SnapshotStore ---------------------------------------------------------------

    async def save(
        self,
        snapshot: DirectorySnapshot,
        tar: AsyncIterator[bytes],
        *,
        source: SnapshotSource,
        ttl: float | None = None,
    ) -> SnapshotInfo:
        """Store ``tar`` as ``snapshot.id``; atomic (the manifest commits), not idempotent.

        If ``tar`` raises, its exception propagates unchanged after the pipeline has
        stopped writing; nothing is committed and the chunks already written are
        orphans for :meth:`gc`. A malformed tar stream (cut short, bad header) is
        refused with the :mod:`docksnap.tarstream` error: its tar index cannot be
        built, and a stream cut short must never become a snapshot. Saving an id that
        exists raises :class:`StoreError`. Object-store errors are not retried here.
        """
        config = await self._control_call(self._config_for_write)
        if await self._control_call(self._objects.exists, manifest_key(snapshot.id)):
            raise StoreError(self.url, f"snapshot {snapshot.id} already exists")
        started = time.monotonic()
        writer = StreamWriter(self._get_pools(), config.chunker)
        writer.start()
        try:
            await _pump(tar, writer)
            result = await writer.finish()
        except BaseException:
            await writer.abort()
            raise
        elapsed = time.monotonic() - started
        return await self._control_call(self._commit, snapshot, result, source, ttl, elapsed)

    def open(self, snapshot_id: str) -> AbstractAsyncContextManager[TarReader]:
        """Read a snapshot's stream back, every chunk verified before it is yielded.

        Entering raises :class:`SnapshotNotFoundError` for an unknown id. Read-only
        except that a chunk found only in ``trash/`` is put back under ``chunks/``.
        """
        return self._open(snapshot_id)

    async def index(self, snapshot_id: str) -> builtins.list[TarEntry]:
        """The snapshot's tar entries in stream order, from ``indexes/<id>``.

        Read-only. The index object is checked against the digest in the manifest;
        a missing or mismatching one raises :class:`SnapshotCorruptError`.
        """
        return await self._control_call(self._read_index, snapshot_id)

    @contextlib.asynccontextmanager
    async def _open(self, snapshot_id: str) -> AsyncIterator[TarReader]:
        manifest = await self._control_call(self._load_manifest, snapshot_id, Manifest)
        fetcher = ChunkFetcher(self._objects, snapshot_id)
        reader = ChunkedTarReader(
            manifest, fetcher, self._get_pools().io, read_ahead=self._read_ahead
        )
        try:
            yield reader
        finally:
            reader.close()

    async def get(self, snapshot_id: str) -> SnapshotInfo:
        """The record of one snapshot. Read-only; raises SnapshotNotFoundError."""
        return await self._control_call(self._info, snapshot_id)

    async def list(self) -> list[SnapshotInfo]:
        """Every committed snapshot. Reads manifest headers, never chunk lists or indexes.

        A manifest that cannot be read is left out (and logged); :meth:`verify`
        reports it.
        """
        return await self._control_call(self._list)

    async def delete(self, snapshot_id: str) -> None:
        """Delete the manifest (the commit point of deletion), then its index and use
        record. Chunks go at the next gc. Raises SnapshotNotFoundError if unknown."""
        await self._control_call(self._delete, snapshot_id)

    async def touch(self, snapshot_id: str, when: float) -> None:
        """Record a use at ``when`` in ``used/<id>`` (the manifest stays immutable).

        Keeps the latest time: an older ``when`` than the one stored changes nothing.
        Two touches racing may keep either time.
        """
        await self._control_call(self._touch, snapshot_id, when)

    async def verify(
        self, snapshot_id: str | None = None, *, read_data: bool = True
    ) -> VerifyReport:
        """Check one snapshot or all. ``read_data``: fetch, decode and hash every chunk,
        and the whole stream's digest; otherwise check that every chunk exists."""
        return await self._control_call(self._verify, snapshot_id, read_data)

    async def gc(self, *, grace: float) -> GcReport:
        """Reclaim unreferenced chunks (via the trash), orphan indexes, use records and
        temporary files older than ``grace`` seconds. Safe beside concurrent saves
        when ``grace`` exceeds ``max_write_seconds``; ``grace=0`` only when nothing
        writes. Raises StoreError if another gc holds the lease."""
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace}")
        return await self._control_call(self._gc, grace)

    async def stats(self) -> StoreStats:
        """Totals over referenced data; unreferenced leftovers are in ``extra``."""
        return await self._control_call(self._stats)

    async def close(self) -> None:
        """Shut the thread pools down (waiting for running work); idempotent."""
        if self._closed:
            return
        self._closed = True
        pools, control = self._pools, self._control
        self._pools = self._control = None

        def shutdown() -> None:
            if control is not None:
                control.shutdown(wait=True)
            if pools is not None:
                pools.cpu.shutdown(wait=True)
                pools.io.shutdown(wait=True)
            self._objects.close()

        await asyncio.to_thread(shutdown)

    # --- pools -------------------------------------------------------------------------

    def _get_pools(self) -> Pools:
        if self._closed:
            raise StoreError(self.url, "the store is closed")
        if self._pools is None:
            self._pools = Pools(
                objects=self._objects,
                cpu=ThreadPoolExecutor(self._workers, thread_name_prefix="docksnap-cpu"),
                io=ThreadPoolExecutor(self._io_workers, thread_name_prefix="docksnap-io"),
                buffers=BufferCache(SEGMENT_SIZE, keep=self._workers + 4),
            )
        return self._pools

    async def _control_call(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run ``fn`` on the control pool.

        Control tasks may wait on io/cpu pool tasks; those never wait on control
        tasks, so the pools cannot deadlock each other.
        """
        self._get_pools()
        if self._control is None:
            self._control = ThreadPoolExecutor(4, thread_name_prefix="docksnap-control")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._control, lambda: fn(*args, **kwargs))

    # --- config ------------------------------------------------------------------------

    def _read_config(self) -> StoreConfig | None:
        """The store's config, or None for an empty store; StoreFormatError if alien."""
        if self._config is not None:
            return self._config
        try:
            raw = self._objects.get(CONFIG_KEY)
        except ObjectNotFoundError:
            return None
        self._config = self._parse_config(raw)
        return self._config

    def _parse_config(self, raw: bytes) -> StoreConfig:
        try:
            probe = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise StoreFormatError(self.url, f"{CONFIG_KEY} is not JSON: {exc}") from exc
        if not isinstance(probe, dict) or probe.get("format") != FORMAT_NAME:
            raise StoreFormatError(self.url, f"{CONFIG_KEY} does not describe a {FORMAT_NAME}")
        version = probe.get("version")
        if version != FORMAT_VERSION:
            raise StoreFormatError(
                self.url,
                f"store format version {version!r} is not supported "
                f"(this docksnap reads version {FORMAT_VERSION})",
            )
        try:
            config = msgspec.json.decode(raw, type=StoreConfig)
        except msgspec.DecodeError as exc:
            raise StoreFormatError(self.url, f"{CONFIG_KEY} is malformed: {exc}") from exc
        if config.hash != "blake3" or (config.codec.raw, config.codec.zstd) != (TAG_RAW, TAG_ZSTD):
            raise StoreFormatError(self.url, f"unsupported hash or codec in {CONFIG_KEY}")
        return config

    def _config_for_write(self) -> StoreConfig:
        """The config, created (put_if_absent) by the first writer of an empty store."""
        config = self._read_config()
        if config is not None:
            return config
        fresh = StoreConfig(chunker=self._new_store_chunker, created_at=time.time())
        self._objects.put_if_absent(CONFIG_KEY, msgspec.json.encode(fresh))
        # Whoever won the race wrote the config every writer must follow.
        config = self._read_config()
        if config is None:
            raise StoreError(self.url, f"{CONFIG_KEY} vanished right after it was written")
        return config

    # --- manifests -----------------------------------------------------------------------

    def _load_manifest(self, snapshot_id: str, kind: type[_T]) -> _T:
        """Decode ``manifests/<id>`` as ``kind``. Raises SnapshotNotFoundError,
        SnapshotCorruptError (undecodable) or StoreFormatError (unknown version)."""
        self._read_config()
        if not is_snapshot_id(snapshot_id):
            raise SnapshotNotFoundError(snapshot_id, self.url)
        key = manifest_key(snapshot_id)
        try:
            stored = self._objects.get(key)
        except ObjectNotFoundError:
            raise SnapshotNotFoundError(snapshot_id, self.url) from None
        return self._decode_manifest(snapshot_id, key, stored, kind)

    def _decode_manifest(self, snapshot_id: str, key: str, stored: bytes, kind: type[_T]) -> _T:
        try:
            packed = open_record(stored)
            version = decode_record(packed, VersionProbe).version
        except ChunkDecodeError as exc:
            detail = f"manifest {key} is unreadable: {exc}"
            raise SnapshotCorruptError(snapshot_id, detail) from None
        if version != MANIFEST_VERSION:
            raise StoreFormatError(
                self.url, f"manifest {key} has format version {version}, unsupported"
            )
        try:
            manifest = decode_record(packed, kind)
        except ChunkDecodeError as exc:
            raise SnapshotCorruptError(snapshot_id, f"manifest {key} is malformed: {exc}") from None
        if isinstance(manifest, Manifest | ManifestHeader) and manifest.id != snapshot_id:
            raise SnapshotCorruptError(snapshot_id, f"manifest {key} names id {manifest.id}")
        return manifest

    def _read_refs(self, key: str) -> ManifestRefs | None:
        """For gc/stats: a manifest's references, None if it was deleted meanwhile."""
        snapshot_id = id_of_key(key)
        if snapshot_id is None:
            raise StoreError(self.url, f"unexpected object {key} among the manifests")
        try:
            return self._load_manifest(snapshot_id, ManifestRefs)
        except SnapshotNotFoundError:
            return None

    def _info(self, snapshot_id: str) -> SnapshotInfo:
        header = self._load_manifest(snapshot_id, ManifestHeader)
        return self._to_info(header, self._last_used(snapshot_id))

    def _read_index(self, snapshot_id: str) -> builtins.list[TarEntry]:
        ref = self._load_manifest(snapshot_id, ManifestHeader).index
        if ref is None:
            raise SnapshotCorruptError(snapshot_id, "the manifest references no tar index")
        try:
            stored = self._objects.get(ref.key)
        except ObjectNotFoundError:
            raise SnapshotCorruptError(snapshot_id, f"tar index {ref.key} is missing") from None
        actual = f"blake3:{hash_hex(stored)}"
        if actual != ref.digest:
            detail = f"tar index {ref.key} hashes to {actual}, manifest says {ref.digest}"
            raise SnapshotCorruptError(snapshot_id, detail)
        try:
            index = decode_record(open_record(stored), TarIndex)
        except ChunkDecodeError as exc:
            detail = f"tar index {ref.key} is unreadable: {exc}"
            raise SnapshotCorruptError(snapshot_id, detail) from None
        return builtins.list(index.entries)

    def _to_info(self, header: ManifestHeader, last_used: float | None) -> SnapshotInfo:
        try:
            snapshot = DirectorySnapshot(
                id=header.id,
                size=header.size,
                dir=header.dir,
                name=header.name,
                digest=header.digest,
                created_at=header.created_at,
            )
        except InvalidSnapshotError as exc:
            detail = f"manifest holds an invalid record: {exc}"
            raise SnapshotCorruptError(header.id, detail) from None
        source = header.source
        return SnapshotInfo(
            snapshot=snapshot,
            created_at=header.created_at,
            last_used_at=max(header.last_used_at, last_used or 0.0),
            source=SnapshotSource(source.container, source.image) if source else None,
            ttl=header.ttl,
        )

    def _last_used(self, snapshot_id: str) -> float | None:
        try:
            raw = self._objects.get(used_key(snapshot_id))
        except ObjectNotFoundError:
            return None
        try:
            return msgspec.json.decode(raw, type=LastUsed).last_used_at
        except msgspec.DecodeError:
            log.warning("ignoring unreadable use record %s", used_key(snapshot_id))
            return None

    def _list(self) -> builtins.list[SnapshotInfo]:
        ids = [i for i in map(id_of_key, self._manifest_keys()) if i is not None]
        return [info for info in self._get_pools().io.map(self._info_or_none, ids) if info]

    def _info_or_none(self, snapshot_id: str) -> SnapshotInfo | None:
        try:
            return self._info(snapshot_id)
        except SnapshotNotFoundError:
            return None  # deleted while we listed
        except SnapshotCorruptError as exc:
            log.warning("skipping snapshot %s in listing: %s", snapshot_id, exc)
            return None

    def _manifest_keys(self) -> builtins.list[str]:
        if self._read_config() is None:
            return []
        return [info.key for info in self._objects.list(MANIFESTS)]

    # --- save: commit --------------------------------------------------------------------

    def _commit(
        self,
        snapshot: DirectorySnapshot,
        result: StreamResult,
        source: SnapshotSource,
        ttl: float | None,
        elapsed: float,
    ) -> SnapshotInfo:
        """Write the index, then the manifest with put_if_absent: the commit point."""
        if elapsed > self._max_write_seconds:
            self._recheck_deduplicated(snapshot.id, result.deduped)
        index = self._write_index(snapshot.id, result.entries)
        now = time.time()
        manifest = Manifest(
            version=MANIFEST_VERSION,
            id=snapshot.id,
            size=result.size,
            dir=snapshot.dir,
            name=snapshot.name,
            digest=result.digest,
            created_at=now,
            last_used_at=now,
            ttl=ttl,
            source=SourceRecord(source.container, source.image),
            chunks=result.chunks,
            index=index,
        )
        if not self._objects.put_if_absent(manifest_key(snapshot.id), encode_record(manifest)):
            raise StoreError(self.url, f"snapshot {snapshot.id} already exists")
        header = msgspec.convert(msgspec.structs.asdict(manifest), ManifestHeader)
        return self._to_info(header, None)

    def _write_index(self, snapshot_id: str, entries: builtins.list[TarEntry]) -> IndexRef:
        stored = encode_record(
            TarIndex(version=INDEX_VERSION, snapshot_id=snapshot_id, entries=tuple(entries))
        )
        key = index_key(snapshot_id)
        # put, not put_if_absent: a failed earlier save of the same id may have left one.
        self._objects.put(key, stored)
        return IndexRef(
            key=key,
            digest=f"blake3:{hash_hex(stored)}",
            entries=len(entries),
            stored_size=len(stored),
        )

    def _recheck_deduplicated(self, snapshot_id: str, deduped: frozenset[str]) -> None:
        """After a long save, make sure every chunk it relied on is still stored.

        gc may have trashed one since the save saw it; moving it back now restarts
        the grace period, which a commit right after this easily fits in.
        """
        for digest in deduped:
            if self._objects.exists(chunk_key(digest)):
                continue
            try:
                stored = self._objects.get(trash_key(digest))
            except ObjectNotFoundError:
                raise StoreError(
                    self.url,
                    f"snapshot {snapshot_id} not saved: chunk {digest} it deduplicated "
                    f"against was garbage-collected during a save longer than "
                    f"{self._max_write_seconds:.0f} s",
                ) from None
            self._objects.put_if_absent(chunk_key(digest), stored)

    # --- delete / touch --------------------------------------------------------------------

    def _delete(self, snapshot_id: str) -> None:
        # Existence, not decoding: a damaged manifest must stay deletable, or it would
        # block gc (which refuses to run while a manifest's references are unknown).
        self._read_config()
        key = manifest_key(snapshot_id)
        if not is_snapshot_id(snapshot_id) or not self._objects.exists(key):
            raise SnapshotNotFoundError(snapshot_id, self.url)
        self._objects.delete(key)
        # The manifest is gone, so the snapshot is; what follows is tidying that gc
        # redoes if we die here.
        for leftover in (index_key(snapshot_id), used_key(snapshot_id)):
            try:
                self._objects.delete(leftover)
            except StoreError:
                log.warning("left %s for gc", leftover, exc_info=True)

    def _touch(self, snapshot_id: str, when: float) -> None:
        self._load_manifest(snapshot_id, VersionProbe)
        previous = self._last_used(snapshot_id)
        if previous is not None and previous >= when:
            return
        self._objects.put(used_key(snapshot_id), msgspec.json.encode(LastUsed(when)))

    # --- verify / gc / stats ---------------------------------------------------------------

    def _verify(self, snapshot_id: str | None, read_data: bool) -> VerifyReport:
        if snapshot_id is not None:
            self._load_manifest(snapshot_id, VersionProbe)  # unknown id → NotFound
            ids = [snapshot_id]
        else:
            ids = [i for i in map(id_of_key, self._manifest_keys()) if i is not None]
        verifier = Verifier(self._objects, self._get_pools().io, self._load_full_manifest)
        return verifier.run(ids, read_data=read_data)

    def _load_full_manifest(self, snapshot_id: str) -> Manifest:
        return self._load_manifest(snapshot_id, Manifest)

    def _gc(self, grace: float) -> GcReport:
        if self._read_config() is None:
            return GcReport(objects_deleted=0, bytes_deleted=0)
        collector = Collector(
            self._objects,
            self._read_refs,
            self._get_pools().io,
            lease_seconds=self._gc_lease_seconds,
        )
        return collector.run(grace)

    def _stats(self) -> StoreStats:
        keys = self._manifest_keys()
        refs = [r for r in self._get_pools().io.map(self._read_refs, keys) if r is not None]
        unique: dict[str, int] = {ref.hash: ref.length for m in refs for ref in m.chunks}
        stored = _stored_sizes(self._objects)
        referenced_stored = sum(stored.get(digest, 0) for digest in unique)
        unique_bytes = sum(unique.values())
        logical = sum(m.size for m in refs)
        orphans = {d: size for d, size in stored.items() if d not in unique}
        return StoreStats(
            snapshots=len(refs),
            logical_bytes=logical,
            stored_bytes=referenced_stored,
            chunks=len(unique),
            dedup_ratio=logical / unique_bytes if unique_bytes else 1.0,
            compression_ratio=unique_bytes / referenced_stored if referenced_stored else 1.0,
            extra={
                "unique_bytes": unique_bytes,
                "missing_chunks": sum(1 for digest in unique if digest not in stored),
                "unreferenced_chunks": len(orphans),
                "unreferenced_bytes": sum(orphans.values()),
            },
        )


def _stored_sizes(objects: ObjectStore) -> dict[str, int]:
    """Stored size per chunk hash, from ``chunks/`` and (if not there) ``trash/``."""
    sizes: dict[str, int] = {}
    for prefix in (TRASH, CHUNKS):  # chunks/ second: it wins for a chunk in both
        for info in objects.list(prefix):
            digest = digest_of_key(info.key)
            if digest is not None:
                sizes[digest] = info.size
    return sizes


async def _pump(tar: AsyncIterator[bytes], writer: StreamWriter) -> None:
    """Feed the stream to the writer in batches of about BATCH_SIZE bytes.

    Pieces that are not ``bytes`` are copied: a producer may reuse its buffer once
    it has yielded, but the pipeline reads pieces later, on another thread.
    """
    batch: list[bytes] = []
    pending = 0
    async for piece in tar:
        if not piece:
            continue
        batch.append(piece if type(piece) is bytes else bytes(piece))
        pending += len(piece)
        if pending >= BATCH_SIZE:
            await writer.send(batch)
            batch, pending = [], 0
    if batch:
        await writer.send(batch)

"""Reading and writing the chunked store's records: config, manifests, indexes, use.

One :class:`Records` per store, shared by everything that touches those objects
(the store itself, copies between stores, verify, gc, stats), so that each rule
of docs/FORMAT.md about them is written once: how the config is created and
refused, how a manifest's version is checked before its fields, how a tar index
is checked against the digest its manifest pins (:func:`check_index`), and how a
long save re-checks the chunks it deduplicated before it may commit.

Blocking: every method does object-store I/O; call it from a worker thread.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TypeVar

import msgspec

from docksnap.errors import (
    InvalidSnapshotError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    StoreError,
    StoreFormatError,
)
from docksnap.model import DirectorySnapshot
from docksnap.store.base import SnapshotInfo, SnapshotSource
from docksnap.store.chunked.format import (
    CONFIG_KEY,
    FORMAT_NAME,
    FORMAT_VERSIONS,
    MANIFEST_VERSIONS,
    MANIFESTS,
    TAG_RAW,
    TAG_ZSTD,
    ChunkDecodeError,
    ChunkerParams,
    ChunkRef,
    IndexRef,
    LastUsed,
    Manifest,
    ManifestHeader,
    ManifestRefs,
    StoreConfig,
    TarIndex,
    VersionProbe,
    chunk_key,
    decode_record,
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
from docksnap.store.chunked.spool import IndexSpool
from docksnap.store.objects import ObjectNotFoundError, ObjectStore
from docksnap.tarstream import TarEntry

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Records:
    """The record-level view of one chunked store. Thread-safe.

    ``new_store_chunker`` is written into ``config`` only when this is the first
    writer of an empty store; an existing config always wins.
    """

    def __init__(self, objects: ObjectStore, *, new_store_chunker: ChunkerParams) -> None:
        self._objects = objects
        self._new_store_chunker = new_store_chunker
        self._config: StoreConfig | None = None

    @property
    def url(self) -> str:
        return self._objects.url

    @property
    def objects(self) -> ObjectStore:
        return self._objects

    # --- config ------------------------------------------------------------------------

    def read_config(self) -> StoreConfig | None:
        """The store's config, or None for an empty store; StoreFormatError if alien.

        Cached once read: the config never changes after it is written.
        """
        if self._config is not None:
            return self._config
        try:
            raw = self._objects.get(CONFIG_KEY)
        except ObjectNotFoundError:
            return None
        self._config = self._parse_config(raw)
        return self._config

    def config_for_write(self, version: int) -> StoreConfig:
        """The config a writer of format ``version`` follows, created if need be.

        The first writer of an empty store creates it (``put_if_absent``). A
        version-2 writer upgrades a version-1 store in place (same chunker; its
        version-1 snapshots stay readable, while an older docksnap then refuses the
        store instead of misreading it). A version-1 writer refuses a version-2
        store with StoreFormatError.
        """
        config = self.read_config()
        if config is None:
            fresh = StoreConfig(
                version=version, chunker=self._new_store_chunker, created_at=time.time()
            )
            self._objects.put_if_absent(CONFIG_KEY, msgspec.json.encode(fresh))
            # Whoever won the race wrote the config every writer must follow.
            config = self.read_config()
            if config is None:
                raise StoreError(self.url, f"{CONFIG_KEY} vanished right after it was written")
        if config.version == version:
            return config
        if config.version > version:
            raise StoreFormatError(
                self.url,
                f"store is format version {config.version}; a version-{version} writer "
                "must not write into it",
            )
        upgraded = msgspec.structs.replace(config, version=version)
        # put, not put_if_absent: racing upgraders all write the same bytes' meaning.
        self._objects.put(CONFIG_KEY, msgspec.json.encode(upgraded))
        self._config = upgraded
        return upgraded

    def _parse_config(self, raw: bytes) -> StoreConfig:
        try:
            probe = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise StoreFormatError(self.url, f"{CONFIG_KEY} is not JSON: {exc}") from exc
        if not isinstance(probe, dict) or probe.get("format") != FORMAT_NAME:
            raise StoreFormatError(self.url, f"{CONFIG_KEY} does not describe a {FORMAT_NAME}")
        version = probe.get("version")
        if version not in FORMAT_VERSIONS:
            raise StoreFormatError(
                self.url,
                f"store format version {version!r} is not supported "
                f"(this docksnap reads versions {', '.join(map(str, FORMAT_VERSIONS))})",
            )
        try:
            config = msgspec.json.decode(raw, type=StoreConfig)
        except msgspec.DecodeError as exc:
            raise StoreFormatError(self.url, f"{CONFIG_KEY} is malformed: {exc}") from exc
        if config.hash != "blake3" or (config.codec.raw, config.codec.zstd) != (TAG_RAW, TAG_ZSTD):
            raise StoreFormatError(self.url, f"unsupported hash or codec in {CONFIG_KEY}")
        return config

    # --- manifests -----------------------------------------------------------------------

    def manifest(self, snapshot_id: str, kind: type[_T]) -> _T:
        """Decode ``manifests/<id>`` as ``kind``. Raises SnapshotNotFoundError,
        SnapshotCorruptError (undecodable) or StoreFormatError (unknown version)."""
        return self.manifest_with_bytes(snapshot_id, kind)[1]

    def manifest_with_bytes(self, snapshot_id: str, kind: type[_T]) -> tuple[bytes, _T]:
        """As :meth:`manifest`, with the stored bytes (a copy writes them unchanged)."""
        self.read_config()  # an alien store raises StoreFormatError before anything else
        if not is_snapshot_id(snapshot_id):
            raise SnapshotNotFoundError(snapshot_id, self.url)
        key = manifest_key(snapshot_id)
        try:
            stored = self._objects.get(key)
        except ObjectNotFoundError:
            raise SnapshotNotFoundError(snapshot_id, self.url) from None
        return stored, self._decode_manifest(snapshot_id, key, stored, kind)

    def _decode_manifest(self, snapshot_id: str, key: str, stored: bytes, kind: type[_T]) -> _T:
        try:
            packed = open_record(stored)
            version = decode_record(packed, VersionProbe).version
        except ChunkDecodeError as exc:
            detail = f"manifest {key} is unreadable: {exc}"
            raise SnapshotCorruptError(snapshot_id, detail) from None
        if version not in MANIFEST_VERSIONS:
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

    def manifest_exists(self, snapshot_id: str) -> bool:
        """Whether ``snapshot_id`` is committed (existence only, nothing decoded)."""
        self.read_config()
        return is_snapshot_id(snapshot_id) and self._objects.exists(manifest_key(snapshot_id))

    def refs(self, key: str) -> ManifestRefs | None:
        """For gc and stats: a manifest's references, None if it was deleted meanwhile."""
        snapshot_id = id_of_key(key)
        if snapshot_id is None:
            raise StoreError(self.url, f"unexpected object {key} among the manifests")
        try:
            return self.manifest(snapshot_id, ManifestRefs)
        except SnapshotNotFoundError:
            return None

    def manifest_keys(self) -> builtins.list[str]:
        """Every ``manifests/`` key; none in an empty store."""
        if self.read_config() is None:
            return []
        return [info.key for info in self._objects.list(MANIFESTS)]

    def snapshot_ids(self) -> builtins.list[str]:
        return [i for i in map(id_of_key, self.manifest_keys()) if i is not None]

    def info(self, snapshot_id: str) -> SnapshotInfo:
        """The catalogue record: manifest header plus the use record."""
        header = self.manifest(snapshot_id, ManifestHeader)
        return info_from_header(header, self.last_used(snapshot_id))

    def commit(self, manifest: Manifest) -> bool:
        """Write the manifest with ``put_if_absent``: the commit point. False if taken."""
        return self.commit_stored(manifest.id, encode_record(manifest))

    def commit_stored(self, snapshot_id: str, stored: bytes) -> bool:
        """:meth:`commit` of an encoded manifest (a copy's, byte for byte)."""
        return self._objects.put_if_absent(manifest_key(snapshot_id), stored)

    def stored_manifest(self, snapshot_id: str) -> bytes | None:
        """The manifest's bytes as stored, undecoded; None if there is none."""
        try:
            return self._objects.get(manifest_key(snapshot_id))
        except ObjectNotFoundError:
            return None

    # --- tar indexes -----------------------------------------------------------------------

    def index_bytes(self, snapshot_id: str, ref: IndexRef) -> tuple[bytes, TarIndex]:
        """The stored index object ``ref`` names, checked (:func:`check_index`)."""
        try:
            stored = self._objects.get(ref.key)
        except ObjectNotFoundError:
            raise SnapshotCorruptError(snapshot_id, f"tar index {ref.key} is missing") from None
        return stored, check_index(snapshot_id, ref, stored)

    def index(self, snapshot_id: str) -> builtins.list[TarEntry]:
        """The snapshot's tar entries; SnapshotCorruptError if the index is not intact."""
        ref = self.manifest(snapshot_id, ManifestHeader).index
        if ref is None:
            raise SnapshotCorruptError(snapshot_id, "the manifest references no tar index")
        return builtins.list(self.index_bytes(snapshot_id, ref)[1].entries)

    def write_index(
        self, snapshot_id: str, spool: IndexSpool, chunks: Sequence[ChunkRef] = ()
    ) -> IndexRef:
        """Write ``indexes/<id>`` from a save's spooled entries (and close the spool);
        the reference the manifest will pin it by. ``chunks``: the stream's chunk
        list, which a per-file save's member ranges index into."""
        try:
            stored = spool.encode_record(snapshot_id, chunks)
        finally:
            spool.close()
        return self.put_index(snapshot_id, stored, spool.count)

    def put_index(self, snapshot_id: str, stored: bytes, entries: int) -> IndexRef:
        """Write an encoded index object (a save's, or a copy's verified bytes).

        ``put_if_absent``, never ``put``: two writers of one id (two hosts, or a
        copy beside a save) must not replace the index the winner's manifest pins
        by digest. An index with the same bytes (a failed earlier attempt of the
        same save or copy) is taken as ours. Different bytes raise StoreError
        ("already exists"): another writer of this id committed or is committing,
        or failed after writing its index, which gc removes after its grace.
        """
        key = index_key(snapshot_id)
        for _ in range(2):  # once more if the one found vanished (gc) before we read it
            if self._objects.put_if_absent(key, stored):
                break
            try:
                if self._objects.get(key) == stored:
                    break
            except ObjectNotFoundError:
                continue
            raise StoreError(
                self.url,
                f"snapshot {snapshot_id} already exists or is being saved by another "
                f"writer (its tar index {key} differs from this save's)",
            )
        return IndexRef(
            key=key, digest=f"blake3:{hash_hex(stored)}", entries=entries, stored_size=len(stored)
        )

    # --- use records -----------------------------------------------------------------------

    def last_used(self, snapshot_id: str) -> float | None:
        try:
            raw = self._objects.get(used_key(snapshot_id))
        except ObjectNotFoundError:
            return None
        try:
            return msgspec.json.decode(raw, type=LastUsed).last_used_at
        except msgspec.DecodeError:
            log.warning("ignoring unreadable use record %s", used_key(snapshot_id))
            return None

    def write_last_used(self, snapshot_id: str, when: float) -> None:
        self._objects.put(used_key(snapshot_id), msgspec.json.encode(LastUsed(when)))

    def use_record_bytes(self, snapshot_id: str) -> bytes | None:
        try:
            return self._objects.get(used_key(snapshot_id))
        except ObjectNotFoundError:
            return None

    def put_use_record_bytes(self, snapshot_id: str, record: bytes) -> None:
        self._objects.put(used_key(snapshot_id), record)

    # --- the re-check of deduplicated chunks ---------------------------------------------------

    def recheck_deduplicated(
        self, snapshot_id: str, deduped: Iterable[str], max_write_seconds: float
    ) -> None:
        """After a long write, make sure every chunk it relied on is still stored.

        gc may have trashed one since the writer saw it; moving it back now restarts
        the grace period, which a commit right after this easily fits in. Raises
        StoreError (nothing committed) if one is gone altogether.
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
                    f"against was garbage-collected during a write longer than "
                    f"{max_write_seconds:.0f} s",
                ) from None
            self._objects.put_if_absent(chunk_key(digest), stored)


def check_index(snapshot_id: str, ref: IndexRef, stored: bytes) -> TarIndex:
    """The one check of a stored tar index against the manifest that pins it.

    Its BLAKE3 must equal ``ref.digest``, it must decode, and name the snapshot and
    the entry count the manifest gives. Raises SnapshotCorruptError with the reason.
    """
    actual = f"blake3:{hash_hex(stored)}"
    if actual != ref.digest:
        detail = f"tar index {ref.key} hashes to {actual}, manifest says {ref.digest}"
        raise SnapshotCorruptError(snapshot_id, detail)
    try:
        index = decode_record(open_record(stored), TarIndex)
    except ChunkDecodeError as exc:
        raise SnapshotCorruptError(
            snapshot_id, f"tar index {ref.key} is unreadable: {exc}"
        ) from None
    if (
        index.snapshot_id != snapshot_id
        or len(index.entries) != ref.entries
        or len(index.members) not in (0, ref.entries)
    ):
        detail = f"tar index {ref.key} does not match its manifest (id or entry count)"
        raise SnapshotCorruptError(snapshot_id, detail)
    return index


def info_from_header(header: ManifestHeader, last_used: float | None) -> SnapshotInfo:
    """A :class:`SnapshotInfo` from a manifest; SnapshotCorruptError if it holds nonsense."""
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
        stored_size=header.stored_size,
    )

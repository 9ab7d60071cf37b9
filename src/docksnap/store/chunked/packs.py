"""Format version 2: many chunks per stored object (packs), and the chunk index.

A **pack** is encoded chunks back to back, then a table of contents, so it is
self-describing; its key is ``packs/<hh>/<256 random bits, hex>``. Its table
is also stored on its own as ``packindex/<hh>/<pack id>``, which is what readers
and writers load: the chunk → (pack, offset, length) map of the whole store,
held in memory as sorted fixed-width arrays (:class:`ChunkIndex`, 52 bytes per
chunk), not as a dict of Python objects. docs/FORMAT.md §11 has the byte layout.

Everything here is pure (no object-store I/O) except :func:`load_index`.
"""

from __future__ import annotations

import bisect
import heapq
import mmap
import secrets
import struct
import sys
import threading
from array import array
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

import blake3

from docksnap.store.objects import ObjectNotFoundError, ObjectStore

PACKS: Final = "packs/"
PACK_INDEX: Final = "packindex/"
PENDING: Final = "pending/"
QUARANTINE: Final = "quarantine/"
PACK_MAGIC: Final = b"DSNPACK2"
INDEX_MAGIC: Final = b"DSNPIDX2"
DIGEST_SIZE: Final = 32
_ENTRY = struct.Struct("<32sIII")  # digest, offset in the pack, stored length, raw length
ENTRY_SIZE: Final = _ENTRY.size  # 44
_PACK_TAIL = struct.Struct("<I8s")  # entry count, magic
_INDEX_HEAD = struct.Struct("<8sIQ")  # magic, entry count, pack size
PACK_TARGET: Final = 16 * 1024 * 1024
# On local disk a pack costs one fsync, not one request: halving the size cost no
# measurable speed, and a save holds three packs in memory (docs/FORMAT.md §11.2).
LOCAL_PACK_TARGET: Final = 8 * 1024 * 1024


class PackFormatError(Exception):
    """A pack or pack index object does not decode; the message says why."""


def pack_key(pack_id: str) -> str:
    return f"{PACKS}{pack_id[:2]}/{pack_id}"


def pack_index_key(pack_id: str) -> str:
    return f"{PACK_INDEX}{pack_id[:2]}/{pack_id}"


def pending_key(pack_id: str) -> str:
    return f"{PENDING}{pack_id}"


def pack_id_of_key(key: str) -> str | None:
    """The pack id a ``packs/``, ``packindex/`` or ``pending/`` key names, or None."""
    name = key.rpartition("/")[2]
    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name
    return None


@dataclass(frozen=True, slots=True)
class PackTable:
    """One pack's table of contents: ``entries`` are ENTRY_SIZE records sorted by digest."""

    pack_id: str
    pack_size: int
    entries: bytes

    def __len__(self) -> int:
        return len(self.entries) // ENTRY_SIZE

    def __iter__(self) -> Iterator[tuple[bytes, int, int, int]]:
        return iter(_ENTRY.iter_unpack(self.entries))

    def encode_index(self) -> bytes:
        """The ``packindex/`` object: header, entries, BLAKE3 of both."""
        body = _INDEX_HEAD.pack(INDEX_MAGIC, len(self), self.pack_size) + self.entries
        return body + blake3.blake3(body).digest()

    @classmethod
    def decode_index(cls, pack_id: str, stored: bytes) -> PackTable:
        if len(stored) < _INDEX_HEAD.size + DIGEST_SIZE:
            raise PackFormatError("pack index is too short")
        body, check = stored[:-DIGEST_SIZE], stored[-DIGEST_SIZE:]
        if blake3.blake3(body).digest() != check:
            raise PackFormatError("pack index fails its checksum")
        magic, count, pack_size = _INDEX_HEAD.unpack_from(body)
        entries = body[_INDEX_HEAD.size :]
        if magic != INDEX_MAGIC or len(entries) != count * ENTRY_SIZE:
            raise PackFormatError("pack index header does not match its contents")
        return cls(pack_id, pack_size, entries)


class PackBuffers:
    """Pack-sized buffers, reused from one pack to the next. Thread-safe.

    Anonymous mappings, not heap memory. A pack-sized ``malloc``/``free`` per pack
    raises glibc's dynamic mmap threshold, after which every large buffer of the
    process comes from per-thread arenas that keep what they free: the pack copy
    this replaces cost ~40 MiB of peak RSS over a 1 GiB save. Reused, because
    first-touching fresh pages runs at ~1 GB/s on the development VM (reference
    performance.md §2.1), ~1 ns per stored byte. At most ``keep`` idle buffers
    are kept.
    """

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self._keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self.size)

    def give_back(self, buffer: mmap.mmap) -> None:
        with self._lock:
            known = any(free is buffer for free in self._free)
            if not known and len(self._free) < self._keep and len(buffer) == self.size:
                self._free.append(buffer)


@dataclass(frozen=True, slots=True)
class SealedPack:
    """A finished pack: its bytes (to store once) and its table (to index it).

    ``data`` is a read-only view of the builder's buffer, handed to the object
    store as it is (no copy). Call :meth:`release` once the pack is stored, so
    the buffer serves the next pack; ``data`` is unusable afterwards.
    """

    data: memoryview
    table: PackTable
    buffer: mmap.mmap = field(repr=False, compare=False)
    pool: PackBuffers | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return pack_key(self.table.pack_id)

    def release(self) -> None:
        """Give the buffer back for reuse. Idempotent.

        If something still holds an export of ``data`` (an object store that
        kept the buffer), the buffer is not reused: it is freed when let go.
        """
        try:
            self.data.release()
        except BufferError:
            return
        if self.pool is not None:
            self.pool.give_back(self.buffer)


class PackBuilder:
    """Collects encoded chunks into packs of at most ``target`` bytes. Thread-safe.

    :meth:`add` returns the open pack, sealed, when the chunk it is given does not
    fit in it any more (that chunk starts the next pack); :meth:`seal` returns the
    last, partial one. A chunk too large for an empty pack gets a pack of its own.
    Memory: the open pack's buffer (from ``buffers``, else a fresh mapping) and its
    table entries: no object per chunk, since a pack of small chunks (per-file
    snapshots of small files) holds ~100,000 of them.
    """

    def __init__(self, target: int = PACK_TARGET, buffers: PackBuffers | None = None) -> None:
        self._buffers = buffers if buffers is not None and buffers.size == target else None
        self._target = target
        self._lock = threading.Lock()
        self._buffer: mmap.mmap | None = None
        self._fill = 0
        self._entries = bytearray()

    def add(self, digest: bytes, blob: bytes | memoryview, length: int) -> SealedPack | None:
        with self._lock:
            sealed = None
            if self._buffer is not None and self._fill + _room(len(blob), self._entries) > len(
                self._buffer
            ):
                sealed = self._seal_locked()
            if self._buffer is None:
                self._buffer = self._new_buffer(_room(len(blob), b""))
            end = self._fill + len(blob)
            self._buffer[self._fill : end] = blob
            self._entries += _ENTRY.pack(digest, self._fill, len(blob), length)
            self._fill = end
            return sealed

    def seal(self) -> SealedPack | None:
        with self._lock:
            return self._seal_locked() if self._entries else None

    def _new_buffer(self, needed: int) -> mmap.mmap:
        if needed > self._target:
            return mmap.mmap(-1, needed)  # one oversized chunk: a pack of its own
        if self._buffers is not None:
            return self._buffers.take()
        return mmap.mmap(-1, self._target)

    def _seal_locked(self) -> SealedPack:
        buffer, entries, fill = self._buffer, self._entries, self._fill
        assert buffer is not None
        self._buffer, self._entries, self._fill = None, bytearray(), 0
        # Sorted by digest (the first field; a pack never holds one digest twice).
        count = len(entries) // ENTRY_SIZE
        rows = sorted(entries[i * ENTRY_SIZE : (i + 1) * ENTRY_SIZE] for i in range(count))
        table = b"".join(rows)
        del rows, entries
        size = fill + len(table) + _PACK_TAIL.size
        buffer[fill : fill + len(table)] = table
        buffer[size - _PACK_TAIL.size : size] = _PACK_TAIL.pack(count, PACK_MAGIC)
        # A random name, not the content's hash: two saves of the same data build
        # byte-identical packs, and a writer that found "its" pack already stored
        # could then rely on a pack gc has marked and is about to delete.
        pack_id = secrets.token_hex(32)
        pool = self._buffers if len(buffer) == self._target else None
        data = memoryview(buffer)[:size].toreadonly()
        return SealedPack(data, PackTable(pack_id, size, table), buffer, pool)


def _room(blob_size: int, entries: bytes | bytearray) -> int:
    """Bytes a pack needs besides its blobs so far to take one more blob of this size."""
    return blob_size + len(entries) + ENTRY_SIZE + _PACK_TAIL.size


def read_pack_table(pack_id: str, data: bytes | memoryview) -> PackTable:
    """The table inside a whole pack (for gc and repair without its index object)."""
    if len(data) < _PACK_TAIL.size:
        raise PackFormatError("pack is too short")
    count, magic = _PACK_TAIL.unpack_from(data, len(data) - _PACK_TAIL.size)
    start = len(data) - _PACK_TAIL.size - count * ENTRY_SIZE
    if magic != PACK_MAGIC or start < 0:
        raise PackFormatError("pack tail is malformed")
    return PackTable(pack_id, len(data), bytes(data[start : len(data) - _PACK_TAIL.size]))


@dataclass(frozen=True, slots=True)
class Location:
    """Where a chunk is stored: a pack, the blob's offset and stored length, raw length."""

    pack_id: str
    offset: int
    stored: int
    length: int


class ChunkIndex:
    """Chunk digest → location over many packs, compact and immutable.

    Held as one sorted ``bytes`` of digests (32 bytes per chunk), one
    ``array('I')`` of (pack number, offset, stored length, raw length) (16 bytes)
    and one ``array('I')`` of each digest's first 4 bytes (4 bytes), so 1,000,000
    chunks take ~52 MB, against ~200 MB for a dict of Python objects. Lookups are a
    binary search of the prefixes in C, then a compare of the few digests that share
    one (a search with a Python key function cost ~5 us a chunk: a third of a
    restore's CPU on small files). ``excluded`` packs (those gc has marked for
    deletion) are invisible to :meth:`find` for writers.
    """

    def __init__(
        self,
        tables: Iterable[PackTable] = (),
        *,
        base: ChunkIndex | None = None,
        drop: frozenset[str] = frozenset(),
    ) -> None:
        """Index ``tables``, plus ``base``'s chunks in packs not in ``drop`` (an
        update merges what is new instead of re-reading every pack index)."""
        tables = list(tables)
        kept: list[str] = [] if base is None else [p for p in base._pack_ids if p not in drop]
        self._pack_ids: list[str] = kept + [t.pack_id for t in tables]
        numbers = {pack_id: number for number, pack_id in enumerate(self._pack_ids)}
        self._pack_sizes: dict[str, int] = {}
        if base is not None:
            self._pack_sizes.update((p, base._pack_sizes[p]) for p in kept)
        self._pack_sizes.update((t.pack_id, t.pack_size) for t in tables)
        runs = [_run(numbers[t.pack_id], t) for t in tables]
        if base is not None:
            runs.append(_base_run(base, numbers))
        digests = bytearray()
        cols = array("I")
        for digest, number, offset, stored, length in heapq.merge(*runs):
            digests += digest
            cols.extend((number, offset, stored, length))
        self._digests = bytes(digests)
        self._cols = cols
        self._prefixes = _prefixes(self._digests)

    def __len__(self) -> int:
        return len(self._digests) // DIGEST_SIZE

    @property
    def pack_ids(self) -> frozenset[str]:
        return frozenset(self._pack_ids)

    def pack_size(self, pack_id: str) -> int:
        return self._pack_sizes[pack_id]

    def nbytes(self) -> int:
        """Memory held by the arrays (the per-chunk cost)."""
        arrays = (self._cols, self._prefixes)
        return len(self._digests) + sum(int(a.itemsize) * len(a) for a in arrays)

    def find(self, digest: bytes, excluded: frozenset[str] = frozenset()) -> Location | None:
        """A location of ``digest`` in a pack not in ``excluded``, or None."""
        prefix = int.from_bytes(digest[:_PREFIX], "big")
        prefixes, data = self._prefixes, self._digests
        i = bisect.bisect_left(prefixes, prefix)
        while i < len(prefixes) and prefixes[i] == prefix:
            if data[i * 32 : i * 32 + 32] == digest:
                number, offset, stored, length = self._cols[i * 4 : i * 4 + 4]
                pack_id = self._pack_ids[number]
                if pack_id not in excluded:
                    return Location(pack_id, offset, stored, length)
            i += 1
        return None

    def locations(self) -> Iterator[tuple[bytes, Location]]:
        """Every (digest, location), in digest order (a chunk in two packs: twice)."""
        for i in range(len(self)):
            number, offset, stored, length = self._cols[i * 4 : i * 4 + 4]
            digest = self._digests[i * 32 : i * 32 + 32]
            yield digest, Location(self._pack_ids[number], offset, stored, length)


_PREFIX = 4  # bytes of a digest in ChunkIndex._prefixes


def _prefixes(digests: bytes) -> array[int]:
    """The first :data:`_PREFIX` bytes of each 32-byte digest, as big-endian
    integers in the digests' (sorted) order; strided copies, no loop per digest."""
    count = len(digests) // DIGEST_SIZE
    view = memoryview(digests)
    packed = bytearray(_PREFIX * count)
    for k in range(_PREFIX):
        packed[k::_PREFIX] = view[k::DIGEST_SIZE]
    prefixes = array("I")
    assert prefixes.itemsize == _PREFIX  # true wherever CPython runs
    prefixes.frombytes(packed)
    if sys.byteorder == "little":
        prefixes.byteswap()
    return prefixes


def _base_run(
    base: ChunkIndex, numbers: dict[str, int]
) -> Iterator[tuple[bytes, int, int, int, int]]:
    for i in range(len(base)):
        old, offset, stored, length = base._cols[i * 4 : i * 4 + 4]
        number = numbers.get(base._pack_ids[old])
        if number is not None:
            yield base._digests[i * 32 : i * 32 + 32], number, offset, stored, length


def _run(number: int, table: PackTable) -> Iterator[tuple[bytes, int, int, int, int]]:
    for digest, offset, stored, length in table:
        yield digest, number, offset, stored, length


def _tables_of(index: ChunkIndex) -> list[PackTable]:
    """The pack tables ``index`` was built from (to merge a small index into a large one)."""
    entries: dict[str, list[tuple[bytes, int, int, int]]] = {}
    for digest, where in index.locations():
        entries.setdefault(where.pack_id, []).append(
            (digest, where.offset, where.stored, where.length)
        )
    return [
        PackTable(pack_id, index.pack_size(pack_id), b"".join(_ENTRY.pack(*e) for e in rows))
        for pack_id, rows in entries.items()
    ]


def load_tables(objects: ObjectStore, pool: ThreadPoolExecutor) -> list[PackTable]:
    """Every pack's table, from the ``packindex/`` objects (fetched in parallel).

    An index object that vanished meanwhile (gc) is skipped; one that does not
    decode raises :class:`PackFormatError` naming it.
    """
    keys = [info.key for info in objects.list(PACK_INDEX)]

    def load(key: str) -> PackTable | None:
        pack_id = pack_id_of_key(key)
        if pack_id is None:
            return None
        try:
            stored = objects.get(key)
        except ObjectNotFoundError:
            return None
        try:
            return PackTable.decode_index(pack_id, stored)
        except PackFormatError as exc:
            raise PackFormatError(f"{key}: {exc}") from None

    return [table for table in pool.map(load, keys) if table is not None]


def quarantine_key(digest: bytes, pack_id: str) -> str:
    return f"{QUARANTINE}{digest.hex()}/{pack_id}"


def quarantined(objects: ObjectStore) -> frozenset[tuple[bytes, str]]:
    """(chunk digest, pack) pairs that verify found damaged: readers and writers use
    another copy of the chunk, and a writer that has none stores the chunk afresh."""
    found: set[tuple[bytes, str]] = set()
    for info in objects.list(QUARANTINE):
        parts = info.key.split("/")
        if len(parts) == 3 and pack_id_of_key(info.key) and len(parts[1]) == 64:
            try:
                found.add((bytes.fromhex(parts[1]), parts[2]))
            except ValueError:
                continue
    return frozenset(found)


def pending_packs(objects: ObjectStore) -> frozenset[str]:
    """Packs gc has marked for deletion: writers must not deduplicate against them."""
    return frozenset(
        pack_id
        for pack_id in (pack_id_of_key(info.key) for info in objects.list(PENDING))
        if pack_id is not None
    )


class LayeredIndex:
    """A large :class:`ChunkIndex` plus a small one of packs indexed since: adding a
    few packs to a store of millions of chunks must not re-merge the large one."""

    def __init__(
        self,
        base: ChunkIndex,
        recent: ChunkIndex,
        quarantined: frozenset[tuple[bytes, str]] = frozenset(),
    ) -> None:
        self.base = base
        self.recent = recent
        self.quarantined = quarantined

    def __len__(self) -> int:
        return len(self.base) + len(self.recent)

    @property
    def pack_ids(self) -> frozenset[str]:
        return self.base.pack_ids | self.recent.pack_ids

    def nbytes(self) -> int:
        return self.base.nbytes() + self.recent.nbytes()

    def find(self, digest: bytes, excluded: frozenset[str] = frozenset()) -> Location | None:
        """A location of ``digest`` outside ``excluded`` packs, and not one that verify
        found damaged (quarantined) while the chunk is stored intact elsewhere too."""
        while True:
            where = self.recent.find(digest, excluded) or self.base.find(digest, excluded)
            if where is None or (digest, where.pack_id) not in self.quarantined:
                return where
            excluded = excluded | {where.pack_id}

    def copies(self, digest: bytes) -> list[Location]:
        """Every stored copy of ``digest``, quarantined ones included (for repair)."""
        found: list[Location] = []
        for layer in (self.recent, self.base):
            seen: frozenset[str] = frozenset()
            while (where := layer.find(digest, seen)) is not None:
                found.append(where)
                seen |= {where.pack_id}
        return found

    def locations(self) -> Iterator[tuple[bytes, Location]]:
        yield from self.base.locations()
        yield from self.recent.locations()


class IndexCache:
    """The store's chunk index, loaded once and brought up to date on demand.

    :meth:`refresh` lists ``packindex/`` (one request) and loads only the packs it
    has not seen. They go into a small recent layer, merged into the large one
    when it grows past an eighth of it (or when packs disappeared). Thread-safe.
    """

    def __init__(self, objects: ObjectStore, pool: ThreadPoolExecutor) -> None:
        self._objects = objects
        self._pool = pool
        self._lock = threading.Lock()
        self._index = LayeredIndex(ChunkIndex(), ChunkIndex())
        self._loaded = False

    def current(self) -> LayeredIndex:
        """The index as last loaded (loading it the first time)."""
        with self._lock:
            if self._loaded:
                return self._index
        return self.refresh()

    def refresh(self) -> LayeredIndex:
        with self._lock:
            listed = {
                pack_id
                for pack_id in (pack_id_of_key(i.key) for i in self._objects.list(PACK_INDEX))
                if pack_id is not None
            }
            known = self._index.pack_ids
            new = listed - known
            gone = frozenset(known - listed)
            if new or gone:
                tables = [t for t in self._pool.map(self._load, sorted(new)) if t is not None]
                base, recent = self._index.base, self._index.recent
                if gone or 8 * (len(recent) + sum(map(len, tables))) > len(base):
                    merged = ChunkIndex(tables + _tables_of(recent), base=base, drop=gone)
                    self._index = LayeredIndex(merged, ChunkIndex())
                else:
                    self._index = LayeredIndex(base, ChunkIndex(tables, base=recent))
            self._index.quarantined = quarantined(self._objects)
            self._loaded = True
            return self._index

    def _load(self, pack_id: str) -> PackTable | None:
        key = pack_index_key(pack_id)
        try:
            stored = self._objects.get(key)
        except ObjectNotFoundError:
            return None
        try:
            return PackTable.decode_index(pack_id, stored)
        except PackFormatError as exc:
            raise PackFormatError(f"{key}: {exc}") from None

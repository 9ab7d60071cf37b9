"""The on-store format of the chunked store: keys, records and the chunk codec.

Everything here is a storage format described in ``docs/FORMAT.md``; changing a
field, a key pattern or a codec tag means a new format version.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any, Final, TypeVar

import blake3
import msgspec
import zstandard

from docksnap.tarstream import TarEntry

FORMAT_NAME: Final = "docksnap-chunked"
# Version 2 adds packs (docs/FORMAT.md §11); a version-2 store may still hold
# version-1 manifests and their chunks/ objects, which are read as before.
FORMAT_VERSION: Final = 2
FORMAT_VERSIONS: Final = (1, 2)
# Manifest version 3 (§11.11) is version 2 (chunks in packs) cut per file, with a
# digest over the chunk list; version-2 manifests (whole-stream cuts) still read.
MANIFEST_VERSION: Final = 3
MANIFEST_VERSIONS: Final = (1, 2, 3)
PER_FILE_MANIFEST: Final = 3
INDEX_VERSION: Final = 1

CONFIG_KEY: Final = "config"
GC_LOCK_KEY: Final = "locks/gc"
CHUNKS: Final = "chunks/"
TRASH: Final = "trash/"
MANIFESTS: Final = "manifests/"
INDEXES: Final = "indexes/"
USED: Final = "used/"
CLOCK: Final = "clock/"

# Codec tags: the first byte of every chunk, manifest and index object.
TAG_RAW: Final = 0x00
TAG_ZSTD: Final = 0x01
ZSTD_LEVEL: Final = 3

_T = TypeVar("_T")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# --- keys --------------------------------------------------------------------


def chunk_key(digest: str) -> str:
    """``chunks/<first 2 hex>/<64 hex>``: the fan-out keeps directories small."""
    return f"{CHUNKS}{digest[:2]}/{digest}"


def trash_key(digest: str) -> str:
    return f"{TRASH}{digest[:2]}/{digest}"


def manifest_key(snapshot_id: str) -> str:
    return f"{MANIFESTS}{snapshot_id}"


def index_key(snapshot_id: str) -> str:
    return f"{INDEXES}{snapshot_id}"


def used_key(snapshot_id: str) -> str:
    return f"{USED}{snapshot_id}"


def is_snapshot_id(value: str) -> bool:
    """A well-formed id; anything else is unknown without touching the store."""
    return bool(_SNAPSHOT_ID.fullmatch(value))


def digest_of_key(key: str) -> str | None:
    """The chunk hash a ``chunks/`` or ``trash/`` key names, or None if malformed."""
    name = key.rpartition("/")[2]
    return name if _HEX64.fullmatch(name) and key.endswith(f"{name[:2]}/{name}") else None


def id_of_key(key: str) -> str | None:
    """The snapshot id a ``manifests/``, ``indexes/`` or ``used/`` key names."""
    name = key.rpartition("/")[2]
    return name if is_snapshot_id(name) else None


# --- records -----------------------------------------------------------------


class ChunkerParams(msgspec.Struct, frozen=True, kw_only=True):
    """FastCDC-2020 parameters. The cut points (and so dedup) depend on all of them."""

    algorithm: str = "fastcdc2020"
    implementation: str = "pyfastcdc==0.3.1"
    avg_size: int = 64 * 1024
    min_size: int = 16 * 1024
    max_size: int = 256 * 1024
    normalized_chunking: int = 1
    seed: int = 0


class CodecParams(msgspec.Struct, frozen=True, kw_only=True):
    """How chunks, manifests and indexes are encoded: a tag byte, then the payload."""

    raw: int = TAG_RAW
    zstd: int = TAG_ZSTD
    zstd_level: int = ZSTD_LEVEL


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The ``config`` object, JSON, written once when the store is first written."""

    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    hash: str = "blake3"
    chunker: ChunkerParams = msgspec.field(default_factory=ChunkerParams)
    codec: CodecParams = msgspec.field(default_factory=CodecParams)
    created_at: float = 0.0


class ChunkRef(msgspec.Struct, frozen=True, array_like=True):
    """One chunk of a stream: BLAKE3 hex of its uncompressed bytes, and their length."""

    hash: str
    length: int


class SourceRecord(msgspec.Struct, frozen=True):
    container: str
    image: str


class IndexRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where a snapshot's tar index lives and how to check it."""

    key: str
    digest: str  # "blake3:<hex>" of the stored index object's bytes
    entries: int
    stored_size: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """One committed snapshot. Immutable once written; its existence is the commit."""

    version: int
    id: str
    size: int
    dir: str
    name: str | None
    digest: str  # "blake3:<hex>" of the whole tar stream
    created_at: float
    last_used_at: float
    ttl: float | None
    source: SourceRecord | None
    chunks: tuple[ChunkRef, ...]
    index: IndexRef | None
    # Bytes of the objects this save created (new chunk data, compressed, and the
    # tar index); absent from manifests written before it was recorded.
    stored_size: int | None = None


class VersionProbe(msgspec.Struct, frozen=True):
    """Just the ``version`` field of a manifest or index: checked before the rest."""

    version: int


class ManifestHeader(msgspec.Struct, frozen=True, kw_only=True):
    """A manifest without its chunk list: all that listing snapshots needs."""

    version: int
    id: str
    size: int
    dir: str
    name: str | None
    digest: str
    created_at: float
    last_used_at: float
    ttl: float | None
    source: SourceRecord | None
    index: IndexRef | None
    stored_size: int | None = None


class ManifestRefs(msgspec.Struct, frozen=True, kw_only=True):
    """What gc and stats need from a manifest: the chunks and the index it references."""

    version: int
    size: int
    chunks: tuple[ChunkRef, ...]
    index: IndexRef | None


class MemberChunks(msgspec.Struct, frozen=True, array_like=True):
    """Where one member lies in its manifest's chunk list (per-file snapshots):
    chunks ``[header, content)`` hold its header blocks (extension headers
    included; they may hold the headers of neighbouring members without data
    too), and ``[content, end)`` exactly its data with the padding to 512 bytes
    (empty for members without data). ``header_size``: the bytes of its header
    blocks, which begin at the member's ``offset``."""

    header: int
    content: int
    end: int
    header_size: int


class TarIndex(msgspec.Struct, frozen=True, kw_only=True):
    """The ``indexes/<id>`` object: the tar headers of the stream, in order, and
    (per-file snapshots, manifest version 3) each member's chunk ranges."""

    version: int
    snapshot_id: str
    entries: tuple[TarEntry, ...]
    members: tuple[MemberChunks, ...] = ()


class LastUsed(msgspec.Struct, frozen=True):
    """The ``used/<id>`` object, JSON: the latest recorded use."""

    last_used_at: float


class GcLease(msgspec.Struct, frozen=True):
    """The ``locks/gc`` object, JSON: who runs gc, so a second one waits its turn."""

    owner: str
    started_at: float


# --- codec -------------------------------------------------------------------


class ChunkDecodeError(Exception):
    """A stored object's bytes cannot be decoded; the message says why."""


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe but cost ~1 MiB to make: one per thread.
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


_SAMPLE = 8 * 1024
_SAMPLE_GAIN = 0.97


def encode_chunk(data: memoryview | bytes) -> bytes:
    """Tag + zstd frame, or tag + the raw bytes when compression does not shrink them.

    Chunks larger than 4 samples are judged by compressing an 8 KiB sample first:
    incompressible data (media, archives, random) is then stored raw without
    paying for zstd on all of it.
    """
    if len(data) > 4 * _SAMPLE:
        middle = len(data) // 2
        sample = data[middle : middle + _SAMPLE]
        if len(_compressor().compress(sample)) > len(sample) * _SAMPLE_GAIN:
            return b"\x00" + bytes(data)
    packed: bytes = _compressor().compress(data)
    if len(packed) < len(data):
        return b"\x01" + packed
    return b"\x00" + bytes(data)


def decode_chunk(stored: bytes | memoryview, length: int) -> memoryview | bytes:
    """The chunk's uncompressed bytes; the caller still checks its hash.

    ``length`` (from the manifest) bounds decompression, so a corrupt or hostile
    frame header claiming gigabytes cannot make us allocate them.
    """
    if not stored:
        raise ChunkDecodeError("object is empty (no codec tag)")
    tag = stored[0]
    body: memoryview | bytes
    if tag == TAG_RAW:
        body = memoryview(stored)[1:]
    elif tag == TAG_ZSTD:
        frame = memoryview(stored)[1:]
        try:
            declared = zstandard.frame_content_size(frame)
            if declared != length:
                raise ChunkDecodeError(
                    f"zstd frame declares {declared} bytes, manifest says {length}"
                )
            body = _decompressor().decompress(frame)
        except zstandard.ZstdError as exc:
            raise ChunkDecodeError(f"zstd frame does not decode: {exc}") from exc
    else:
        raise ChunkDecodeError(f"unknown codec tag {tag:#04x}")
    if len(body) != length:
        raise ChunkDecodeError(f"decodes to {len(body)} bytes, manifest says {length}")
    return body


def hash_hex(data: memoryview | bytes) -> str:
    return blake3.blake3(data).hexdigest()


def chunk_list_digest(chunks: Iterable[ChunkRef]) -> str:
    """The digest of a per-file snapshot (§11.11): BLAKE3 over each chunk's raw
    32-byte hash and its length (u64le), in order.

    It commits to the stream as the whole-stream BLAKE3 does (each chunk hash
    commits to its bytes), but needs no byte of a chunk reused by reference.
    """
    state = blake3.blake3()
    for ref in chunks:
        state.update(bytes.fromhex(ref.hash) + ref.length.to_bytes(8, "little"))
    return f"blake3:{state.hexdigest()}"


def encode_record(record: Any) -> bytes:
    """A manifest or index: msgpack, zstd with the frame checksum, behind a tag byte."""
    packed = msgspec.msgpack.encode(record)
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    return b"\x01" + cctx.compress(packed)


def open_record(stored: bytes) -> bytes:
    """The msgpack inside an :func:`encode_record` object; :class:`ChunkDecodeError` if bad.

    The zstd frame checksum catches corruption before msgspec sees the bytes.
    """
    if not stored or stored[0] != TAG_ZSTD:
        raise ChunkDecodeError("record does not start with the zstd codec tag")
    try:
        packed: bytes = _decompressor().decompress(memoryview(stored)[1:])
    except zstandard.ZstdError as exc:
        raise ChunkDecodeError(str(exc)) from exc
    return packed


def decode_record(packed: bytes, kind: type[_T]) -> _T:
    """Decode msgpack from :func:`open_record` as ``kind`` (every field type-checked).

    Fields ``kind`` does not declare are skipped without being built, so decoding a
    manifest as :class:`ManifestHeader` does not materialize its chunk list.
    """
    try:
        return msgspec.msgpack.decode(packed, type=kind)
    except msgspec.DecodeError as exc:
        raise ChunkDecodeError(str(exc)) from exc

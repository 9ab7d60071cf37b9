"""Re-encode an untrusted tar stream with canonical headers, checking it on the way.

Imports are stored re-encoded so that what the engine reads at restore is exactly
what docksnap checked: however an archive combined GNU, PAX, star or v7 headers,
each member comes out as one ustar header (preceded by one PAX 'x' header when a
field does not fit), written from the :class:`TarEntry` that was checked. Member
data is copied byte for byte; nothing else of the original survives (unknown PAX
records, user and group names, atime and ctime, sub-second mtimes, global headers,
padding after the end marker).
"""

from __future__ import annotations

from collections.abc import Callable

from .build import MAX_OCTAL_7 as _MAX_OCTAL_7
from .build import MAX_OCTAL_11 as _MAX_OCTAL_11
from .build import TYPEFLAGS as _TYPEFLAGS
from .build import pax_record
from .entry import TarEntry
from .errors import UnsafeArchiveError
from .indexer import BLOCK, DEFAULT_MAX_NAME_LENGTH, TarIndexer

_END_OF_ARCHIVE = bytes(2 * BLOCK)
_PAX_HEADER_NAME = b"././@PaxHeader"
_NAME_SIZE = 100

Check = Callable[[TarEntry], None]


class TarCanonicalizer:
    """A push filter: feed the original stream, get the canonical one back.

    Parsing is strict (:class:`TarIndexer` with ``strict=True``): an ambiguous
    archive raises :class:`AmbiguousArchiveError`. ``check`` is called with every
    member, in stream order, before any of its bytes are returned, so a raising
    check keeps the member out of the output. Errors are sticky: once :meth:`feed`
    or :meth:`finish` raised, every later call raises the same error, so a caller
    that goes on feeding can never get a stream with the refused member left out.

    Memory is bounded: no entry list is kept, only the member whose data is being
    copied. Output pieces reference nothing of the input after :meth:`feed` returns.
    """

    def __init__(self, check: Check, *, max_name_length: int = DEFAULT_MAX_NAME_LENGTH) -> None:
        self._parser = _MemberQueue(max_name_length=max_name_length)
        self._check = check
        self._copy_from = 0
        self._copy_to = 0
        self._pad = 0
        self.members = 0
        self.bytes_out = 0
        self._error: Exception | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Parse ``data`` and return the canonical bytes it completes (maybe b"")."""
        return self._sticky(self._feed, data)

    def finish(self) -> bytes:
        """Check the stream ended cleanly; return the end-of-archive marker."""
        return self._sticky(self._finish)

    def _sticky(self, step: Callable[..., bytes], *args: object) -> bytes:
        if self._error is not None:
            raise self._error
        try:
            return step(*args)
        except Exception as exc:
            self._error = exc
            raise

    def _feed(self, data: bytes | bytearray | memoryview) -> bytes:
        base = self._parser.bytes_seen
        self._parser.feed(data)
        out: list[bytes] = []
        with memoryview(data).cast("B") as view:
            self._copy(view, base, out)
            for entry, (devmajor, devminor), data_start in self._parser.take():
                self._check(entry)
                self.members += 1
                out.append(canonical_header(entry, devmajor, devminor))
                self._copy_from, self._copy_to = data_start, data_start + entry.size
                self._pad = -entry.size % BLOCK
                self._copy(view, base, out)
        piece = out[0] if len(out) == 1 else b"".join(out)
        self.bytes_out += len(piece)
        return piece

    def _finish(self) -> bytes:
        self._parser.finish()
        self.bytes_out += len(_END_OF_ARCHIVE)
        return _END_OF_ARCHIVE

    def _copy(self, view: memoryview, base: int, out: list[bytes]) -> None:
        """Append the current member's data that lies in ``view``, then its padding."""
        if self._copy_from >= self._copy_to and not self._pad:
            return
        end = base + len(view)
        lo, hi = max(self._copy_from, base), min(self._copy_to, end)
        if lo < hi:
            out.append(bytes(view[lo - base : hi - base]))
            self._copy_from = hi
        if self._copy_from >= self._copy_to and self._pad:
            out.append(bytes(self._pad))
            self._pad = 0


class _MemberQueue(TarIndexer):
    """A strict indexer that queues members for :class:`TarCanonicalizer`."""

    def __init__(self, *, max_name_length: int) -> None:
        super().__init__(strict=True, max_name_length=max_name_length)
        self._queue: list[tuple[TarEntry, tuple[int, int], int]] = []

    def _on_member(self, entry: TarEntry, devices: tuple[int, int], data_start: int) -> None:
        self._queue.append((entry, devices, data_start))

    def take(self) -> list[tuple[TarEntry, tuple[int, int], int]]:
        queue, self._queue = self._queue, []
        return queue


def canonical_header(entry: TarEntry, devmajor: int = 0, devminor: int = 0) -> bytes:
    """The header block(s) docksnap writes for ``entry``: ustar, plus PAX if needed.

    Raises :class:`UnsafeArchiveError` for a type that has no type flag ("other") or
    device numbers that do not fit their fields.
    """
    typeflag = _TYPEFLAGS.get(entry.type)
    if typeflag is None:
        raise UnsafeArchiveError(entry.path, f"cannot store a member of type {entry.type!r}")
    name = _encode(entry.path)
    if entry.type == "dir" and name and not name.endswith(b"/"):
        name += b"/"
    link = _encode(entry.link)
    records: list[bytes] = []
    if len(name) > _NAME_SIZE:
        records.append(pax_record(b"path", name))
    if len(link) > _NAME_SIZE:
        records.append(pax_record(b"linkpath", link))
    numbers = {b"uid": entry.uid, b"gid": entry.gid}
    for key, value in numbers.items():
        if value >= _MAX_OCTAL_7:
            records.append(pax_record(key, b"%d" % value))
    if entry.size >= _MAX_OCTAL_11:
        records.append(pax_record(b"size", b"%d" % entry.size))
    if not 0 <= entry.mtime < _MAX_OCTAL_11:
        records.append(pax_record(b"mtime", b"%d" % entry.mtime))
    for xattr, content in entry.xattrs:
        records.append(pax_record(b"SCHILY.xattr." + _encode(xattr), content))
    if entry.type not in ("char", "block"):
        devmajor = devminor = 0
    if not (0 <= devmajor < _MAX_OCTAL_7 and 0 <= devminor < _MAX_OCTAL_7):
        raise UnsafeArchiveError(entry.path, f"device numbers {devmajor},{devminor} too large")
    header = _block(
        name[:_NAME_SIZE],
        typeflag,
        link=link[:_NAME_SIZE],
        mode=entry.mode & 0o7777,
        uid=entry.uid if entry.uid < _MAX_OCTAL_7 else 0,
        gid=entry.gid if entry.gid < _MAX_OCTAL_7 else 0,
        size=entry.size if entry.size < _MAX_OCTAL_11 else 0,
        mtime=entry.mtime if 0 <= entry.mtime < _MAX_OCTAL_11 else 0,
        devmajor=devmajor,
        devminor=devminor,
    )
    if not records:
        return header
    data = b"".join(records)
    pax = _block(_PAX_HEADER_NAME, b"x", size=len(data), mode=0o644)
    return pax + data + bytes(-len(data) % BLOCK) + header


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _block(
    name: bytes,
    typeflag: bytes,
    *,
    link: bytes = b"",
    mode: int,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    block = bytearray(BLOCK)
    block[0 : len(name)] = name
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"%07o\x00" % uid
    block[116:124] = b"%07o\x00" % gid
    block[124:136] = b"%011o\x00" % size
    block[136:148] = b"%011o\x00" % mtime
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157 : 157 + len(link)] = link
    block[257:265] = b"ustar\x0000"
    block[329:337] = b"%07o\x00" % devmajor
    block[337:345] = b"%07o\x00" % devminor
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)

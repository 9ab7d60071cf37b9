"""A push parser that indexes a tar stream by reading headers only.

Member data is never looked at: the parser skips it by arithmetic (size rounded up to
512), which is what makes it fast. ``tarfile`` in stream mode copies every data byte
through Python and reads at 0.2-0.3 GB/s. Here the cost is per header (about 5 us), so
throughput depends on the mean member size: several GB/s for typical trees, far more
for large files (``bench/tarstream_speed.py`` measures it).

The reading rules are Go's ``archive/tar`` (the engine's reader), not tarfile's:
``tests/gotar`` holds a Go program that prints Go's reading, and the test suite
compares the two over crafted and fuzzed archives.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any
from zlib import adler32

from docksnap.errors import UnsafeArchiveError

from .entry import TarEntry, normalize_name
from .errors import AmbiguousArchiveError, TarError, TarFormatError, TarLimitError

BLOCK = 512
DEFAULT_MAX_NAME_LENGTH = 64 * 1024

_ZERO_BLOCK = bytes(BLOCK)
_SIGNED_HEADER = struct.Struct("148b8x356b")
_CHECKSUM_SPACES = 8 * ord(" ")
_OCTAL_CHARS = b"01234567 \x00"
_Numbers = tuple[int, int, int, int, int]

_REGULAR = ord("0")
_OLD_REGULAR = 0
_LONG_NAME = ord("L")
_LONG_LINK = ord("K")
_PAX_LOCAL = ord("x")
_PAX_GLOBAL = ord("g")
_GNU_SPARSE = ord("S")
# Exactly Go's extension types: Solaris 'X' is a member of an unknown type to Go (and
# moby refuses it), not an extension header.
_EXTENSIONS = frozenset({_LONG_NAME, _LONG_LINK, _PAX_LOCAL, _PAX_GLOBAL})
# '7' (contiguous file) is absent on purpose: moby's extraction refuses it.
_TYPES = {
    _REGULAR: "file",
    _OLD_REGULAR: "file",
    ord("1"): "hardlink",
    ord("2"): "symlink",
    ord("3"): "char",
    ord("4"): "block",
    ord("5"): "dir",
    ord("6"): "fifo",
}
# POSIX says these carry no data whatever their size field says; Go's archive/tar (which
# writes Docker's archives) agrees, so a hostile size on them must not shift the stream.
_HEADER_ONLY = frozenset({"dir", "symlink", "hardlink", "char", "block", "fifo"})

_POSIX_MAGIC = b"ustar\x00"
_GNU_MAGIC = b"ustar  \x00"
_STAR_TRAILER = b"tar\x00"
# The PAX keys that change an entry (atime and ctime only have to parse).
_PAX_KEYS = frozenset({"path", "linkpath", "size", "uid", "gid", "mtime", "atime", "ctime"})
_PAX_NAME_KEYS = frozenset({"path", "linkpath", "uname", "gname"})
_XATTR_TEXT = "SCHILY.xattr."
_PAX_TIME = re.compile(rb"(-?[0-9]+)(?:\.([0-9]*))?")
_MAX_LENGTH_DIGITS = 20
# Numbers must fit in int64, as in Go's archive/tar: entries are stored in manifests,
# whose encoder rejects larger integers.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class TarIndexer:
    """Incrementally parse tar headers from chunks of any size.

    Feed the stream with :meth:`feed` in chunks split anywhere (1 byte works); each
    completed member is appended to :attr:`entries`. Call :meth:`finish` at the end of
    the stream. Any error is sticky: once :meth:`feed` or :meth:`finish` raised, every
    later call raises the same error, because the parser's position is then unknown.

    Headers are read exactly as Go's ``archive/tar`` reads them (Go 1.19, the reader
    the Docker engine extracts with), because a safety check is only worth something
    if it judges the names the engine will write:

    - v7, ustar (155-byte ``prefix``), star (131-byte prefix, then atime and ctime)
      and GNU headers (no prefix; but a GNU header whose atime or ctime does not
      parse gets the ustar prefix, as in Go); octal fields trimmed of spaces and NULs
      at both ends and cut at the first NUL left; base-256 numbers; a checksum summed
      as unsigned or signed bytes;
    - GNU long name/link ('L', 'K'), applied when non-empty, and winning over a PAX
      ``path``/``linkpath``;
    - PAX extended headers ('x'): of two for one member only the last counts; keys
      ``path``, ``linkpath``, ``size``, ``uid``, ``gid``, ``mtime`` and
      ``SCHILY.xattr.*`` are applied when their value is non-empty; ``atime`` and
      ``ctime`` must parse; a record area must be records to its last byte;
    - PAX global headers ('g') are not applied at all (moby ignores them), and they
      drop extension headers pending before them, as Go's reader does;
    - 'X', '7' and unknown type flags are members of type "other" that carry data.

    Old GNU sparse members ('S') and pax GNU sparse keys raise :class:`TarFormatError`:
    Docker never writes them, and indexing them as plain files would record a wrong
    size. Where Go accepts something this parser refuses (a bad number Go would wrap,
    a missing end marker), the refusal is deliberate: refusing is always safe.

    With ``strict`` (used on imports), archives whose meaning depends on which tar
    reader reads them raise :class:`AmbiguousArchiveError` naming the member: a GNU
    long name and a PAX path that disagree, two PAX or GNU extension headers for one
    member, a global header that sets anything but ``comment`` or that interrupts
    pending extension headers, a star prefix that a 155-byte reader reads otherwise,
    a directory, link or device that claims data, empty PAX values or GNU names.

    Memory stays bounded whatever the input: one 512-byte buffer for a header split
    across chunks, and one extension record of at most ``max_name_length`` bytes.
    """

    def __init__(
        self,
        *,
        max_entries: int | None = None,
        max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
        require_end_marker: bool = True,
        strict: bool = False,
    ) -> None:
        """Create an indexer.

        ``max_entries`` limits the member count; ``max_name_length`` limits the size of
        each pax or GNU long-name/long-link record, checked against the size declared
        in its header before any of it is buffered. Both raise :class:`TarLimitError`.

        ``require_end_marker`` (default) makes :meth:`finish` demand the end-of-archive
        marker (two zero blocks). Docker always writes it, so its absence means the
        stream was cut, even when the cut fell on a header boundary. With ``False`` a
        stream that stops at a header boundary is accepted too.

        ``strict`` refuses ambiguous archives (see the class docstring).
        """
        self.entries: list[TarEntry] = []
        self._max_entries = max_entries
        self._max_record = max_name_length
        self._require_end_marker = require_end_marker
        self._strict = strict
        self._count = 0
        self._bytes_seen = 0
        self._error: TarError | UnsafeArchiveError | None = None
        self._skip = 0
        self._header = bytearray(BLOCK)
        self._header_fill = 0
        self._header_offset = 0
        self._record = bytearray()
        self._record_left = 0
        self._record_pad = 0
        self._record_type = 0
        self._record_offset = 0
        self._pending = _Pending()
        # Why a global header makes the rest ambiguous; the first reason is enough,
        # and keeping one keeps memory bounded whatever the number of headers.
        self._global_note = ""
        self._zero_blocks = 0
        self._done = False

    @property
    def bytes_seen(self) -> int:
        """Total number of bytes passed to :meth:`feed` so far, parsed or not."""
        return self._bytes_seen

    @property
    def done(self) -> bool:
        """True once the end-of-archive marker was read; later bytes are ignored."""
        return self._done

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse the next chunk of the stream; completed members go to :attr:`entries`.

        Raises :class:`TarFormatError` for a malformed header, :class:`TarLimitError`
        when a limit is exceeded and, when ``strict``, :class:`AmbiguousArchiveError`.
        The chunk is not referenced after the call returns.
        """
        if self._error is not None:
            raise self._error
        try:
            # The with-blocks release the views on return or error, so a caller may
            # resize its bytearray afterwards.
            with memoryview(data) as view:
                if view.format == "B" and view.ndim == 1:
                    self._feed(view)
                else:
                    with view.cast("B") as flat:
                        self._feed(flat)
        except (TarError, UnsafeArchiveError) as exc:
            self._error = exc
            raise

    def finish(self) -> list[TarEntry]:
        """Check that the stream ended cleanly and return :attr:`entries`.

        Raises :class:`TarFormatError` if the stream ended inside a header, an
        extension record or member data, after an extension header with no member, or
        (with ``require_end_marker``) before the end-of-archive marker. Bytes after the
        marker are ignored, as tar does (writers pad to their record size).
        """
        if self._error is not None:
            raise self._error
        if not self._done:
            reason = self._truncation()
            if reason is not None:
                self._error = TarFormatError(self._bytes_seen, reason)
                raise self._error
        return self.entries

    def _truncation(self) -> str | None:
        if self._header_fill:
            return f"stream ends inside a header ({self._header_fill} of {BLOCK} bytes)"
        if self._record_left:
            return f"stream ends {self._record_left} bytes short of an extension record"
        if self._skip:
            return f"stream ends {self._skip} bytes short of the end of a member's data"
        if self._pending.offset is not None:
            return "stream ends after an extension header with no member"
        if self._require_end_marker:
            return "stream ends without the end-of-archive marker (two zero blocks)"
        return None

    def _feed(self, view: memoryview) -> None:
        end = len(view)
        pos = 0
        base = self._bytes_seen
        self._bytes_seen = base + end
        while pos < end:
            skip = self._skip
            if skip:
                if skip >= end - pos:
                    self._skip = skip - (end - pos)
                    return
                pos += skip
                self._skip = 0
            elif self._record_left:
                pos = self._collect_record(view, pos, end)
            elif self._done:
                return
            elif not self._header_fill and end - pos >= BLOCK:
                # Fast path: a whole header inside this chunk, parsed from a 512-byte
                # copy without touching the reusable buffer.
                self._on_header(bytes(view[pos : pos + BLOCK]), base + pos)
                pos += BLOCK
            else:
                pos = self._buffer_header(view, pos, end, base)

    def _buffer_header(self, view: memoryview, pos: int, end: int, base: int) -> int:
        fill = self._header_fill
        if not fill:
            self._header_offset = base + pos
        take = min(BLOCK - fill, end - pos)
        self._header[fill : fill + take] = view[pos : pos + take]
        fill += take
        if fill < BLOCK:
            self._header_fill = fill
        else:
            self._header_fill = 0
            self._on_header(bytes(self._header), self._header_offset)
        return pos + take

    def _collect_record(self, view: memoryview, pos: int, end: int) -> int:
        take = min(self._record_left, end - pos)
        self._record += view[pos : pos + take]
        self._record_left -= take
        if not self._record_left:
            self._skip = self._record_pad
            self._finish_record()
        return pos + take

    def _on_header(self, block: bytes, offset: int) -> None:
        if block == _ZERO_BLOCK:
            self._on_zero_block(offset)
            return
        if self._zero_blocks:
            raise TarFormatError(offset, "a lone zero block is followed by a header")
        numbers = _header_numbers(block, offset)
        typeflag = block[156]
        # Parsed for every header, as Go does: a bad device field fails any header.
        header = _parse_header(block, offset)
        if typeflag in _EXTENSIONS:
            self._start_record(typeflag, numbers[3], offset)
        else:
            self._emit(typeflag, numbers, header, offset)

    def _on_zero_block(self, offset: int) -> None:
        if self._pending.offset is not None:
            raise TarFormatError(offset, "end-of-archive marker after an extension header")
        self._zero_blocks += 1
        self._done = self._zero_blocks == 2

    def _start_record(self, typeflag: int, size: int, offset: int) -> None:
        if size > self._max_record:
            raise TarLimitError(
                offset,
                f"extension record {chr(typeflag)!r} of {size} bytes exceeds "
                f"max_name_length={self._max_record}",
            )
        if typeflag != _PAX_GLOBAL and self._pending.offset is None:
            self._pending.offset = offset
        self._record_type = typeflag
        self._record_offset = offset
        self._record_left = size
        self._record_pad = -size % BLOCK
        self._record.clear()
        if not size:
            self._finish_record()

    def _finish_record(self) -> None:
        data = bytes(self._record)
        self._record.clear()
        kind = self._record_type
        pending = self._pending
        if kind == _LONG_NAME:
            pending.long_names += 1
            pending.long_name = _cut(data)
        elif kind == _LONG_LINK:
            pending.long_links += 1
            pending.long_link = _cut(data)
        elif kind == _PAX_GLOBAL:
            self._on_global(_parse_pax(data, self._record_offset))
        else:
            pending.pax_headers += 1
            pending.pax = _parse_pax(data, self._record_offset)

    def _on_global(self, records: _PaxRecords) -> None:
        # Go returns a global header as a member of its own, which moby skips: the
        # extension headers read before it apply to nothing.
        if self._pending.offset is not None and not self._global_note:
            self._global_note = "a global header drops the extension headers before it"
        self._pending = _Pending()
        meaningful = sorted(k for k, v in records.values.items() if v and k != "comment")
        if meaningful and not self._global_note:
            self._global_note = (
                f"a global header sets {', '.join(meaningful)} (the engine ignores it)"
            )

    def _emit(self, typeflag: int, numbers: _Numbers, header: _Header, offset: int) -> None:
        pending = self._pending
        start = self._member_start(typeflag, offset, pending)
        raw_name, raw_link, devmajor, devminor, note = header
        mode, uid, gid, size, mtime = numbers
        xattrs: _Xattrs = ()
        if pending.offset is not None:
            raw_name, raw_link, size, uid, gid, mtime, xattrs = _merge(
                header, numbers, pending, start
            )
        name = _decode(raw_name)
        kind = _TYPES.get(typeflag, "other")
        if typeflag == _OLD_REGULAR and name.endswith("/"):
            kind = "dir"
        declared = size
        if kind in _HEADER_ONLY:
            size = 0
        if self._strict:
            _refuse_ambiguity(name, kind, declared, note, pending, self._global_note)
        link = ""
        if kind == "symlink":
            link = _decode(raw_link)
        elif kind == "hardlink":
            link = normalize_name(_decode(raw_link))
        entry = TarEntry(
            normalize_name(name), kind, mode & 0o7777, uid, gid, mtime, size, link, start, xattrs
        )
        self._count += 1
        self._skip = size + (-size % BLOCK)
        if pending.offset is not None:
            self._pending = _Pending()
        self._on_member(entry, (devmajor, devminor), offset + BLOCK)

    def _on_member(self, entry: TarEntry, devices: tuple[int, int], data_start: int) -> None:
        """Record a parsed member: its device numbers, and where its data begins."""
        self.entries.append(entry)

    def _member_start(self, typeflag: int, offset: int, pending: _Pending) -> int:
        """Return the member's offset, including its extension headers, after checks."""
        if typeflag == _GNU_SPARSE:
            raise TarFormatError(offset, "GNU sparse members are not supported")
        start = offset if pending.offset is None else pending.offset
        if self._max_entries is not None and self._count >= self._max_entries:
            raise TarLimitError(start, f"more than max_entries={self._max_entries} members")
        return start


class _Pending:
    """Extension headers read since the last member, waiting for the next one."""

    __slots__ = (
        "long_link",
        "long_links",
        "long_name",
        "long_names",
        "offset",
        "pax",
        "pax_headers",
    )

    def __init__(self) -> None:
        self.offset: int | None = None
        self.long_name: bytes | None = None
        self.long_link: bytes | None = None
        self.long_names = 0
        self.long_links = 0
        self.pax: _PaxRecords | None = None
        self.pax_headers = 0


@dataclass(frozen=True, slots=True)
class _PaxRecords:
    """One PAX record area: the records that matter, and keys given twice."""

    values: dict[str, bytes]
    repeated: tuple[str, ...]


# (name, link, devmajor, devminor, note): a main header as Go reads it, before any
# extension header is applied; ``note`` says why another reader might read it otherwise.
_Header = tuple[bytes, bytes, int, int, str]
_Xattrs = tuple[tuple[str, bytes], ...]
_Merged = tuple[bytes, bytes, int, int, int, int, _Xattrs]
_PLAIN_DEVICES = (bytes(16), b"0000000\x00" * 2)


def _merge(header: _Header, numbers: _Numbers, pending: _Pending, start: int) -> _Merged:
    """Apply PAX records, then GNU long names, to a header: Go's order.

    Returns (name, link, size, uid, gid, mtime, xattrs).
    """
    _, uid, gid, size, mtime = numbers
    name, link = header[0], header[1]
    xattrs: _Xattrs = ()
    if pending.pax is not None:
        values = {k: v for k, v in pending.pax.values.items() if v}
        name = values.get("path", name)
        link = values.get("linkpath", link)
        size = _pax_int(values, "size", size, start)
        uid = _pax_int(values, "uid", uid, start)
        gid = _pax_int(values, "gid", gid, start)
        mtime = _pax_time(values, "mtime", mtime, start)
        _pax_time(values, "atime", 0, start)
        _pax_time(values, "ctime", 0, start)
        xattrs = tuple(
            sorted(
                (k[len(_XATTR_TEXT) :], v) for k, v in values.items() if k.startswith(_XATTR_TEXT)
            )
        )
    if pending.long_name:
        name = pending.long_name
    if pending.long_link:
        link = pending.long_link
    return name, link, size, uid, gid, mtime, xattrs


def _refuse_ambiguity(
    name: str, kind: str, declared: int, note: str, pending: _Pending, global_note: str
) -> None:
    """Raise :class:`AmbiguousArchiveError` if another tar reader could read this
    member differently from Go's reader (and so from the engine)."""
    notes = [global_note] if global_note else []
    if note:
        notes.append(note)
    if pending.pax_headers > 1:
        notes.append(f"{pending.pax_headers} PAX headers for one member (Go reads the last)")
    if pending.long_names > 1 or pending.long_links > 1:
        notes.append("repeated GNU long name or long link headers")
    if pending.long_name == b"" or pending.long_link == b"":
        notes.append("an empty GNU long name or long link")
    pax = pending.pax
    if pax is not None:
        if pax.repeated:
            notes.append(f"PAX keys given twice: {', '.join(pax.repeated)}")
        empty = sorted(k for k, v in pax.values.items() if not v and k in _PAX_KEYS)
        if empty:
            notes.append(f"empty PAX values for {', '.join(empty)}")
        for key, gnu, what in (
            ("path", pending.long_name, "name"),
            ("linkpath", pending.long_link, "link"),
        ):
            value = pax.values.get(key)
            if gnu and value and value != gnu:
                notes.append(f"GNU long {what} and PAX {key} {_decode(value)!r} disagree")
    if kind in _HEADER_ONLY and declared:
        notes.append(f"a {kind} claims {declared} bytes of data")
    if notes:
        raise AmbiguousArchiveError(normalize_name(name), "; ".join(notes))


def _parse_header(block: bytes, offset: int) -> _Header:
    """Read the name, link and device fields the way Go's ``readHeader`` does."""
    name = _cut(block[0:100])
    link = _cut(block[157:257])
    magic = block[257:265]
    if (
        magic[:6] == _POSIX_MAGIC
        and not block[345]
        and block[329:345] in _PLAIN_DEVICES
        and block[508:512] != _STAR_TRAILER
    ):
        return name, link, 0, 0, ""  # the common ustar header: no prefix, no device
    if magic[:6] != _POSIX_MAGIC and magic != _GNU_MAGIC:
        return name, link, 0, 0, ""  # v7: no further fields
    devmajor = _number(block, 329, 337, offset, "devmajor", signed=True)
    devminor = _number(block, 337, 345, offset, "devminor", signed=True)
    prefix, note = b"", ""
    if magic == _GNU_MAGIC:
        prefix, note = _gnu_prefix(block)
    elif block[508:512] == _STAR_TRAILER:
        prefix = _cut(block[345:476])
        _number(block, 476, 488, offset, "atime", signed=True)
        _number(block, 488, 500, offset, "ctime", signed=True)
        if prefix != _cut(block[345:500]):
            note = "a star prefix that a 155-byte ustar reader reads differently"
    else:
        prefix = _cut(block[345:500])
    if prefix:
        name = prefix + b"/" + name
    return name, link, devmajor, devminor, note


def _gnu_prefix(block: bytes) -> tuple[bytes, str]:
    """GNU headers hold atime and ctime where ustar has its prefix; Go falls back to
    reading a prefix there when those do not parse ("buggy file is not GNU")."""
    try:
        for start in (345, 357):
            if block[start]:
                _number(block, start, start + 12, 0, "time", signed=True)
    except TarFormatError:
        prefix = _cut(block[345:500])
        if max(prefix, default=0) < 0x80:
            return prefix, "a GNU header whose atime/ctime field holds a ustar prefix"
        return b"", "a GNU header with malformed atime/ctime fields"
    return b"", ""


def _header_numbers(block: bytes, offset: int) -> _Numbers:
    """Return (mode, uid, gid, size, mtime) after verifying the header checksum."""
    raw = block[100:156]
    # Fast path for the common all-octal header: one validation for the six fields,
    # and int() on str, which is about twice as fast as on bytes. The translate()
    # check keeps int() from accepting "+", "-" or "_"; int() strips the spaces (the
    # NULs, made spaces) at both ends, as Go does, and fails on any inside, which
    # then go to the slow path.
    if not raw.translate(None, _OCTAL_CHARS):
        text = raw.decode("ascii").replace("\x00", " ")
        try:
            stored = int(text[48:56], 8)
            numbers = (
                int(text[0:8], 8),
                int(text[8:16], 8),
                int(text[16:24], 8),
                int(text[24:36], 8),
                int(text[36:48], 8),
            )
        except ValueError:
            pass
        else:
            _verify_checksum(block, stored, offset)
            return numbers
    return _header_numbers_slow(block, offset)


def _header_numbers_slow(block: bytes, offset: int) -> _Numbers:
    # Go reads the checksum as octal only (never base-256).
    if block[148] & 0x80:
        raise TarFormatError(offset, f"bad checksum field {block[148:156]!r}")
    _verify_checksum(block, _number(block, 148, 156, offset, "checksum"), offset)
    return (
        _number(block, 100, 108, offset, "mode"),
        _number(block, 108, 116, offset, "uid"),
        _number(block, 116, 124, offset, "gid"),
        _number(block, 124, 136, offset, "size"),
        _number(block, 136, 148, offset, "mtime", signed=True),
    )


def _verify_checksum(block: bytes, stored: int, offset: int) -> None:
    # Adler-32's low half is 1 + the byte sum mod 65521; 256 bytes sum to at most
    # 65280, so two halves give the exact sum, 3x faster than sum(block).
    total = (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2
    unsigned = total - sum(block[148:156]) + _CHECKSUM_SPACES
    if stored == unsigned:
        return
    # Some historic writers summed the bytes as signed chars; tar readers accept both.
    signed = sum(_SIGNED_HEADER.unpack(block)) + _CHECKSUM_SPACES
    if stored != signed:
        raise TarFormatError(
            offset, f"header checksum mismatch: stored {stored}, computed {unsigned}"
        )


def _number(
    block: bytes, start: int, end: int, offset: int, field: str, *, signed: bool = False
) -> int:
    """Parse a numeric header field as Go's ``parseNumeric``: GNU base-256, or octal
    trimmed of spaces and NULs at both ends, then cut at the first NUL left."""
    if block[start] & 0x80:
        return _base256(block, start, end, offset, field, signed)
    digits = block[start:end].strip(b" \x00")
    if not digits:
        return 0
    nul = digits.find(0)
    if nul >= 0:
        digits = digits[:nul]
    # isdigit() on bytes is ASCII-only; it keeps int() from accepting "+", "-" or "_".
    if digits.isdigit():
        try:
            return int(digits, 8)
        except ValueError:
            pass
    raise TarFormatError(offset, f"bad {field} field {block[start:end]!r}")


def _base256(block: bytes, start: int, end: int, offset: int, field: str, signed: bool) -> int:
    # Two's complement over the field with the marker bit cleared; bit 0x40 of the
    # first byte is the sign. Same reading as GNU tar and Go's archive/tar.
    bits = 8 * (end - start) - 1
    value = int.from_bytes(block[start:end], "big") & ((1 << bits) - 1)
    if block[start] & 0x40:
        value -= 1 << bits
    if not (_INT64_MIN if signed else 0) <= value <= _INT64_MAX:
        raise TarFormatError(offset, f"{field} {value} is out of range")
    return value


def _cut(raw: bytes) -> bytes:
    """Go's ``parseString``: the bytes before the first NUL."""
    nul = raw.find(0)
    return raw if nul < 0 else raw[:nul]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes, offset: int) -> _PaxRecords:
    """Parse PAX records ``"<len> <key>=<value>\\n"`` to the last byte, as Go does.

    Keeps only :data:`_PAX_KEYS` and ``SCHILY.xattr.*``: a stream of extension
    headers with ever-new keys must not grow memory beyond one record area.
    """
    found: dict[str, bytes] = {}
    repeated: list[str] = []
    pos = 0
    while pos < len(data):
        key, value, pos = _pax_record(data, pos, offset)
        if key.startswith("GNU.sparse."):
            raise TarFormatError(offset, "GNU sparse members are not supported")
        if key in _PAX_KEYS or key.startswith(_XATTR_TEXT) or key == "comment":
            if key in found:
                repeated.append(key)
            found[key] = value
    return _PaxRecords(found, tuple(repeated))


def _pax_record(data: bytes, pos: int, offset: int) -> tuple[str, bytes, int]:
    space = data.find(b" ", pos, pos + _MAX_LENGTH_DIGITS + 1)
    length_text = data[pos:space] if space > pos else b""
    if not length_text.isdigit():
        raise TarFormatError(offset, f"bad pax record length at byte {pos}")
    length = int(length_text)
    end = pos + length
    if length < 5 or end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
        raise TarFormatError(offset, f"bad pax record at byte {pos}")
    equals = data.find(b"=", space + 1, end - 1)
    if equals <= space + 1:
        raise TarFormatError(offset, f"bad pax record at byte {pos}")
    raw_key, value = data[space + 1 : equals], data[equals + 1 : end - 1]
    key = _decode(raw_key)
    # Go's validPAXRecord: names may not hold NUL, and no key may.
    bad_nul = 0 in value if key in _PAX_NAME_KEYS else 0 in raw_key
    if bad_nul:
        raise TarFormatError(offset, f"NUL in pax record {key[:40]!r}")
    return key, value, end


def _pax_int(values: dict[str, bytes], key: str, default: int, offset: int) -> int:
    value = values.get(key)
    if value is None:
        return default
    if value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
        number = int(value)
        if number <= _INT64_MAX:
            return number
    raise TarFormatError(offset, f"bad pax {key} {value[:40]!r}")


def _pax_time(values: dict[str, bytes], key: str, default: int, offset: int) -> int:
    """Whole seconds of a PAX time, rounded down as Go's ``time.Unix()`` gives them."""
    value = values.get(key)
    if value is None:
        return default
    match = _PAX_TIME.fullmatch(value)
    if match is not None and len(match.group(1)) <= _MAX_LENGTH_DIGITS:
        seconds = int(match.group(1))
        fraction = match.group(2) or b""
        # Go subtracts the fraction when the text starts with "-", even "-0.5".
        if value.startswith(b"-") and fraction[:9].strip(b"0"):
            seconds -= 1
        if _INT64_MIN <= seconds <= _INT64_MAX:
            return seconds
    raise TarFormatError(offset, f"bad pax {key} {value[:40]!r}")


class MemberIndexer(TarIndexer):
    """A :class:`TarIndexer` that also reports where each member's data lies.

    A member's data region runs from the end of its main header to the end of the
    padding after its data; members without data have none. The per-file chunking
    of docs/FORMAT.md §11.11 cuts each data region on its own, and the bytes
    between data regions (headers, end-of-archive marker) as regions of their own.

    Both ends of a data region are known (in :meth:`take_cuts`) once its main
    header was fed, i.e. before any byte of the region: a consumer that takes the
    cuts after each :meth:`feed` never misses one. :attr:`spans` holds
    ``(start, data_start, end)`` per member (``start`` as :attr:`TarEntry.offset`)
    in the order of :attr:`entries` (the caller moves both out as it spills them).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spans: list[tuple[int, int, int]] = []
        self._cuts: list[int] = []

    def take_cuts(self) -> list[int]:
        """Cut offsets found since the last call, increasing."""
        cuts, self._cuts = self._cuts, []
        return cuts

    def skip_data(self, nbytes: int) -> None:
        """Account for a member's data (with its padding) that is not fed.

        Valid only right after a member's main header, with ``nbytes`` equal to its
        size padded to 512; else :class:`TarFormatError` (and the error is sticky).
        """
        if self._error is not None:
            raise self._error
        if self._header_fill or self._record_left or self._skip != nbytes:
            self._error = TarFormatError(
                self._bytes_seen,
                f"{nbytes} bytes of data given where the member's header declares {self._skip}",
            )
            raise self._error
        self._skip = 0
        self._bytes_seen += nbytes

    def _on_member(self, entry: TarEntry, devices: tuple[int, int], data_start: int) -> None:
        super()._on_member(entry, devices, data_start)
        end = data_start + entry.size + (-entry.size % BLOCK)
        if end > data_start:
            self._cuts += (data_start, end)
        self.spans.append((entry.offset, data_start, end))

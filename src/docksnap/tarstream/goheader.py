"""Tar headers byte for byte as the engine writes them (Go ``archive/tar``, moby ``pkg/archive``).

Host capture builds a directory's archive itself; to give the same snapshot
as the engine's ``GET /archive`` it writes each header exactly as the engine's
writer would for the same ``tar.Header``: moby sets ``Format = PAX`` and Go
then writes a plain ustar header whenever every field fits (long ASCII names
split into prefix and name), and a PAX ``x`` header (named
``<dir>/PaxHeaders.0/<base>``, records sorted by key) followed by a ustar
header otherwise. The rules below are Go 1.19's ``Header.allowedFormats``,
``Writer.writeUSTARHeader``/``writePAXHeader`` and ``formatter``; a test
compares the output with the real engine's archive of the same tree.

Three things the engine's headers never carry can be given here: sub-second
mtimes (the engine truncates to seconds; any ``mtime_ns`` makes Go prefer PAX
and write a ``mtime`` record), extended attributes beyond
``security.capability`` (``SCHILY.xattr.<name>`` records), and a regular
file's inode number and ctime (``DOCKSNAP.ino`` and the standard ``ctime``
record), which an incremental host capture compares with its parent's. Every
tar reader ignores what it does not apply: the engine's ``PUT /archive`` sets
neither an inode nor a ctime (docs/METADATA.md).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .build import MAX_OCTAL_7 as _MAX_OCTAL_7
from .build import MAX_OCTAL_11 as _MAX_OCTAL_11
from .build import TYPEFLAGS, pax_record

BLOCK = 512
_NAME, _PREFIX, _OWNER_NAME = 100, 155, 32
_XATTR = b"SCHILY.xattr."


@dataclass(frozen=True, slots=True)
class GoHeader:
    """One member's header fields, as moby's ``FileInfoHeader`` fills them.

    ``name`` is the full member name (``./a/b``, directories end in ``/``);
    ``mode`` is ``st_mode`` whole (moby adds the file type bits back);
    ``mtime_ns`` is the sub-second part, 0 for what the engine would write;
    ``inode`` and ``ctime_ns`` (None: left out) are host capture's own records.
    """

    name: bytes
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    mtime_ns: int = 0
    link: bytes = b""
    uname: bytes = b""
    gname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    inode: int | None = None
    ctime_ns: int | None = None


#: The PAX key of a regular file's inode number (docksnap's own; see ``GoHeader``).
INODE_KEY = b"DOCKSNAP.ino"
#: The standard PAX key of a file's status change time, written as ``mtime`` is.
CTIME_KEY = b"ctime"


def encode(header: GoHeader) -> bytes:
    """The header blocks (PAX extension first when needed) Go's writer emits for ``header``.

    Raises ``ValueError`` for what Go could only write in GNU format (device
    numbers past 7 octal digits), which moby never produces for real files.
    """
    if header.type not in TYPEFLAGS:
        raise ValueError(f"cannot encode a {header.type} member")
    records: dict[bytes, bytes] = {}
    ustar_ok = True
    prefer_pax = False

    def text(value: bytes, size: int, key: bytes | None, splittable: bool = False) -> None:
        nonlocal ustar_ok
        if _ascii(value) and len(value) <= size:
            return
        if not (splittable and _split_ustar(value) is not None):
            ustar_ok = False
        if key is not None:
            records[key] = value

    def number(value: int, limit: int, key: bytes | None) -> None:
        nonlocal ustar_ok
        if 0 <= value < limit:
            return
        ustar_ok = False
        if key is None:
            raise ValueError(f"{value} does not fit a ustar or PAX header")
        records[key] = b"%d" % value

    text(header.name, _NAME, b"path", splittable=True)
    text(header.link, _NAME, b"linkpath")
    text(header.uname, _OWNER_NAME, b"uname")
    text(header.gname, _OWNER_NAME, b"gname")
    number(header.mode, _MAX_OCTAL_7, None)
    number(header.uid, _MAX_OCTAL_7, b"uid")
    number(header.gid, _MAX_OCTAL_7, b"gid")
    number(header.size, _MAX_OCTAL_11, b"size")
    number(header.devmajor, _MAX_OCTAL_7, None)
    number(header.devminor, _MAX_OCTAL_7, None)
    if not 0 <= header.mtime < _MAX_OCTAL_11 or header.mtime_ns:
        ustar_ok = ustar_ok and 0 <= header.mtime < _MAX_OCTAL_11
        prefer_pax = True
        records[b"mtime"] = _pax_time(header.mtime, header.mtime_ns)
    for key, value in header.xattrs:
        records[_XATTR + key] = value
        ustar_ok = False
    if header.inode is not None:
        records[INODE_KEY] = b"%d" % header.inode
        ustar_ok = False
    if header.ctime_ns is not None:
        seconds, nanoseconds = divmod(header.ctime_ns, 10**9)
        records[CTIME_KEY] = _pax_time(seconds, nanoseconds)
        ustar_ok = False
    if ustar_ok and not prefer_pax:
        return _ustar(header)
    return _pax(header, records)


def _ustar(header: GoHeader) -> bytes:
    name, prefix = header.name, b""
    split = _split_ustar(header.name)
    if split is not None:
        prefix, name = split
    block = _v7_plus(header, name, header.link, header.uname, header.gname)
    _put(block, 345, _PREFIX, prefix)
    return _finish(block)


def _pax(header: GoHeader, records: dict[bytes, bytes]) -> bytes:
    out = b""
    if records:
        data = b"".join(pax_record(key, records[key]) for key in sorted(records))
        out = _raw_file(_pax_name(header.name), data) + data + bytes(-len(data) % BLOCK)
    block = _v7_plus(
        header,
        _to_ascii(header.name),
        _to_ascii(header.link),
        _to_ascii(header.uname),
        _to_ascii(header.gname),
    )
    return out + _finish(block)


def _v7_plus(header: GoHeader, name: bytes, link: bytes, uname: bytes, gname: bytes) -> bytearray:
    """Go's ``templateV7Plus``: numbers that do not fit are written as 0."""
    block = bytearray(BLOCK)
    block[156:157] = TYPEFLAGS[header.type]
    _put(block, 0, _NAME, name)
    _put(block, 157, _NAME, link)
    _octal(block, 100, 8, header.mode)
    _octal(block, 108, 8, header.uid)
    _octal(block, 116, 8, header.gid)
    _octal(block, 124, 12, header.size)
    _octal(block, 136, 12, header.mtime)
    _put(block, 265, _OWNER_NAME, uname)
    _put(block, 297, _OWNER_NAME, gname)
    _octal(block, 329, 8, header.devmajor)
    _octal(block, 337, 8, header.devminor)
    return block


def _raw_file(name: bytes, data: bytes) -> bytes:
    """Go's ``writeRawFile`` for a PAX extension header: zero owner, mode and time."""
    block = bytearray(BLOCK)
    block[156:157] = b"x"
    _put(block, 0, _NAME, _to_ascii(name)[:_NAME].rstrip(b"/"))
    _octal(block, 100, 8, 0)
    _octal(block, 108, 8, 0)
    _octal(block, 116, 8, 0)
    _octal(block, 124, 12, len(data))
    _octal(block, 136, 12, 0)
    return _finish(block)


def _finish(block: bytearray) -> bytes:
    """Magic ``ustar\\0``, version ``00``, and the checksum (6 digits, NUL, space)."""
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def _put(block: bytearray, start: int, size: int, value: bytes) -> None:
    """Go's ``formatString``: truncate, NUL-terminate if shorter, no trailing slash cut."""
    field = value[:size]
    block[start : start + len(field)] = field
    if len(value) > size and field.endswith(b"/"):
        kept = len(field.rstrip(b"/"))
        block[start + kept] = 0


def _octal(block: bytearray, start: int, size: int, value: int) -> None:
    if not 0 <= value < 8 ** (size - 1):
        value = 0  # Go's last resort; the PAX record carries the real value
    block[start : start + size] = b"%0*o\x00" % (size - 1, value)


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """Go's ``splitUSTARPath``: (prefix, name) for a long ASCII name, else None."""
    length = len(name)
    if length <= _NAME or not _ascii(name):
        return None
    if length > _PREFIX + 1:
        length = _PREFIX + 1
    elif name[length - 1 : length] == b"/":
        length -= 1
    i = name.rfind(b"/", 0, length)
    suffix_len, prefix_len = len(name) - i - 1, i
    if i <= 0 or suffix_len > _NAME or suffix_len == 0 or prefix_len > _PREFIX:
        return None
    return name[:i], name[i + 1 :]


def _pax_name(name: bytes) -> bytes:
    """``path.Join(dir, "PaxHeaders.0", file)``, which also cleans the path."""
    head, tail = name.rsplit(b"/", 1) if b"/" in name else (b"", name)
    joined = posixpath.normpath(b"/".join(p for p in (head, b"PaxHeaders.0", tail) if p))
    return joined


def _pax_time(seconds: int, nanoseconds: int) -> bytes:
    """Go's ``formatPAXTime``: ``secs[.frac]`` with trailing zeros cut."""
    if not nanoseconds:
        return b"%d" % seconds
    if seconds < 0:
        return (b"-%d.%09d" % (-(seconds + 1), 10**9 - nanoseconds)).rstrip(b"0")
    return (b"%d.%09d" % (seconds, nanoseconds)).rstrip(b"0")


def _ascii(value: bytes) -> bool:
    return value.isascii()


def _to_ascii(value: bytes) -> bytes:
    """Go's ``toASCII``: bytes past 0x7f and NULs dropped (the PAX record has them all)."""
    if value.isascii() and b"\0" not in value:
        return value  # the common case, without a loop over the bytes
    return bytes(b for b in value if 0 < b < 0x80)


def host_stat(header: bytes) -> tuple[int, int, int] | None:
    """``(inode, mtime_ns, ctime_ns)`` of a member whose headers carry host capture's
    records, else None (a header of the engine's archive, or of an import).

    ``header`` is one member's header blocks as stored (PAX ``x`` header first).
    Records that do not parse count as absent: the caller then reads the file.
    """
    if len(header) < 2 * BLOCK or header[156:157] != b"x":
        return None
    try:
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        records = _records(header[BLOCK : BLOCK + size])
        inode, ctime = records.get(INODE_KEY), records.get(CTIME_KEY)
        if inode is None or ctime is None:
            return None
        main = header[-BLOCK:]
        mtime = records.get(b"mtime")
        mtime_ns = _ns(mtime) if mtime is not None else int(main[136:148].rstrip(b"\0 "), 8) * 10**9
        return int(inode), mtime_ns, _ns(ctime)
    except ValueError:
        return None


def _records(data: bytes) -> dict[bytes, bytes]:
    """PAX records ``"<len> <key>=<value>\\n"`` (the last of a key wins, as Go reads)."""
    found: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.index(b" ", pos)
        end = pos + int(data[pos:space])
        key, _, value = data[space + 1 : end - 1].partition(b"=")
        found[key] = value
        pos = end
    return found


def _ns(text: bytes) -> int:
    """Nanoseconds of a PAX time (``secs[.frac]``, maybe negative, as ``_pax_time`` writes)."""
    sign = -1 if text.startswith(b"-") else 1
    whole, _, fraction = text.lstrip(b"-").partition(b".")
    return sign * (int(whole) * 10**9 + int((fraction + b"000000000")[:9]))

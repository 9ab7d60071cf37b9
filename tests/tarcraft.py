"""Hand-made tar headers, byte by byte, for tests of tar readers.

Every field is given as the exact bytes to write (or an int, written as octal), so
a test can build headers no tar writer would: any magic, prefix, trailer, typeflag,
NULs and spaces in numbers, base-256 numbers, a wrong checksum. For archives any
tar writer would make, of members chosen one by one (hostile names, links,
devices), :func:`member` and :func:`tar_of` use :mod:`tarfile`.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any

BLOCK = 512
END = bytes(2 * BLOCK)
USTAR = b"ustar\x0000"
GNU = b"ustar  \x00"
V7 = b"\x00" * 8

Field = int | bytes


def octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def base256(value: int, width: int) -> bytes:
    """GNU base-256: two's complement with the top bit of the first byte set."""
    raw = bytearray((value % (1 << (8 * width))).to_bytes(width, "big"))
    raw[0] |= 0x80
    return bytes(raw)


def header(
    name: bytes = b"f",
    typeflag: bytes = b"0",
    *,
    size: Field = 0,
    mode: Field = 0o644,
    uid: Field = 1000,
    gid: Field = 1000,
    mtime: Field = 1_700_000_000,
    link: bytes = b"",
    magic: bytes = USTAR,
    devmajor: Field = 0,
    devminor: Field = 0,
    prefix: bytes = b"",
    trailer: bytes = b"",
    extra: dict[int, bytes] | None = None,
    checksum: str | bytes = "unsigned",
) -> bytes:
    """One 512-byte header block. ``extra`` writes raw bytes at given offsets (before
    the checksum); ``checksum`` is "unsigned", "signed", or the raw field bytes."""
    block = bytearray(BLOCK)

    def put(at: int, width: int, value: Field) -> None:
        raw = octal(value, width) if isinstance(value, int) else value
        block[at : at + len(raw)] = raw[:width]

    block[0 : len(name[:100])] = name[:100]
    put(100, 8, mode)
    put(108, 8, uid)
    put(116, 8, gid)
    put(124, 12, size)
    put(136, 12, mtime)
    block[156:157] = typeflag
    block[157 : 157 + len(link[:100])] = link[:100]
    block[257:265] = magic
    if magic != V7:
        put(329, 8, devmajor)
        put(337, 8, devminor)
    block[345 : 345 + len(prefix[:155])] = prefix[:155]
    if trailer:
        block[508:512] = trailer
    for at, raw in (extra or {}).items():
        block[at : at + len(raw)] = raw
    block[148:156] = b" " * 8
    if isinstance(checksum, bytes):
        block[148:156] = checksum
    else:
        signed = checksum == "signed"
        total = sum(b - 256 if signed and b > 127 else b for b in block)
        block[148:156] = b"%06o\x00 " % (total % 8**6)
    return bytes(block)


def with_data(block: bytes, data: bytes) -> bytes:
    return block + data + bytes(-len(data) % BLOCK)


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return b"%d" % length + body


def pax(
    records: dict[bytes, bytes] | list[tuple[bytes, bytes]] | bytes, flag: bytes = b"x"
) -> bytes:
    """A PAX extended ('x') or global ('g') header with its records."""
    if isinstance(records, bytes):
        body = records
    else:
        items = records.items() if isinstance(records, dict) else records
        body = b"".join(pax_record(k, v) for k, v in items)
    return with_data(header(b"././@PaxHeader", flag, size=len(body)), body)


def gnu_long(kind: bytes, value: bytes) -> bytes:
    """A GNU long name ('L') or long link ('K') header, NUL-terminated like GNU tar."""
    body = value + b"\x00"
    return with_data(header(b"././@LongLink", kind, size=len(body), magic=GNU), body)


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    """A member header for :func:`tar_of`: ``kind`` is a tarfile type; ``attrs`` set as is."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A PAX archive of ``members`` in order; each file's size is set from its data."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()

"""Write the small tar archives docksnap sends to containers."""

from __future__ import annotations

import time
from collections.abc import Sequence

_BLOCK = 512
_NAME_SIZE = 100
MAX_OCTAL_7 = 8**7  # an 8-byte octal field
MAX_OCTAL_11 = 8**11  # a 12-byte octal field
_END_OF_ARCHIVE = bytes(2 * _BLOCK)
_PAX_HEADER_NAME = b"././@PaxHeader"


def build_dirs_tar(
    components: Sequence[str],
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: int | None = None,
) -> bytes:
    """Return a ustar archive that does ``mkdir -p`` for each relative directory path.

    Each item of ``components`` is a relative path of one or more components ("a" or
    "a/b"). The archive holds one directory entry for every prefix of every item,
    each once, parents before children, in order of first appearance: ``["a/b"]``,
    ``["a", "a/b"]`` and ``["a", "a/b", "a"]`` all give "a/", "a/b/". Extracted at
    some directory, it creates them there. It ends with the end-of-archive marker.
    Names longer than 100 bytes, and uid, gid or mtime that do not fit the octal
    fields, are carried in a pax header. ``mtime`` defaults to now. An empty list
    gives an archive with no members.

    Raises ``ValueError`` for an item that is absolute or has an empty, ".", ".." or
    NUL-containing component, and for a mode outside 0o7777 or a negative uid or gid;
    ``TypeError`` if ``components`` is a str rather than a list of them.
    """
    _validate_attributes(mode, uid, gid)
    when = int(time.time()) if mtime is None else mtime
    out = bytearray()
    for name in _dir_names(components):
        out += _dir_member(name.encode("utf-8", "surrogateescape"), mode, uid, gid, when)
    out += _END_OF_ARCHIVE
    return bytes(out)


def _dir_names(components: Sequence[str]) -> list[str]:
    """Return every prefix of every path, once, parents first, each ending in "/"."""
    if isinstance(components, str):
        raise TypeError("components must be a list of paths, not a str")
    names: dict[str, None] = {}
    for path in components:
        parts = path.split("/")
        for part in parts:
            # Names go into a container's filesystem: nothing may climb or be absolute.
            if part in ("", ".", "..") or "\x00" in part:
                raise ValueError(f"invalid directory path {path!r}")
        for end in range(1, len(parts) + 1):
            names.setdefault("/".join(parts[:end]) + "/")
    return list(names)


def _validate_attributes(mode: int, uid: int, gid: int) -> None:
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {mode:#o} is outside 0o7777")
    if uid < 0 or gid < 0:
        raise ValueError(f"negative owner uid={uid} gid={gid}")


def _dir_member(name: bytes, mode: int, uid: int, gid: int, mtime: int) -> bytes:
    pax: list[bytes] = []
    if len(name) > _NAME_SIZE:
        pax.append(pax_record(b"path", name))
    if uid >= MAX_OCTAL_7:
        pax.append(pax_record(b"uid", b"%d" % uid))
    if gid >= MAX_OCTAL_7:
        pax.append(pax_record(b"gid", b"%d" % gid))
    if not 0 <= mtime < MAX_OCTAL_11:
        pax.append(pax_record(b"mtime", b"%d" % mtime))
    header = _header(
        name[:_NAME_SIZE],
        b"5",
        size=0,
        mode=mode,
        uid=uid if uid < MAX_OCTAL_7 else 0,
        gid=gid if gid < MAX_OCTAL_7 else 0,
        mtime=mtime if 0 <= mtime < MAX_OCTAL_11 else 0,
    )
    if not pax:
        return header
    data = b"".join(pax)
    pax_header = _header(_PAX_HEADER_NAME, b"x", size=len(data), mode=0o644, uid=0, gid=0, mtime=0)
    return pax_header + data + bytes(-len(data) % _BLOCK) + header


# The ustar type flags both header writers use.
TYPEFLAGS = {
    "file": b"0",
    "hardlink": b"1",
    "symlink": b"2",
    "char": b"3",
    "block": b"4",
    "dir": b"5",
    "fifo": b"6",
}


def pax_record(key: bytes, value: bytes) -> bytes:
    """Encode ``"<len> key=value\\n"``, where <len> counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return b"%d" % length + body


def _header(
    name: bytes, typeflag: bytes, *, size: int, mode: int, uid: int, gid: int, mtime: int
) -> bytes:
    block = bytearray(_BLOCK)
    block[0 : len(name)] = name
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"%07o\x00" % uid
    block[116:124] = b"%07o\x00" % gid
    block[124:136] = b"%011o\x00" % size
    block[136:148] = b"%011o\x00" % mtime
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)

"""Write the small tar archives docksnap sends to containers."""

from __future__ import annotations

import time
from collections.abc import Sequence

_BLOCK = 512
_NAME_SIZE = 100
_MAX_OCTAL_7 = 8**7
_MAX_OCTAL_11 = 8**11
_END_OF_ARCHIVE = bytes(2 * _BLOCK)
_PAX_HEADER_NAME = b"././@PaxHeader"


def build_dirs_tar(
    components: Sequence[str],
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: int | None = None,
) -> bytes:
    """Return a ustar archive that creates the directories ``components`` spell out.

    For ``["a", "b", "c"]`` the archive holds directories "a/", "a/b/", "a/b/c/", in
    that order, so extracting it at some directory is ``mkdir -p a/b/c`` there; it
    ends with the end-of-archive marker. Names longer than 100 bytes, and uid, gid or
    mtime that do not fit the octal fields, are carried in a pax header. ``mtime``
    defaults to now. An empty list gives an archive with no members.

    Raises ``ValueError`` for a component that is empty, ".", "..", or contains "/" or
    NUL, and for a mode outside 0o7777 or a negative uid or gid; ``TypeError`` if
    ``components`` is a str (a path must be split into its components first).
    """
    _validate(components, mode, uid, gid)
    when = int(time.time()) if mtime is None else mtime
    out = bytearray()
    path = ""
    for component in components:
        path = f"{path}{component}/"
        out += _dir_member(path.encode("utf-8", "surrogateescape"), mode, uid, gid, when)
    out += _END_OF_ARCHIVE
    return bytes(out)


def _validate(components: Sequence[str], mode: int, uid: int, gid: int) -> None:
    if isinstance(components, str):
        raise TypeError("components must be a list of names, not a str")
    for component in components:
        if component in ("", ".", "..") or "/" in component or "\x00" in component:
            raise ValueError(f"invalid directory name component {component!r}")
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {mode:#o} is outside 0o7777")
    if uid < 0 or gid < 0:
        raise ValueError(f"negative owner uid={uid} gid={gid}")


def _dir_member(name: bytes, mode: int, uid: int, gid: int, mtime: int) -> bytes:
    pax: list[bytes] = []
    if len(name) > _NAME_SIZE:
        pax.append(_pax_record(b"path", name))
    if uid >= _MAX_OCTAL_7:
        pax.append(_pax_record(b"uid", b"%d" % uid))
    if gid >= _MAX_OCTAL_7:
        pax.append(_pax_record(b"gid", b"%d" % gid))
    if not 0 <= mtime < _MAX_OCTAL_11:
        pax.append(_pax_record(b"mtime", b"%d" % mtime))
    header = _header(
        name[:_NAME_SIZE],
        b"5",
        size=0,
        mode=mode,
        uid=uid if uid < _MAX_OCTAL_7 else 0,
        gid=gid if gid < _MAX_OCTAL_7 else 0,
        mtime=mtime if 0 <= mtime < _MAX_OCTAL_11 else 0,
    )
    if not pax:
        return header
    data = b"".join(pax)
    pax_header = _header(_PAX_HEADER_NAME, b"x", size=len(data), mode=0o644, uid=0, gid=0, mtime=0)
    return pax_header + data + bytes(-len(data) % _BLOCK) + header


def _pax_record(key: bytes, value: bytes) -> bytes:
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

"""The record the indexer produces for each tar member."""

from __future__ import annotations

import msgspec

ENTRY_TYPES = ("file", "dir", "symlink", "hardlink", "char", "block", "fifo", "other")
# The types whose members carry data: regular files, and "other" (type flags the
# indexer does not know, '7', 'X'), whose data is kept as a file's is.
DATA_TYPES = frozenset({"file", "other"})


class TarEntry(msgspec.Struct, frozen=True, array_like=True):
    """One member of a tar stream, as found in its headers.

    This struct is embedded, array-encoded, in on-disk manifests: the field order and
    meaning are a storage format and must not change.

    - ``path``: the member name, normalized by :func:`normalize_name` ("." is the root).
    - ``type``: one of :data:`ENTRY_TYPES`.
    - ``mode``: permission bits including setuid/setgid/sticky (``mode & 0o7777``).
    - ``uid``, ``gid``: numeric owner; ``mtime``: whole seconds (fractions truncated).
    - ``size``: bytes of data following the header in the stream; 0 for dir, symlink,
      hardlink, char, block and fifo, which never carry data.
    - ``link``: symlink target verbatim, or hardlink target normalized like ``path``;
      "" for other types.
    - ``offset``: stream offset of the member's first header block, counting any pax
      ('x') or GNU long-name/long-link blocks that precede its main header. Global pax
      ('g') headers are not part of any member. The data starts at the end of the
      main header; it is ``size`` bytes padded to a multiple of 512.
    - ``xattrs``: the extended attributes a restore sets (the engine applies the
      ``SCHILY.xattr.<name>`` PAX records with a non-empty value), as sorted
      ``(name, value)`` pairs. Added after the first format: a record stored without
      it reads as ``()``, and older readers ignore it.
    """

    path: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    link: str
    offset: int
    xattrs: tuple[tuple[str, bytes], ...] = ()


def normalize_name(raw: str) -> str:
    """Return a member name in the form :class:`TarEntry` stores.

    Leading "./" prefixes and trailing slashes are removed; the archive root ("./" or
    ".") becomes "."; a name made only of slashes stays "/" so it still reads as
    absolute; "" stays "" (both are rejected by the safety check). Nothing else is
    rewritten: "a//b" or "a/../b" are kept as stored.
    """
    if not raw:
        return ""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    stripped = name.rstrip("/")
    if stripped:
        return stripped
    return "/" if raw.startswith("/") else "."

"""Reading inside a snapshot: path prefixes of its index, and one member's bytes.

A caller names a file by its path relative to the snapshot's directory. The
path is looked up in the snapshot's own index, never joined to anything on the
server, so it cannot reach outside the snapshot; ``..`` is refused outright
rather than resolved, because a client that sends it is confused or hostile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from docksnap.errors import InvalidPathError
from docksnap.store.base import TarReader
from docksnap.tarstream import TarEntry, TarIndexer

_BLOCK = 512


def member_path(path: str) -> str:
    """``path`` as the index names it ("." is the snapshot's directory itself)."""
    if "\0" in path:
        raise InvalidPathError(path, "path must not contain NUL bytes")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidPathError(path, "path must not contain '..'")
    return "/".join(parts) or "."


def subtree(entries: list[TarEntry], root: str) -> list[TarEntry]:
    """The entry ``root`` and everything under it."""
    if root == ".":
        return entries
    return [e for e in entries if e.path == root or e.path.startswith(root + "/")]


async def member_bytes(reader: TarReader, entry: TarEntry) -> AsyncIterator[bytes]:
    """The data of ``entry`` (a regular file of this stream's index), in stream pieces.

    The stream is read, and verified by the store, up to the end of the member.
    An indexer runs alongside so that the member's data start is found by the
    same parser that built the index (pax and long-name headers included): it is
    fed in bulk up to the member's first header, then a block at a time until it
    reports the member, which it does right after the member's main header.
    """
    if entry.size == 0:
        return
    indexer = TarIndexer(require_end_marker=False)
    seen = len(indexer.entries)
    left = entry.size
    found = False
    async for piece in reader:
        view = memoryview(piece)
        while view and left:
            if found:
                take = view[:left]
                left -= len(take)
                yield bytes(take)
                break
            position = indexer.bytes_seen
            # Up to the member's first header in bulk, then to each block boundary:
            # headers end on one, so no data byte is ever fed to the indexer.
            if position < entry.offset:
                step = entry.offset - position
            else:
                step = _BLOCK - (position - entry.offset) % _BLOCK
            indexer.feed(view[:step])
            view = view[step:]
            if len(indexer.entries) > seen:
                seen = len(indexer.entries)
                found = indexer.entries[-1].offset == entry.offset
        if found and not left:
            return

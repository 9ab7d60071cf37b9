"""Saving a snapshot member by member, and reading back where each member's chunks are.

A per-file snapshot (docs/FORMAT.md §11.11) cuts each member's header blocks and
each member's data on their own, so an unchanged file's chunks are the same in
every snapshot that holds it. :class:`Member` lets a writer that already knows a
file is unchanged (a merge, an incremental host capture) give its data as those
chunks (:class:`ReusedContent`) instead of its bytes: the snapshot saved is the
one the equivalent tar stream gives — same chunk list, size, digest and index.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

from docksnap.store.chunked.cutter import Reused
from docksnap.store.chunked.format import ChunkRef
from docksnap.tarstream import TarEntry

_T = TypeVar("_T")
BLOCK: Final = 512
END_OF_ARCHIVE: Final = bytes(2 * BLOCK)


@dataclass(frozen=True, slots=True)
class ReusedContent:
    """A member's data given as chunks the store holds: ``size`` data bytes, and
    ``chunks`` cover them and the zero padding to a multiple of 512 (as
    :meth:`MemberChunkRecord.reused` returns them)."""

    chunks: tuple[ChunkRef, ...]
    size: int

    def __post_init__(self) -> None:
        held = sum(ref.length for ref in self.chunks)
        if self.size < 0 or held != padded(self.size):
            raise ValueError(f"chunks of {held} bytes cannot hold {self.size} padded data bytes")


@dataclass(frozen=True, slots=True)
class Member:
    """One tar member: ``header`` is its raw header blocks (PAX or GNU extension
    headers included, a multiple of 512 bytes), ``content`` its data as byte
    pieces (the writer adds the padding) or as :class:`ReusedContent`."""

    header: bytes
    content: ReusedContent | bytes | Iterable[bytes] | AsyncIterable[bytes] = ()


@dataclass(frozen=True, slots=True)
class MemberChunkRecord:
    """One member of a stored per-file snapshot and the chunks that hold it.

    ``header`` holds the member's ``header_size`` bytes of header blocks from byte
    ``header_offset`` of its first chunk on (the chunks of the bytes between two
    members' data are cut together, so they may hold other members' headers);
    ``first_chunk`` is where ``header`` begins in the manifest's chunk list.
    ``content`` is exactly the member's data and its padding: the same chunks in
    every per-file snapshot that holds the same data."""

    entry: TarEntry
    header: tuple[ChunkRef, ...]
    header_offset: int
    header_size: int
    first_chunk: int
    content: tuple[ChunkRef, ...]

    def reused(self) -> ReusedContent:
        """The member's data, to give to a later save without reading it."""
        return ReusedContent(self.content, self.entry.size)


def padded(size: int) -> int:
    return size + (-size % BLOCK)


async def member_stream(
    members: Iterable[Member] | AsyncIterable[Member], trailer: bytes
) -> AsyncIterator[bytes | Reused]:
    """The tar stream of ``members`` then ``trailer``, with reused data as
    :class:`Reused` runs instead of bytes."""
    async for member in _aiter(members):
        yield member.header
        content = member.content
        if isinstance(content, ReusedContent):
            if content.chunks:
                yield Reused(content.chunks, padded(content.size))
            continue
        size = 0
        pieces = [content] if isinstance(content, bytes) else content
        async for piece in _aiter(pieces):
            size += len(piece)
            yield piece
        if size % BLOCK:
            yield bytes(-size % BLOCK)
    yield trailer


async def _aiter(items: Iterable[_T] | AsyncIterable[_T]) -> AsyncIterator[_T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item

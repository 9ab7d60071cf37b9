"""A streaming filter over tar streams: keep, drop or rename whole members.

Every docksnap feature that leaves members out of a stream (excludes, whole-
container capture, merge) goes through :class:`TarFilter`, so each works on any
stream a capture path produces and memory stays bounded: member data passes
through in the pieces it arrived in, and only one member's headers (at most the
indexer's ``max_name_length`` of extension records plus one block) are held
while its fate is decided.

Headers are read by :class:`docksnap.tarstream.TarIndexer` and nothing else:
the filter feeds it one 512-byte block at a time while between members, so it
knows exactly where each member's headers end, and member data in bulk.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import blake3

from docksnap.tarstream import DATA_TYPES, TarEntry, TarIndexer

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
_TYPEFLAG_OFFSET = 156  # in a ustar header block


@dataclass(frozen=True, slots=True)
class Keep:
    """Keep the member as it is."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Leave the member out; ``reason`` says why (for reports), ``None`` when routine."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Rename:
    """Keep the member's data under a new header (built from the entry, named ``path``;
    see :func:`rewritten_header`)."""

    path: str


Decision = Keep | Drop | Rename
KEEP = Keep()
DROP = Drop()


class Selection:
    """Which members of one stream are kept, decided in stream order; single use.

    ``decide(entry)`` returns :data:`KEEP`, a :class:`Drop` or a :class:`Rename`.
    A hardlink whose target was dropped is dropped too (it could not be
    extracted), with the reason recorded in :attr:`dropped`. Shared by
    :class:`TarFilter` (a tar byte stream) and host capture (members walked
    one by one), so both leave out exactly the same members.

    :attr:`entries` are the members kept, in output order; :attr:`dropped` pairs
    each dropped entry with its reason; :attr:`root` is the first entry for the
    root directory ``.`` and :attr:`root_pax` the pax records of the last one
    that had any (where docksnap keeps a capture report, see :func:`root_with_records`).
    """

    def __init__(self, decide: Callable[[TarEntry], Decision]) -> None:
        self._decide = decide
        self.entries: list[TarEntry] = []
        self.dropped: list[tuple[TarEntry, str | None]] = []
        self.root: TarEntry | None = None
        self.root_pax: dict[str, str] = {}
        self._dropped_paths: set[str] = set()

    def choose(self, entry: TarEntry, header: bytes) -> Decision:
        """Decide one member given its raw header blocks, and record the decision."""
        if entry.path == ".":
            if self.root is None:
                self.root = entry
            if len(header) > BLOCK:
                self.root_pax = _pax_records(header) or self.root_pax
        decision = self._decide(entry)
        if entry.type == "hardlink" and entry.link in self._dropped_paths:
            decision = Drop(f"hard link to {entry.link!r}, which was left out")
        if isinstance(decision, Drop):
            self.dropped.append((entry, decision.reason))
            self._dropped_paths.add(entry.path)
        elif isinstance(decision, Rename):
            self.entries.append(_rebuild(entry, decision.path))
        else:
            self.entries.append(entry)
        return decision

    def withdraw(self, entry: TarEntry) -> None:
        """Take back the last member kept, which turned out not capturable (its
        reason is reported elsewhere): hard links to it are dropped from now on."""
        if self.entries and self.entries[-1] is entry:
            self.entries.pop()
        self._dropped_paths.add(entry.path)


class TarFilter:
    """Pass a tar stream through, deciding the fate of each member as its header arrives.

    The decisions are a :class:`Selection`'s (given, or made of ``decide``).

    After the stream: :attr:`entries`, :attr:`dropped`, :attr:`root` and
    :attr:`root_pax` are the selection's (with the kept entries' source offsets);
    :attr:`digests` maps the members that carry data (regular files and type
    "other") to the BLAKE3 hex of their data when ``hash_data`` is set.
    """

    def __init__(
        self,
        decide: Callable[[TarEntry], Decision] | None = None,
        *,
        hash_data: bool = False,
        selection: Selection | None = None,
    ) -> None:
        if selection is None:
            assert decide is not None
            selection = Selection(decide)
        self.selection = selection
        self._hash_data = hash_data
        self._indexer = TarIndexer()
        self.digests: dict[str, str] = {}
        self.source_bytes = 0
        self._pad_of_current = 0

    @property
    def entries(self) -> list[TarEntry]:
        return self.selection.entries

    @property
    def dropped(self) -> list[tuple[TarEntry, str | None]]:
        return self.selection.dropped

    @property
    def root(self) -> TarEntry | None:
        return self.selection.root

    @property
    def root_pax(self) -> dict[str, str]:
        return self.selection.root_pax

    async def run(
        self,
        chunks: AsyncIterator[bytes],
        *,
        end: bool = True,
        on_source_end: Callable[[], Awaitable[None]] | None = None,
        trailer: Callable[[], Awaitable[bytes]] | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield the filtered stream.

        The source's own end-of-archive marker and anything after it are not
        passed on: at the end ``on_source_end`` is awaited, then the bytes of
        ``trailer`` (extra members or headers, computed once the whole source was
        seen) are yielded, then, with ``end``, a fresh end-of-archive marker.
        ``end=False`` leaves the stream open for another to be appended.
        """
        pending = bytearray()  # headers of the member being decided
        data_left = 0
        keep_data = True
        digest: blake3.blake3 | None = None
        current = ""
        async for piece in chunks:
            self.source_bytes += len(piece)
            view = memoryview(piece)
            pos, size = 0, len(view)
            while pos < size:
                if data_left:
                    take = min(data_left, size - pos)
                    part = view[pos : pos + take]
                    self._indexer.feed(part)
                    if digest is not None:
                        # The padding after the data is not part of the content.
                        real = max(0, min(take, data_left - self._pad_of_current))
                        digest.update(part[:real])
                    if keep_data:
                        # A piece that is all data passes on as is, without a copy.
                        yield piece if take == size else bytes(part)
                    data_left -= take
                    pos += take
                    if not data_left and digest is not None:
                        self.digests[current] = digest.hexdigest()
                        digest = None
                    continue
                if self._indexer.done:
                    break  # bytes after the marker: padding, ignored as tar does
                take = min(BLOCK - len(pending) % BLOCK, size - pos)
                pending += view[pos : pos + take]
                pos += take
                if len(pending) % BLOCK:
                    continue
                before = len(self._indexer.entries)
                self._indexer.feed(pending[-BLOCK:])
                if len(self._indexer.entries) > before:
                    entry = self._indexer.entries[-1]
                    header = bytes(pending)
                    pending.clear()
                    out, keep_data = self._on_member(entry, header)
                    if out:
                        yield out
                    self._pad_of_current = -entry.size % BLOCK
                    data_left = entry.size + self._pad_of_current
                    current = entry.path
                    if self._hash_data and entry.type in DATA_TYPES and keep_data:
                        digest = blake3.blake3()
                        if not data_left:
                            self.digests[current] = digest.hexdigest()
                            digest = None
                elif self._indexer.done:
                    pending.clear()
        self._indexer.finish()
        if on_source_end is not None:
            await on_source_end()
        if trailer is not None:
            extra = await trailer()
            if extra:
                yield extra
        if end:
            yield END_OF_ARCHIVE

    def _on_member(self, entry: TarEntry, header: bytes) -> tuple[bytes, bool]:
        """Decide one member; return the header bytes to emit and whether its data goes too."""
        decision = self.selection.choose(entry, header)
        if isinstance(decision, Drop):
            return b"", False
        if isinstance(decision, Rename):
            return rewritten_header(self.selection.entries[-1], header), True
        return header, True


def member_header(
    entry: TarEntry, records: dict[str, str] | None = None, *, typeflag: bytes | None = None
) -> bytes:
    """A PAX header block (plus extension records when needed) describing ``entry``.

    Used for members docksnap makes itself (renamed, merged, whiteouts); members
    that pass through keep the engine's own header bytes. ``typeflag`` replaces
    the flag of ``entry.type`` (see :func:`rewritten_header`).
    """
    name = "./" if entry.path == "." else entry.path
    info = tarfile.TarInfo(name if entry.type != "dir" else name.rstrip("/") + "/")
    info.type = typeflag or _TARFILE_TYPES[entry.type]
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = entry.mtime
    info.size = entry.size if entry.type in DATA_TYPES else 0
    info.linkname = entry.link
    pax = dict(records or {})
    for key, value in entry.xattrs:
        try:
            pax["SCHILY.xattr." + key] = value.decode("utf-8")
        except UnicodeDecodeError:
            continue  # tarfile writes pax values as UTF-8 text only
    info.pax_headers = pax
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def rewritten_header(entry: TarEntry, original: bytes) -> bytes:
    """A new header for ``entry``, a member renamed whose data follows unchanged.

    ``original`` is the member's own header bytes (extension blocks, then its main
    header block last). Its type flag is kept: an entry of type "other" does not
    say which flag it had ('7', 'X', one the indexer does not know), and writing
    another would change what the member is and how its data is read.
    """
    flag_at = len(original) - BLOCK + _TYPEFLAG_OFFSET
    return member_header(entry, typeflag=original[flag_at : flag_at + 1])


def member_bytes(entry: TarEntry, data: bytes) -> bytes:
    """A whole small member: header, data, padding (``entry.size`` must be ``len(data)``)."""
    return member_header(entry) + data + bytes(-len(data) % BLOCK)


def root_with_records(root: TarEntry, records: dict[str, str]) -> bytes:
    """The root directory member again, carrying ``records`` in its own pax header.

    This is how docksnap appends metadata (a capture report) to a stream it has
    already passed on: a second entry for ``.`` with the same mode, owner and
    time changes nothing on extraction, and every tar reader (the engine's Go
    ``archive/tar``, GNU tar, Python's ``tarfile``) keeps or skips unknown pax
    keys. A pax *global* header would say it more directly, but Python's
    ``tarfile`` refuses one that is followed by the end of the archive.
    """
    return member_header(root, records)


_TARFILE_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "other": tarfile.REGTYPE,
}


def _rebuild(entry: TarEntry, path: str) -> TarEntry:
    return TarEntry(
        path, entry.type, entry.mode, entry.uid, entry.gid, entry.mtime, entry.size, entry.link, -1
    )


def _pax_records(header: bytes) -> dict[str, str]:
    """The pax records of one member's headers (tarfile parses them, not us)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(header + END_OF_ARCHIVE), mode="r:") as tar:
            member = tar.next()
            return dict(member.pax_headers) if member is not None else {}
    except tarfile.TarError:
        return {}

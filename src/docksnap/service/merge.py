"""Three-way merge of snapshots that diverged from a common base.

``merge(base, ours, theirs)`` makes a new snapshot holding every change of OURS
and of THEIRS relative to BASE, decided path by path:

- changed on one side only (added, modified or deleted): that side wins;
- changed the same way on both sides: no conflict;
- changed differently on both sides: a conflict, settled by ``on_conflict``:
  ``"fail"`` (default: nothing is stored, :class:`~docksnap.errors.MergeConflictError`
  lists every conflict), ``"ours"`` / ``"theirs"`` (that side's version, which may
  be a deletion), or ``"both"`` (ours at the path, theirs beside it as
  ``NAME.theirs``; directories keep ours). With ``text_merge``, a regular file
  that both sides edited is first merged line by line (``merge3``), which
  succeeds when their edits touch different lines.

"Changed" compares type, mode, owner, link target, size, extended attributes
and a BLAKE3 of the content; modification times alone are not a change, so two sides that wrote the
same bytes at different times agree.

How it is built: the merged tar is the members of OURS that survive, followed by
those of THEIRS, each with its own header bytes. When all three inputs are
per-file snapshots of a chunked store (docs/FORMAT.md §11.11), no member's data
is read at all: contents are compared by their chunk lists (the same bytes give
the same chunks), headers are read from the chunks between members' data, and
the merged snapshot is written with ``save_members``, reusing each member's data
chunks, so it stores no new data chunk (at most a chunk or two of headers).
Otherwise one pass over each input hashes member contents, and the merged tar is
streamed from the store through :class:`~docksnap.service.tarfilter.TarFilter`
into the store's ``save``. The result is verified before it is returned; a result
that fails verification is deleted.

Limits: a hard link whose target is taken from the other side cannot be
written and is left out (listed in ``skipped``); text merges read the three
versions into memory and only apply to files up to :data:`TEXT_MERGE_LIMIT`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import merge3
import msgspec

from docksnap.errors import InvalidArgumentError, MergeConflictError, SnapshotCorruptError
from docksnap.model import DirectorySnapshot, new_snapshot_id
from docksnap.service.tarfilter import (
    DROP,
    END_OF_ARCHIVE,
    KEEP,
    Decision,
    Drop,
    Rename,
    TarFilter,
    member_bytes,
    member_header,
    rewritten_header,
)
from docksnap.store.base import SnapshotInfo, SnapshotSource, SnapshotStore
from docksnap.store.chunked import ChunkedStore, Member, MemberChunkRecord, ReusedContent
from docksnap.store.chunked.format import chunk_list_digest
from docksnap.tarstream import DATA_TYPES, TarEntry, normalize_name

OnConflict = Literal["fail", "ours", "theirs", "both"]
POLICIES = ("fail", "ours", "theirs", "both")
TEXT_MERGE_LIMIT = 1024 * 1024
THEIRS_SUFFIX = ".theirs"

_Sig = tuple[str, int, int, int, str, int, str, tuple[tuple[str, bytes], ...]]


@dataclass(frozen=True, slots=True)
class Conflict:
    """One path both sides changed differently.

    ``kind``: ``"modify/modify"``, ``"add/add"``, ``"delete/modify"`` (ours
    deleted, theirs modified) or ``"modify/delete"``. ``resolution``: how it was
    settled (``"ours"``, ``"theirs"``, ``"both"``, ``"text-merge"``), ``None``
    when it was not.
    """

    path: str
    kind: str
    resolution: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "resolution": self.resolution}


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The merged snapshot and how each path was decided (counts of members)."""

    snapshot: DirectorySnapshot
    conflicts: tuple[Conflict, ...]
    from_ours: int
    from_theirs: int
    skipped: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot.to_dict(),
            "conflicts": [c.to_dict() for c in self.conflicts],
            "from_ours": self.from_ours,
            "from_theirs": self.from_theirs,
            "skipped": list(self.skipped),
        }


@dataclass(slots=True)
class _Side:
    """One input: its entries by path (first occurrence) and signatures."""

    info: SnapshotInfo
    entries: dict[str, TarEntry] = field(default_factory=dict)
    sigs: dict[str, _Sig] = field(default_factory=dict)

    def add(self, entry: TarEntry, content: str) -> None:
        """Record a member whose data hashes to ``content`` ("" without data). A path
        seen before keeps its first entry: a repeated root entry (where a capture
        report rides) changes nothing."""
        if entry.path in self.entries:
            return
        self.entries[entry.path] = entry
        self.sigs[entry.path] = (
            entry.type,
            entry.mode,
            entry.uid,
            entry.gid,
            entry.link,
            entry.size,
            content,
            entry.xattrs,
        )


@dataclass(slots=True)
class _Plan:
    from_ours: set[str] = field(default_factory=set)
    from_theirs: set[str] = field(default_factory=set)
    renamed: dict[str, str] = field(default_factory=dict)  # theirs path -> new path
    generated: dict[str, bytes] = field(default_factory=dict)  # path -> merged text
    conflicts: list[Conflict] = field(default_factory=list)


async def merge_snapshots(
    store: SnapshotStore,
    base: str,
    ours: str,
    theirs: str,
    *,
    name: str | None = None,
    on_conflict: str = "fail",
    text_merge: bool = False,
    ttl: float | None = None,
) -> MergeResult:
    """Merge snapshot ids ``ours`` and ``theirs`` against ``base``; see the module doc.

    Atomic: stores one verified snapshot or nothing. Raises
    :class:`InvalidArgumentError` for an unknown policy or inputs of different
    directories, :class:`MergeConflictError` for conflicts under ``"fail"``.
    """
    if on_conflict not in POLICIES:
        raise InvalidArgumentError(f"on_conflict must be one of {POLICIES}, got {on_conflict!r}")
    sides = [_Side(await store.get(snapshot_id)) for snapshot_id in (base, ours, theirs)]
    dirs = {side.info.dir for side in sides}
    if len(dirs) != 1:
        raise InvalidArgumentError(
            "merge needs three snapshots of one directory, got "
            + ", ".join(f"{s.info.id} of {s.info.dir}" for s in sides)
        )
    per_file = isinstance(store, ChunkedStore) and all(
        [await store.is_per_file(side.info.id) for side in sides]
    )
    for side in sides:
        if per_file:
            assert isinstance(store, ChunkedStore)
            _scan_records(side, await store.member_chunks(side.info.id))
        else:
            await _scan(store, side)
    b, o, t = sides
    plan = _plan(b, o, t, on_conflict)
    if text_merge:
        await _text_merge(store, b, o, t, plan, on_conflict)
    unresolved = [c for c in plan.conflicts if c.resolution is None]
    if unresolved:
        raise MergeConflictError(unresolved)
    _keep_ancestors(o, t, plan)
    image = o.info.source.image if o.info.source else ""
    out = _Output(b.info.dir, image, name, ttl)
    if per_file:
        assert isinstance(store, ChunkedStore)
        return await _write_members(store, o, t, plan, out)
    return await _write(store, o, t, plan, out)


# -- reading -------------------------------------------------------------------------------


async def _scan(store: SnapshotStore, side: _Side) -> None:
    """Hash every member's content: one verified read of the snapshot."""
    scanner = TarFilter(lambda entry: KEEP, hash_data=True)
    async with store.open(side.info.id) as reader:
        async for _ in scanner.run(aiter(reader)):
            pass
    for entry in scanner.entries:
        side.add(entry, scanner.digests.get(entry.path, ""))


def _scan_records(side: _Side, records: list[MemberChunkRecord]) -> None:
    """As :func:`_scan` from a per-file snapshot's member map: a file's content is
    identified by its chunk list, which equal bytes always give."""
    for record in records:
        entry = record.entry
        side.add(entry, chunk_list_digest(record.content) if entry.type in DATA_TYPES else "")


# -- deciding ------------------------------------------------------------------------------


def _plan(b: _Side, o: _Side, t: _Side, policy: str) -> _Plan:
    plan = _Plan()
    paths = list(o.entries) + [p for p in t.entries if p not in o.entries]
    paths += [p for p in b.entries if p not in o.entries and p not in t.entries]
    for path in paths:
        base, mine, their = b.sigs.get(path), o.sigs.get(path), t.sigs.get(path)
        if mine == their or their == base:
            _take(plan, "ours", path, mine)
        elif mine == base:
            _take(plan, "theirs", path, their)
        else:
            plan.conflicts.append(_settle(plan, path, base, mine, their, policy, o))
    return plan


def _take(plan: _Plan, side: str, path: str, sig: _Sig | None) -> None:
    if sig is None:
        return  # deleted on that side
    (plan.from_ours if side == "ours" else plan.from_theirs).add(path)


def _settle(
    plan: _Plan,
    path: str,
    base: _Sig | None,
    mine: _Sig | None,
    their: _Sig | None,
    policy: str,
    o: _Side,
) -> Conflict:
    kind = (
        "add/add"
        if base is None
        else "delete/modify"
        if mine is None
        else "modify/delete"
        if their is None
        else "modify/modify"
    )
    if policy == "fail":
        return Conflict(path, kind)
    if policy == "ours" or (policy == "both" and their is None):
        _take(plan, "ours", path, mine)
        return Conflict(path, kind, policy)
    if policy == "theirs":
        _take(plan, "theirs", path, their)
        return Conflict(path, kind, "theirs")
    # "both": ours stays at the path, theirs goes beside it.
    assert their is not None
    if their[0] == "dir" or (mine is not None and mine[0] == "dir"):
        _take(plan, "ours", path, mine)
        return Conflict(path, kind, "ours")
    _take(plan, "ours", path, mine)
    target = path + THEIRS_SUFFIX
    n = 1
    while target in o.entries or target in plan.renamed.values():
        target, n = f"{path}{THEIRS_SUFFIX}.{n}", n + 1
    plan.renamed[path] = target
    return Conflict(path, kind, "both")


def _keep_ancestors(o: _Side, t: _Side, plan: _Plan) -> None:
    """A kept path's directories are kept too (one side deleted a directory the other
    added files to); taken from ours when it has them, else from theirs."""
    kept = plan.from_ours | plan.from_theirs | set(plan.renamed.values()) | set(plan.generated)
    for path in sorted(kept):
        parent = path
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if parent in plan.from_ours or parent in plan.from_theirs:
                continue
            if o.entries.get(parent) is not None and o.entries[parent].type == "dir":
                plan.from_ours.add(parent)
            elif t.entries.get(parent) is not None and t.entries[parent].type == "dir":
                plan.from_theirs.add(parent)


async def _text_merge(
    store: SnapshotStore, b: _Side, o: _Side, t: _Side, plan: _Plan, policy: str
) -> None:
    """Try a line merge on each both-sides-modified regular file within the limit."""
    candidates = {
        c.path
        for c in plan.conflicts
        if c.kind == "modify/modify"
        and all(
            side.entries[c.path].type == "file" and side.entries[c.path].size <= TEXT_MERGE_LIMIT
            for side in (b, o, t)
        )
    }
    if not candidates:
        return
    texts = [await _contents(store, side.info.id, candidates) for side in (b, o, t)]
    settled: dict[str, Conflict] = {}
    for path in sorted(candidates):
        merged = _merge_lines(texts[0][path], texts[1][path], texts[2][path])
        if merged is not None:
            plan.generated[path] = merged
            settled[path] = Conflict(path, "modify/modify", "text-merge")
    if not settled:
        return
    for path in settled:
        # Undo what the policy had decided for these paths.
        plan.from_ours.discard(path)
        plan.from_theirs.discard(path)
        plan.renamed.pop(path, None)
    plan.conflicts = [settled.get(c.path, c) for c in plan.conflicts]


def _merge_lines(base: bytes, mine: bytes, their: bytes) -> bytes | None:
    if b"\0" in base + mine + their:
        return None  # not text
    lines = [data.splitlines(keepends=True) for data in (base, mine, their)]
    out: list[bytes] = []
    for group in merge3.Merge3(lines[0], lines[1], lines[2]).merge_groups():
        if group[0] == "conflict":
            return None
        out += group[1]
    return b"".join(out)


async def _contents(store: SnapshotStore, snapshot_id: str, paths: set[str]) -> dict[str, bytes]:
    picker = TarFilter(lambda entry: KEEP if entry.path in paths else DROP)
    async with store.open(snapshot_id) as reader:
        raw = b"".join([piece async for piece in picker.run(aiter(reader))])
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            handle = tar.extractfile(member)
            found.setdefault(normalize_name(member.name), handle.read() if handle else b"")
    return found


# -- writing -------------------------------------------------------------------------------


def _picker(emitted: set[str], chosen: set[str], renamed: dict[str, str]) -> Any:
    """The fate of each member of one side; ``emitted`` is shared by both sides."""

    def decide(entry: TarEntry) -> Decision:
        if entry.path in renamed and renamed[entry.path] not in emitted:
            emitted.add(renamed[entry.path])
            return Rename(renamed[entry.path])
        if entry.path in emitted:
            return DROP  # the repeated root entry, or a path the other side gave
        if entry.path in chosen:
            emitted.add(entry.path)
            return KEEP
        return DROP

    return decide


def _generated(o: _Side, path: str, data: bytes) -> TarEntry:
    """The entry of a text-merged file: ours' metadata, the merged size."""
    entry = o.entries[path]
    return TarEntry(path, "file", entry.mode, entry.uid, entry.gid, entry.mtime, len(data), "", -1)


async def _verified(store: SnapshotStore, info: SnapshotInfo) -> None:
    """Verify the merged snapshot; delete it and raise if it fails."""
    report = await store.verify(info.id)
    if not report.ok:
        await store.delete(info.id)
        detail = "; ".join(p.detail for p in report.problems)
        raise SnapshotCorruptError(info.id, f"merged snapshot failed verification: {detail}")


async def _write_members(
    store: ChunkedStore, o: _Side, t: _Side, plan: _Plan, out: _Output
) -> MergeResult:
    """As :func:`_write`, for per-file inputs: member by member, with every kept
    member's data given as the input's chunks (never read)."""
    emitted: set[str] = set()
    kept = {"ours": 0, "theirs": 0}
    skipped: list[str] = []

    async def side_members(
        side: _Side, label: str, decide: Callable[[TarEntry], Decision]
    ) -> AsyncIterator[Member]:
        dropped: set[str] = set()
        async for record, header in store.member_headers(side.info.id):
            entry = record.entry
            decision = decide(entry)
            if entry.type == "hardlink" and entry.link in dropped:
                dropped.add(entry.path)
                skipped.append(entry.path)  # its target was left out: not extractable
                continue
            if isinstance(decision, Drop):
                dropped.add(entry.path)
                continue
            if isinstance(decision, Rename):
                renamed = msgspec.structs.replace(entry, path=decision.path, offset=-1)
                header = rewritten_header(renamed, header)
            kept[label] += 1
            content = ReusedContent(record.content, entry.size) if record.content else ()
            yield Member(header, content)

    async def members() -> AsyncIterator[Member]:
        async for member in side_members(o, "ours", _picker(emitted, plan.from_ours, {})):
            yield member
        theirs = _picker(emitted, plan.from_theirs, plan.renamed)
        async for member in side_members(t, "theirs", theirs):
            yield member
        for path, data in sorted(plan.generated.items()):
            yield Member(member_header(_generated(o, path, data)), data)

    async def save(record: DirectorySnapshot, source: SnapshotSource) -> SnapshotInfo:
        return await store.save_members(record, members(), source=source, ttl=out.ttl)

    info = await _committed(store, out, save)
    return _result(info, plan, kept["ours"], kept["theirs"], skipped)


async def _write(
    store: SnapshotStore, o: _Side, t: _Side, plan: _Plan, out: _Output
) -> MergeResult:
    """Stream ours' kept members, then theirs', through :class:`TarFilter` into ``save``."""
    emitted: set[str] = set()
    ours_filter = TarFilter(_picker(emitted, plan.from_ours, {}))
    theirs_filter = TarFilter(_picker(emitted, plan.from_theirs, plan.renamed))

    async def merged() -> AsyncIterator[bytes]:
        async with store.open(o.info.id) as reader:
            async for piece in ours_filter.run(aiter(reader), end=False):
                yield piece
        async with store.open(t.info.id) as reader:
            async for piece in theirs_filter.run(aiter(reader), end=False):
                yield piece
        for path, data in sorted(plan.generated.items()):
            yield member_bytes(_generated(o, path, data), data)
        yield END_OF_ARCHIVE

    async def save(record: DirectorySnapshot, source: SnapshotSource) -> SnapshotInfo:
        return await store.save(record, merged(), source=source, ttl=out.ttl)

    info = await _committed(store, out, save)
    skipped = [
        entry.path
        for filt in (ours_filter, theirs_filter)
        for entry, reason in filt.dropped
        if reason is not None
    ]
    return _result(info, plan, len(ours_filter.entries), len(theirs_filter.entries), skipped)


@dataclass(frozen=True, slots=True)
class _Output:
    """What the merged snapshot is saved as: ``dir`` the inputs', ``image`` ours'."""

    dir: str
    image: str
    name: str | None
    ttl: float | None


async def _committed(
    store: SnapshotStore,
    out: _Output,
    save: Callable[[DirectorySnapshot, SnapshotSource], Awaitable[SnapshotInfo]],
) -> SnapshotInfo:
    """Save the merged snapshot under a new id with ``save``, and verify it; a merge
    that fails verification is deleted."""
    record = DirectorySnapshot(id=new_snapshot_id(), size=0, dir=out.dir, name=out.name)
    info = await save(record, SnapshotSource("merge", out.image))
    await _verified(store, info)
    return info


def _result(
    info: SnapshotInfo, plan: _Plan, from_ours: int, from_theirs: int, skipped: list[str]
) -> MergeResult:
    return MergeResult(
        snapshot=info.snapshot,
        conflicts=tuple(plan.conflicts),
        from_ours=from_ours,
        from_theirs=from_theirs,
        skipped=tuple(skipped),
    )

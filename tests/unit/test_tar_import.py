"""The import path's tar handling: strict parsing, re-encoding, restorability checks."""

from __future__ import annotations

import io
import tarfile
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docksnap.tarstream import (
    AmbiguousArchiveError,
    RestorableChecker,
    TarCanonicalizer,
    TarEntry,
    TarIndexer,
    TarSafetyChecker,
    UnsafeArchiveError,
)
from docksnap.tarstream.keyset import KeySet, path_key
from tests.tarcraft import END, gnu_long, header, pax, with_data
from tests.unit.test_go_tar_differential import issue_repro


def strict(raw: bytes) -> list[TarEntry]:
    indexer = TarIndexer(strict=True)
    indexer.feed(raw)
    return indexer.finish()


def reencode(raw: bytes, pieces: int = 1000, check: object = None) -> bytes:
    rewriter = TarCanonicalizer(check if callable(check) else (lambda entry: None))
    out = bytearray()
    for start in range(0, len(raw), pieces):
        out += rewriter.feed(raw[start : start + pieces])
    return bytes(out + rewriter.finish())


def without_offsets(entries: list[TarEntry]) -> list[tuple[object, ...]]:
    return [
        (e.path, e.type, e.mode, e.uid, e.gid, e.mtime, e.size, e.link, e.xattrs) for e in entries
    ]


# -- strict parsing -----------------------------------------------------------------------


def test_the_issue_archive_is_ambiguous_and_names_the_member_the_engine_sees() -> None:
    assert [e.path for e in strict_lenient(issue_repro())] == ["evil", "evil/pwned"]
    with pytest.raises(AmbiguousArchiveError) as caught:
        strict(issue_repro())
    assert caught.value.path == "evil"
    assert isinstance(caught.value, UnsafeArchiveError)


def test_without_the_ambiguity_check_the_engine_reading_is_still_refused() -> None:
    # Defence in depth: read as the engine reads it, the archive writes through the
    # symlink it created, which the safety check refuses on its own.
    symlink, through = strict_lenient(issue_repro())
    checker = TarSafetyChecker()
    checker.check(symlink)
    with pytest.raises(UnsafeArchiveError, match="goes through symlink 'evil'") as caught:
        checker.check(through)
    assert caught.value.path == "evil/pwned"


def strict_lenient(raw: bytes) -> list[TarEntry]:
    indexer = TarIndexer()
    indexer.feed(raw)
    return indexer.finish()


@pytest.mark.parametrize(
    ("raw", "member", "reason"),
    [
        (gnu_long(b"L", b"gnu") + pax({b"path": b"pax"}) + header() + END, "gnu", "disagree"),
        (pax({b"path": b"a"}) + pax({b"path": b"b"}) + header() + END, "b", "2 PAX headers"),
        (pax({b"uid": b"1"}, b"g") + header(b"m") + END, "m", "global header sets uid"),
        (pax({b"path": b"p"}) + pax({}, b"g") + header(b"m") + END, "m", "drops the extension"),
        (header(b"s", b"2", size=10) + END, "s", "claims 10 bytes"),
        (pax([(b"uid", b"1"), (b"uid", b"2")]) + header(b"m") + END, "m", "given twice: uid"),
        (gnu_long(b"L", b"") + header(b"m") + END, "m", "empty GNU long name"),
    ],
)
def test_ambiguities_are_refused_naming_the_member(raw: bytes, member: str, reason: str) -> None:
    strict_lenient(raw)  # the engine's reading exists: only strict mode refuses
    with pytest.raises(AmbiguousArchiveError, match=reason) as caught:
        strict(raw)
    assert caught.value.path == member


def test_a_comment_only_global_header_is_not_ambiguous() -> None:
    # git archive writes one: "comment=<commit id>".
    raw = pax({b"comment": b"c0ffee"}, b"g") + header(b"m") + END
    assert [e.path for e in strict(raw)] == ["m"]


# -- re-encoding --------------------------------------------------------------------------


def _mixed_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in [("d" * 150 + "/f", b"x" * 1000), ("small", b""), ("b", b"y" * 512)]:
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.mtime = len(data), 3_000_000, 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("l")
        link.type, link.linkname = tarfile.SYMTYPE, "/t" * 80
        archive.addfile(link)
    return buffer.getvalue() + pax({b"SCHILY.xattr.user.k": b"\x00\xff"}) + header(b"x") + END


@settings(max_examples=50, deadline=None)
@given(pieces=st.integers(1, 3000))
def test_reencoding_reads_back_the_same_members_however_the_input_is_split(pieces: int) -> None:
    raw = _mixed_archive()
    canonical = reencode(raw, pieces)
    assert canonical == reencode(raw)
    assert without_offsets(strict(canonical)) == without_offsets(strict_lenient(raw))
    with tarfile.open(fileobj=io.BytesIO(canonical)) as archive:
        assert archive.extractfile("b").read() == b"y" * 512  # type: ignore[union-attr]


def test_reencoding_is_a_fixed_point() -> None:
    once = reencode(_mixed_archive())
    assert reencode(once) == once


def test_a_member_that_fails_its_check_contributes_no_byte() -> None:
    secret = b"S" * 700
    bad = with_data(header(b"bad", size=700), secret)
    raw = with_data(header(b"ok", size=2), b"ok") + bad + END

    def check(entry: TarEntry) -> None:
        if entry.path == "bad":
            raise UnsafeArchiveError(entry.path, "no")

    rewriter = TarCanonicalizer(check)
    out = bytearray()
    for start in range(0, 1100, 100):  # the "ok" member, and most of "bad"'s header
        out += rewriter.feed(raw[start : start + 100])
    with pytest.raises(UnsafeArchiveError):
        rewriter.feed(raw[1100:])
    assert b"ok" in out
    assert b"bad" not in out
    assert b"S" not in out


def test_a_refused_stream_stays_refused() -> None:
    """After a check raised, the canonicalizer must not carry on with later members
    (the refused one would silently be missing from a stream that still ends well)."""

    def check(entry: TarEntry) -> None:
        if entry.path == "bad":
            raise UnsafeArchiveError(entry.path, "no")

    members = [with_data(header(b"%s" % n, size=2), b"xy") for n in (b"ok", b"bad", b"after")]
    rewriter = TarCanonicalizer(check)
    rewriter.feed(members[0])
    with pytest.raises(UnsafeArchiveError):
        rewriter.feed(members[1])
    with pytest.raises(UnsafeArchiveError):
        rewriter.feed(members[2])
    with pytest.raises(UnsafeArchiveError):
        rewriter.finish()


def test_reencoding_keeps_no_per_member_state() -> None:
    member = with_data(header(b"f", size=10), b"0123456789")
    rewriter = TarCanonicalizer(lambda entry: None)
    rewriter.feed(member * 1000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            rewriter.feed(member * 1000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A kept entry costs ~100 bytes: 100,000 of them would be ~10 MB.
    assert grown < 256 * 1024
    assert rewriter.members == 101_000


# -- restorability ------------------------------------------------------------------------


def _entry(path: str, kind: str = "file", link: str = "", uid: int = 0, gid: int = 0) -> TarEntry:
    return TarEntry(path, kind, 0o644, uid, gid, 0, 0, link, 0)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([_entry("h", "hardlink", "gone")], "no earlier member created"),
        ([_entry("d", "dir"), _entry("h", "hardlink", "d")], "no earlier member created"),
        ([_entry("x/y"), _entry("h", "hardlink", "x")], "no earlier member created"),
        ([_entry("u", "other")], "type flag the engine does not extract"),
        ([_entry("a", "dir"), _entry("a")], "file replaces a directory"),
        ([_entry("a", "dir"), _entry("a", "symlink", "x")], "symlink replaces a directory"),
        ([_entry("a"), _entry("a", "dir")], "directory replaces a non-directory"),
        ([_entry("a"), _entry("a/b/c")], "parent 'a' is not a directory"),
        ([_entry("n", "char")], "char members are not allowed"),
        ([_entry("up", "symlink", "../etc")], "climbs out of the archive root"),
        ([_entry("a/b/up", "symlink", "../../../x")], "climbs out of the archive root"),
        # lchown(2) truncates to 32 bits: 2**32 would restore as root.
        ([_entry("sh", uid=2**32)], "uid 4294967296 does not fit"),
        ([_entry("sh", gid=2**32 - 1)], "gid 4294967295 does not fit"),
        # Deep paths: the engine cannot create them, and they made the checks quadratic.
        ([_entry("a/" * 2100 + "f")], "path of 4201 bytes is longer than 4096"),
        ([_entry("l", "symlink", "a/" * 2100)], "link target of 4200 bytes"),
        ([_entry("x" * 256)], "component longer than 255 bytes"),
        # What the engine refuses although each member alone is fine (checked on the
        # engine in tests/integration/test_import_safety.py).
        ([_entry("a/f"), _entry("a")], "file replaces a directory"),  # a/ was implied
        ([_entry("a/b/f"), _entry("a/b", "symlink", "/etc")], "symlink replaces a directory"),
        ([_entry("f"), _entry("f", "hardlink", "f")], "hard link to itself"),
        ([_entry("d/f"), _entry("d/./f", "hardlink", "d/f")], "hard link to itself"),
        ([_entry("l", "symlink", "")], "empty symlink target"),
    ],
)
def test_restorable_checker_refuses(members: list[TarEntry], reason: str) -> None:
    checker = RestorableChecker()
    *earlier, last = members
    for entry in earlier:
        checker.check(entry)
    with pytest.raises(UnsafeArchiveError, match=reason) as caught:
        checker.check(last)
    assert caught.value.path == last.path


def test_restorable_checker_accepts_what_the_engine_extracts() -> None:
    checker = RestorableChecker(allow_devices=True)
    for entry in [
        _entry(".", "dir"),
        _entry("a/b/f"),  # parents made implicitly, as the engine does
        _entry("a", "dir"),  # a directory over an implicit directory merges
        _entry("a/./h", "hardlink", "./a/b/f"),  # lexically the same target
        _entry("s", "symlink", "/etc"),
        _entry("a/b/rel", "symlink", "../../s"),  # climbs, but not out
        _entry("h2", "hardlink", "s"),  # a hard link to a symlink is fine
        _entry("a/b/f"),  # a file over a file replaces it
        _entry("n", "char"),
    ]:
        checker.check(entry)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), st.integers(1, 3)), max_size=3000))
def test_the_key_set_answers_as_a_set_does(items: list[tuple[str, int]]) -> None:
    keys = KeySet()
    added = {path_key(path, kind) for path, kind in items[::2]}
    for key in added:
        keys.add(key)
        keys.add(key)  # twice: counted once
    assert len(keys) == len(added)
    for path, kind in items:
        assert (path_key(path, kind) in keys) == (path_key(path, kind) in added)
    assert keys.nbytes() <= max(8 * 1024, 2 * 8 * len(added) / 0.7)


@pytest.mark.parametrize("checker_type", [TarSafetyChecker, RestorableChecker])
def test_the_checkers_remember_paths_in_about_a_dozen_bytes(checker_type: type) -> None:
    """Every path of the archive is remembered (a later member may go through or
    link to any of them), but as a key, not a string: 10,000,000 members of any
    path length must fit in memory. Here 200,000 symlinks with 200-byte paths."""
    checker = checker_type()
    prefix = "d" * 180
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200_000):
            checker.check(_entry(f"{prefix}/{i:012d}", "symlink", "/etc"))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Strings would take ~50 MB; a set of ints ~12 MB; keys 8 bytes in a table kept
    # under 70 % full: at most 2 * 200,000 * 8 / 0.7 ≈ 4.6 MB just after it grew.
    assert grown < 5 * 1024 * 1024


def test_a_uid_beyond_32_bits_is_refused_through_the_import_path() -> None:
    raw = pax({b"uid": b"4294967296"}) + with_data(
        header(b"sh", b"0", size=4, mode=0o4755), b"evil"
    )
    with pytest.raises(UnsafeArchiveError, match="uid 4294967296"):
        reencode(raw + END, check=RestorableChecker().check)


def test_many_global_headers_keep_memory_bounded() -> None:
    indexer = TarIndexer(strict=True)
    headers = [pax({b"SCHILY.xattr.user.%d" % i: b"v"}, b"g") for i in range(3000)]
    indexer.feed(headers[0])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for raw in headers[1:]:
            indexer.feed(raw)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024
    with pytest.raises(AmbiguousArchiveError, match=r"sets SCHILY\.xattr\.user\.0 "):
        indexer.feed(header(b"m") + END)

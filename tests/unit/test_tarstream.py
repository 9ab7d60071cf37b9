"""Tests for docksnap.tarstream: the header indexer, the safety checks, the dirs archive.

The indexer is checked against Python's tarfile, member by member and field by field,
for every way of splitting the byte stream into chunks.
"""

from __future__ import annotations

import array
import contextlib
import io
import itertools
import os
import pickle
import shutil
import subprocess
import tarfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from docksnap.tarstream import (
    AmbiguousArchiveError,
    TarEntry,
    TarError,
    TarFormatError,
    TarIndexer,
    TarLimitError,
    TarSafetyChecker,
    UnsafeArchiveError,
    build_dirs_tar,
    check_member_safe,
)

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
Member = tuple[tarfile.TarInfo, bytes]

# --------------------------------------------------------------------------------------
# Building archives with tarfile, and what the indexer should say about them


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> Member:
    """A tarfile member; ``attrs`` set TarInfo attributes (uid, mode, linkname, ...)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def make_tar(
    members: Iterable[Member], fmt: int, pax_headers: dict[str, str] | None = None
) -> bytes:
    """Write ``members`` with tarfile; the result ends with tarfile's zero padding."""
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=fmt, encoding="utf-8", pax_headers=pax_headers
    ) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def tarfile_members(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", encoding="utf-8") as archive:
        return archive.getmembers()


def expected_path(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") or "."


def expected_type(info: tarfile.TarInfo) -> str:
    checks: list[tuple[Callable[[], bool], str]] = [
        (info.isreg, "file"),
        (info.isdir, "dir"),
        (info.issym, "symlink"),
        (info.islnk, "hardlink"),
        (info.ischr, "char"),
        (info.isblk, "block"),
        (info.isfifo, "fifo"),
    ]
    return next((kind for check, kind in checks if check()), "other")


def expected_entry(info: tarfile.TarInfo) -> TarEntry:
    kind = expected_type(info)
    link = {"symlink": info.linkname, "hardlink": expected_path(info.linkname)}.get(kind, "")
    return TarEntry(
        path=expected_path(info.name),
        type=kind,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        mtime=int(info.mtime),
        size=info.size if kind == "file" else 0,
        link=link,
        offset=info.offset,
    )


def expected_entries(raw: bytes) -> list[TarEntry]:
    return [expected_entry(info) for info in tarfile_members(raw)]


def index(chunks: Iterable[bytes | bytearray | memoryview], **options: object) -> list[TarEntry]:
    indexer = TarIndexer(**options)  # type: ignore[arg-type]
    for chunk in chunks:
        indexer.feed(chunk)
    return indexer.finish()


def split_cyclic(raw: bytes, sizes: Sequence[int]) -> list[bytes]:
    chunks, pos, i = [], 0, 0
    while pos < len(raw):
        chunks.append(raw[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return chunks


def split_at(raw: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def common_members(fmt: int) -> list[Member]:
    """Members every format can write: sizes around the block size, modes, links."""
    members = [
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("./a/", tarfile.DIRTYPE, mode=0o1777),
        member("./a/empty/", tarfile.DIRTYPE),
        *(member(f"./a/f{n}", data=bytes([n % 251]) * n) for n in (0, 1, 511, 512, 513, 1024)),
        member("./a/owned", data=b"secret", uid=1234, gid=4321, mode=0o600),
        member("./a/setuid", data=b"x", mode=0o4755),
        member("./a/link", tarfile.SYMTYPE, linkname="f1"),
        member("./a/abs-link", tarfile.SYMTYPE, linkname="/etc/passwd"),
        member("./a/hard", tarfile.LNKTYPE, linkname="./a/f1"),
        member("./ünïcødé/日本語.txt", data=b"utf8"),
        member("./dev/char", tarfile.CHRTYPE, devmajor=1, devminor=3),
        member("./dev/block", tarfile.BLKTYPE, devmajor=8, devminor=0),
        member("./dev/fifo", tarfile.FIFOTYPE),
        member("./" + "p" * 60 + "/" + "q" * 80, data=b"prefix-split in ustar"),
        member("./" + "n" * 99, data=b"name field exactly 100 bytes"),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        members += [
            member("./long/" + "x" * 150, data=b"long name"),
            member("./long/" + "y" * 300, data=b"very long name"),
            member("./long/" + "z" * 120, tarfile.SYMTYPE, linkname="/" + "t" * 200),
            member("./long/hard", tarfile.LNKTYPE, linkname="./long/" + "x" * 150),
            member("./bad-\udcffutf8", data=b"raw bytes"),
            member("./a/big-uid", data=b"b", uid=2**30, gid=2**31),
            member("./a/old", data=b"o", mtime=-100),
            member("./a/future", data=b"f", mtime=8**11 + 5),
        ]
    if fmt == tarfile.PAX_FORMAT:
        members.append(member("./a/fraction", data=b"t", mtime=1_700_000_000.75))
    return members


ARCHIVES = {name: make_tar(common_members(fmt), fmt) for name, fmt in FORMATS.items()}
EXPECTED = {name: expected_entries(raw) for name, raw in ARCHIVES.items()}


def test_fixtures_exercise_what_they_claim() -> None:
    gnu, pax = ARCHIVES["gnu"], ARCHIVES["pax"]
    assert b"././@LongLink" in gnu
    assert b"\x80" + bytes(3) + (2**30).to_bytes(4, "big") in gnu  # base-256 uid
    assert b" mtime=1700000000.75\n" in pax
    assert b" uid=1073741824\n" in pax
    assert b"p" * 60 + b"\x00" in ARCHIVES["ustar"]  # the ustar prefix field is used


# --------------------------------------------------------------------------------------
# TarIndexer against tarfile


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_whole_stream_matches_tarfile(name: str) -> None:
    assert index([ARCHIVES[name]]) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_one_byte_chunks_match_tarfile(name: str) -> None:
    raw = ARCHIVES[name]
    assert index(raw[i : i + 1] for i in range(len(raw))) == EXPECTED[name]


@given(
    name=st.sampled_from(sorted(ARCHIVES)),
    sizes=st.lists(st.integers(1, 2048), min_size=1, max_size=30),
    wrap=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_cyclic_chunk_sizes_match_tarfile(
    name: str, sizes: list[int], wrap: Callable[[bytes], bytes]
) -> None:
    chunks = [wrap(chunk) for chunk in split_cyclic(ARCHIVES[name], sizes)]
    assert index(chunks) == EXPECTED[name]


@given(name=st.sampled_from(sorted(ARCHIVES)), data=st.data())
def test_random_split_points_match_tarfile(name: str, data: st.DataObject) -> None:
    raw = ARCHIVES[name]
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=60))
    assert index(split_at(raw, cuts)) == EXPECTED[name]


_COMPONENT = st.text(
    st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=70
)
_PATH = st.lists(_COMPONENT, min_size=1, max_size=5).map("/".join)


@st.composite
def generated_members(draw: st.DrawFn, fmt: int) -> list[Member]:
    ustar = fmt == tarfile.USTAR_FORMAT
    big = 8**7 - 1 if ustar else 2**40
    members = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([b"0", b"5", b"2", b"1", b"6", b"3"]))
        attrs: dict[str, object] = {
            "uid": draw(st.integers(0, big)),
            "gid": draw(st.integers(0, big)),
            "mode": draw(st.integers(0, 0o7777)),
            "mtime": draw(st.integers(0, 8**11 - 1) if ustar else st.integers(-(2**40), 2**40)),
        }
        if kind in (b"1", b"2"):
            attrs["linkname"] = draw(_PATH)
        data = draw(st.binary(max_size=1100)) if kind == b"0" else b""
        members.append(member(draw(_PATH), kind, data, **attrs))
    return members


@settings(max_examples=150)
@given(fmt=st.sampled_from(sorted(FORMATS.values())), data=st.data())
def test_generated_archives_match_tarfile(fmt: int, data: st.DataObject) -> None:
    members = data.draw(generated_members(fmt))
    try:
        raw = make_tar(members, fmt)
    except ValueError:  # a name ustar cannot split into prefix and name
        assume(False)
    sizes = data.draw(st.lists(st.integers(1, 1300), min_size=1, max_size=10))
    assert index(split_cyclic(raw, sizes)) == expected_entries(raw)


def make_tree(root: Path, *, modern: bool) -> None:
    (root / "d" / "empty").mkdir(parents=True)
    for size in (0, 1, 511, 512, 513):
        (root / "d" / f"f{size}").write_bytes(b"x" * size)
    (root / "d" / "f1").chmod(0o4750)
    os.link(root / "d" / "f1", root / "d" / "hard")
    (root / "d" / "sym").symlink_to("/etc/passwd")
    if modern:  # v7 has no fifos, v7 and ustar no long names
        os.mkfifo(root / "d" / "fifo")
        (root / ("ü" * 80)).mkdir()
        (root / ("ü" * 80) / ("n" * 200)).write_bytes(b"long")
        (root / "longlink").symlink_to("t" * 300)


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "v7"])
def test_gnu_tar_output_matches_tarfile(tmp_path: Path, fmt: str) -> None:
    make_tree(tmp_path / "tree", modern=fmt in ("gnu", "posix"))
    raw = subprocess.run(
        ["tar", f"--format={fmt}", "-C", str(tmp_path / "tree"), "-cf", "-", "."],
        check=True,
        capture_output=True,
    ).stdout
    expected = expected_entries(raw)
    assert len(expected) >= 10
    assert index(split_cyclic(raw, [1000, 1, 7])) == expected


def test_pax_global_header_is_ignored_as_by_the_engine() -> None:
    # Go's archive/tar returns a 'g' header as a member of its own and moby skips it:
    # its records apply to nothing (tarfile, and the expectation below, differ).
    members = [member("a", data=b"1", uid=5), member("b" * 120, data=b"2", uid=6)]
    raw = make_tar(members, tarfile.PAX_FORMAT, pax_headers={"uid": "77", "mtime": "12.5"})
    entries = index([raw])
    assert [(e.path, e.uid) for e in entries] == [("a", 5), ("b" * 120, 6)]
    assert entries[0].offset == 1024  # the 'g' header is not part of the member
    assert [e.offset for e in entries] == [m.offset for m in tarfile_members(raw)]


def test_docker_style_names_are_normalized() -> None:
    raw = make_tar(
        [member("./", tarfile.DIRTYPE), member("./a/", tarfile.DIRTYPE), member("./a/b.txt")],
        tarfile.PAX_FORMAT,
    )
    assert [e.path for e in index([raw])] == [".", "a", "a/b.txt"]


def test_entry_is_a_compact_frozen_array() -> None:
    entry = TarEntry("a", "file", 0o644, 1, 2, 3, 4, "", 512)
    assert msgspec.json.encode(entry) == b'["a","file",420,1,2,3,4,"",512,[]]'
    assert msgspec.json.decode(msgspec.json.encode(entry), type=TarEntry) == entry
    # Records stored before ``xattrs`` existed still read.
    assert msgspec.json.decode(b'["a","file",420,1,2,3,4,"",512]', type=TarEntry) == entry
    assert [f for f in TarEntry.__struct_fields__] == [
        "path", "type", "mode", "uid", "gid", "mtime", "size", "link", "offset", "xattrs"
    ]  # fmt: skip
    with pytest.raises(AttributeError):
        entry.path = "b"  # type: ignore[misc]


# --------------------------------------------------------------------------------------
# Hand-made headers: the corners tarfile does not write


def octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def raw_header(
    name: bytes = b"f",
    typeflag: bytes = b"0",
    *,
    size: int | bytes = 0,
    mode: bytes = b"0000644\x00",
    uid: bytes = b"0001750\x00",
    gid: bytes = b"0001750\x00",
    mtime: bytes = b"14524770401\x00",
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    checksum: str = "unsigned",
) -> bytes:
    """One 512-byte header with exactly the given field bytes and a valid checksum."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = mode
    block[108:116] = uid
    block[116:124] = gid
    block[124:136] = octal(size, 12) if isinstance(size, int) else size
    block[136:148] = mtime
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname
    block[257:265] = magic
    block[345 : 345 + len(prefix)] = prefix
    signed = checksum == "signed"
    total = sum(b - 256 if signed and b > 127 else b for b in block)
    block[148:156] = b"%06o\x00 " % total
    return bytes(block)


def with_data(header: bytes, data: bytes) -> bytes:
    return header + data + bytes(-len(data) % 512)


def pax(records: dict[str, str] | bytes, typeflag: bytes = b"x") -> bytes:
    """A pax header with its records (a dict, or the raw record bytes)."""
    if isinstance(records, dict):
        body = b"".join(
            pax_record(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in records.items()
        )
    else:
        body = records
    return with_data(raw_header(b"PaxHeader", typeflag, size=len(body)), body)


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" %s=%s\n" % (key, value)
    length = len(body) + len(str(len(body)))
    if len(str(length)) + len(body) != length:
        length += 1
    return b"%d%s" % (length, body)


END = bytes(1024)


def entries_of(*parts: bytes, **options: object) -> list[TarEntry]:
    return index([b"".join(parts)], **options)


def one(*parts: bytes) -> TarEntry:
    (entry,) = entries_of(*parts, END)
    return entry


def test_signed_checksum_is_accepted() -> None:
    entry = one(raw_header("é".encode(), checksum="signed"))
    assert entry.path == "é"


def test_ustar_prefix_and_full_width_name() -> None:
    assert one(raw_header(b"name", prefix=b"pre/fix")).path == "pre/fix/name"
    assert one(raw_header(b"n" * 100, prefix=b"p" * 155)).path == "p" * 155 + "/" + "n" * 100


def test_prefix_is_ignored_without_posix_magic() -> None:
    # GNU headers keep atime/ctime where ustar has prefix; v7 headers have garbage.
    assert one(raw_header(b"name", magic=b"ustar  \x00", prefix=b"12345")).path == "name"
    assert one(raw_header(b"name", magic=bytes(8), prefix=b"junk")).path == "name"


def test_v7_header_with_trailing_slash_is_a_directory() -> None:
    entry = one(raw_header(b"olddir/", b"\x00", magic=bytes(8)))
    assert (entry.path, entry.type) == ("olddir", "dir")
    assert one(raw_header(b"oldfile", b"\x00", magic=bytes(8))).type == "file"


def test_octal_fields_with_space_and_nul_terminators() -> None:
    entry = one(
        raw_header(
            mode=b" 100755 ",
            uid=b"   1750\x00",
            gid=b"1750 \x00\x00\x00",
            size=b"0000000001 \x00",
            mtime=b"00000000017\x00",
        ),
        b"x" + bytes(511),
    )
    assert (entry.mode, entry.uid, entry.gid, entry.size, entry.mtime) == (
        0o755,
        1000,
        1000,
        1,
        15,
    )


def test_empty_numeric_fields_read_as_zero() -> None:
    entry = one(raw_header(uid=bytes(8), gid=b" " * 8, size=bytes(12)))
    assert (entry.uid, entry.gid, entry.size) == (0, 0, 0)


def test_base256_fields() -> None:
    entry = one(
        raw_header(
            uid=b"\x80" + (2**40).to_bytes(7, "big"),
            mtime=b"\xff" * 11 + b"\x9c",  # -100
            size=b"\x80" + (3).to_bytes(11, "big"),
        ),
        b"abc" + bytes(509),
    )
    assert (entry.uid, entry.mtime, entry.size) == (2**40, -100, 3)


@pytest.mark.parametrize(
    "field",
    [
        {"size": b"\xff" * 12},  # negative size
        {"uid": b"\xff" * 8},  # negative uid
        {"mode": b"0000648\x00"},
        {"size": b"-0000000001\x00"},
        {"size": b"0000_000001\x00"},
        {"mtime": b"+1234567012\x00"},
        {"gid": b"12 34\x00\x00\x00"},
    ],
)
def test_bad_numeric_field_is_a_format_error(field: dict[str, bytes]) -> None:
    with pytest.raises(TarFormatError) as caught:
        entries_of(raw_header(**field), END)  # type: ignore[arg-type]
    assert caught.value.offset == 0


def test_types() -> None:
    # '7' and 'X' are unknown to Go's reader, and moby refuses to extract them.
    types = {b"7": "other", b"X": "other", b"3": "char", b"4": "block", b"6": "fifo", b"V": "other"}
    for flag, kind in types.items():
        assert one(raw_header(typeflag=flag)).type == kind


def test_unknown_type_data_is_skipped() -> None:
    first, second = entries_of(
        with_data(raw_header(b"label", b"D", size=700), b"\x01" * 700), raw_header(b"next"), END
    )
    assert (first.type, first.size, second.path, second.offset) == ("other", 700, "next", 1536)


def test_header_only_types_carry_no_data_whatever_their_size_says() -> None:
    # Go's archive/tar, which writes Docker's archives, reads it the same way.
    first, second = entries_of(raw_header(b"d/", b"5", size=1024), raw_header(b"next"), END)
    assert (first.type, first.size, second.offset) == ("dir", 0, 512)


def test_gnu_sparse_is_rejected() -> None:
    with pytest.raises(TarFormatError, match="sparse"):
        entries_of(raw_header(typeflag=b"S"), END)
    with pytest.raises(TarFormatError, match="sparse"):
        entries_of(pax({"GNU.sparse.major": "1"}), raw_header(), END)


def test_pax_overrides() -> None:
    entry = one(
        pax({"path": "p/ü", "size": "3", "uid": "99", "gid": "98", "mtime": "-1.9"}),
        with_data(raw_header(b"short", size=0), b"abc"),
    )
    # Go's time.Unix(-1, -0.9e9) is 1.9 s before the epoch: whole seconds round down.
    assert (entry.path, entry.size, entry.uid, entry.gid, entry.mtime, entry.offset) == (
        "p/ü",
        3,
        99,
        98,
        -2,
        0,
    )


def test_pax_linkpath_and_unknown_keys() -> None:
    records = {"linkpath": "/t" * 80, "SCHILY.xattr.user.x": "v", "comment": "hi"}
    entry = one(pax(records), raw_header(b"l", b"2"))
    assert (entry.type, entry.link) == ("symlink", "/t" * 80)


def test_pax_empty_value_keeps_the_header_value() -> None:
    # Go's mergePAX skips empty values; a global header changes nothing at all.
    first, second, third = entries_of(
        pax({"uid": "7", "mtime": "5"}, b"g"),
        raw_header(b"a"),
        pax({"uid": ""}),
        raw_header(b"b"),
        pax({"mtime": ""}, b"g"),
        raw_header(b"c"),
        END,
    )
    assert [(e.uid, e.mtime) for e in (first, second, third)] == [
        (1000, 1700000001),
        (1000, 1700000001),
        (1000, 1700000001),
    ]


def test_pax_records_padded_with_nul_are_refused_as_by_go() -> None:
    body = pax_record(b"path", b"padded") + bytes(20)
    with pytest.raises(TarFormatError):
        one(pax(body), raw_header())


@pytest.mark.parametrize(
    "body",
    [
        b"12 path=abc",  # no newline
        b"99 path=abc\n",  # length past the record
        b"5 path=abc\n",  # length too short
        b"x path=abc\n",  # length not a number
        b"12 pathabc\n\n",  # no '='
        b"8 =abc\n",  # empty key
        pax_record(b"path", b"a") + b"junk",
        pax_record(b"size", b"-1"),
        pax_record(b"uid", b"12x"),
        pax_record(b"mtime", b"1e9"),
        pax_record(b"size", "١٢".encode()),  # non-ASCII digits
        b"999999999999999999999999 path=a\n",
    ],
)
def test_malformed_pax_is_a_format_error(body: bytes) -> None:
    with pytest.raises(TarFormatError):
        entries_of(pax(body), raw_header(), END)


def test_gnu_long_name_and_link_with_offsets() -> None:
    long_name = with_data(raw_header(b"././@LongLink", b"L", size=201), b"n" * 200 + b"\x00")
    long_link = with_data(raw_header(b"././@LongLink", b"K", size=150), b"t" * 150)
    found = one(long_name, long_link, raw_header(b"x", b"1"))
    assert (found.path, found.link, found.type, found.offset) == (
        "n" * 200,
        "t" * 150,
        "hardlink",
        0,
    )


def test_gnu_long_name_beats_pax_path_and_offset_is_the_first_extension() -> None:
    long_name = with_data(raw_header(b"././@LongLink", b"L", size=4), b"long")
    first, second = entries_of(
        raw_header(b"a"), long_name, pax({"path": "pax"}), raw_header(b"short"), END
    )
    assert (first.path, first.offset) == ("a", 0)
    assert (second.path, second.offset) == ("long", 512)


def test_end_marker_and_trailing_bytes() -> None:
    indexer = TarIndexer()
    indexer.feed(raw_header() + END + b"anything after the marker is ignored")
    assert indexer.done
    assert len(indexer.finish()) == 1
    assert indexer.bytes_seen == 512 + 1024 + 36


def test_lone_zero_block_then_header_is_an_error() -> None:
    with pytest.raises(TarFormatError, match="zero block") as caught:
        entries_of(raw_header(), bytes(512), raw_header(), END)
    assert caught.value.offset == 1024


def test_end_marker_required_by_default() -> None:
    for stream, count in [(b"", 0), (raw_header(), 1), (raw_header() + bytes(512), 1)]:
        with pytest.raises(TarFormatError, match="end-of-archive"):
            entries_of(stream)
        assert len(entries_of(stream, require_end_marker=False)) == count


@pytest.mark.parametrize("typeflag", [b"x", b"L", b"K"])
def test_extension_header_without_member_is_an_error(typeflag: bytes) -> None:
    body = pax_record(b"k", b"v")
    ext = with_data(raw_header(b"ext", typeflag, size=len(body)), body)
    with pytest.raises(TarFormatError, match="extension header"):
        entries_of(ext, END)
    with pytest.raises(TarFormatError, match="extension header"):
        entries_of(ext, require_end_marker=False)


def test_errors_are_sticky() -> None:
    indexer = TarIndexer()
    with pytest.raises(TarFormatError) as first:
        indexer.feed(raw_header()[:-1] + b"?")
    with pytest.raises(TarFormatError) as again:
        indexer.feed(END)
    assert again.value is first.value
    with pytest.raises(TarFormatError):
        indexer.finish()


def test_fed_buffers_are_released() -> None:
    buf = bytearray(raw_header())
    indexer = TarIndexer()
    indexer.feed(buf)
    buf.extend(b"x")  # would raise BufferError if a view were still held
    buf[:] = b"junk" * 128
    with pytest.raises(TarFormatError):
        indexer.feed(buf)
    buf.extend(b"x")


def test_non_byte_memoryview_is_accepted() -> None:
    words = array.array("I", raw_header() + END)
    assert len(index([memoryview(words)])) == 1


# --------------------------------------------------------------------------------------
# Corrupt, truncated and hostile streams


def test_every_truncation_is_an_error() -> None:
    raw = ARCHIVES["pax"]
    end = _marker_offset(raw)
    for cut in range(end + 1024):
        with pytest.raises(TarFormatError):
            index([raw[:cut]])
    assert index([raw[: end + 1024]]) == EXPECTED["pax"]


def _marker_offset(raw: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        archive.getmembers()
        return archive.offset


@pytest.mark.parametrize("name", ["gnu", "pax"])
def test_truncation_without_end_marker_requirement(name: str) -> None:
    raw = ARCHIVES[name]
    members = tarfile_members(raw)
    end = _marker_offset(raw)
    boundaries = {m.offset for m in members} | {end, end + 512}
    for cut in range(0, end + 1024, 7):
        chunks = split_cyclic(raw[:cut], [1000])
        if cut in boundaries:
            kept = [e for e in EXPECTED[name] if e.offset < cut]
            assert index(chunks, require_end_marker=False) == kept
        else:
            with pytest.raises(TarFormatError, match="stream ends"):
                index(chunks, require_end_marker=False)


def header_blocks(raw: bytes) -> list[int]:
    """Offsets of each member's first and main header blocks."""
    return sorted({b for m in tarfile_members(raw) for b in (m.offset, m.offset_data - 512)})


@pytest.mark.parametrize("name", ["ustar", "gnu"])
def test_any_flipped_header_byte_is_detected(name: str) -> None:
    raw = ARCHIVES[name]
    for block in header_blocks(raw):
        # Byte 155 follows the checksum's NUL terminator, so it is never read.
        for pos in (p for p in range(512) if p != 155):
            corrupt = bytearray(raw)
            corrupt[block + pos] ^= 0xFF
            with pytest.raises(TarFormatError, match=f"at offset {block}:"):
                index([bytes(corrupt)])


def _peak_allocation(action: Callable[[], object]) -> int:
    tracemalloc.start()
    with contextlib.suppress(TarError):
        action()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("typeflag", "size"),
    [
        (b"x", octal(8**11 - 1, 12)),
        (b"g", octal(65 * 1024, 12)),
        (b"L", b"\x80" + (2**62).to_bytes(11, "big")),
        (b"K", octal(10**9, 12)),
    ],
)
def test_hostile_record_size_hits_the_limit_without_allocating(
    typeflag: bytes, size: bytes
) -> None:
    stream = raw_header(b"ext", typeflag, size=size) + bytes(4096)

    def run() -> None:
        with pytest.raises(TarLimitError, match="max_name_length") as caught:
            index(split_cyclic(stream, [100]))
        assert caught.value.offset == 0

    assert _peak_allocation(run) < 256 * 1024


def test_record_limit_is_configurable() -> None:
    long_name = with_data(raw_header(b"././@LongLink", b"L", size=201), b"n" * 201)
    with pytest.raises(TarLimitError):
        entries_of(long_name, raw_header(), END, max_name_length=200)
    assert len(entries_of(long_name, raw_header(), END, max_name_length=201)) == 1


def test_hostile_data_size_is_skipped_by_arithmetic() -> None:
    stream = pax({"size": str(2**63 - 1)}) + raw_header() + bytes(8192)

    def run() -> None:
        indexer = TarIndexer()
        for chunk in split_cyclic(stream, [1000]):
            indexer.feed(chunk)
        assert indexer.entries[0].size == 2**63 - 1
        with pytest.raises(TarFormatError, match="short of the end"):
            indexer.finish()

    assert _peak_allocation(run) < 256 * 1024


@pytest.mark.parametrize(
    "parts",
    [
        (pax({"size": str(2**63)}), raw_header()),
        (pax({"uid": "9" * 5000}), raw_header()),
        (pax({"mtime": "-" + "9" * 20}), raw_header()),
        (raw_header(size=b"\x80" + (2**63).to_bytes(11, "big")),),
        (raw_header(mtime=b"\xc0" + bytes(10)),),  # -(2**87)
    ],
)
def test_numbers_beyond_int64_are_rejected(parts: tuple[bytes, ...]) -> None:
    with pytest.raises(TarFormatError, match=r"range|bad pax"):
        entries_of(*parts, END)


def test_max_entries() -> None:
    three = raw_header(b"a") + raw_header(b"b") + pax({"path": "c"}) + raw_header(b"c") + END
    assert len(entries_of(three, max_entries=3)) == 3
    with pytest.raises(TarLimitError, match="max_entries=2") as caught:
        entries_of(three, max_entries=2)
    assert caught.value.offset == 1024


def test_errors_carry_their_fields_and_pickle() -> None:
    errors: list[Exception] = [
        TarFormatError(512, "bad"),
        TarLimitError(1024, "big"),
        UnsafeArchiveError("../x", "climbs"),
        AmbiguousArchiveError("evil", "a global header sets path"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301
        assert (type(copy), str(copy)) == (type(error), str(error))
    assert "offset 512" in str(errors[0])
    assert "'../x'" in str(errors[2])
    assert isinstance(errors[0], ValueError)
    assert isinstance(errors[2], ValueError)
    assert isinstance(errors[3], UnsafeArchiveError)


# --------------------------------------------------------------------------------------
# Safety


def entry(path: str, kind: str = "file", link: str = "") -> TarEntry:
    return TarEntry(path, kind, 0o644, 0, 0, 0, 0, link, 0)


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/", "..", "../x", "a/../../x", "a/b/../../../c", "./../x", "", "a\x00b"],
)
def test_unsafe_paths_are_rejected(path: str) -> None:
    with pytest.raises(UnsafeArchiveError) as caught:
        check_member_safe(entry(path))
    assert caught.value.path == path


@pytest.mark.parametrize(
    "path", [".", "a", "a/b", "a/../b", "./a", "a/./b", "a//b", "..a", "a..", "...", "a/..."]
)
def test_safe_paths_are_accepted(path: str) -> None:
    check_member_safe(entry(path, "dir" if path == "." else "file"))


def test_paths_that_resolve_to_the_root_must_be_directories() -> None:
    # "a/.." is the root itself: harmless as a directory, a takeover as anything else.
    check_member_safe(entry("a/..", "dir"))
    check_member_safe(entry(".", "dir"))
    for path, kind in [("a/..", "file"), (".", "symlink"), (".", "hardlink")]:
        with pytest.raises(UnsafeArchiveError, match="root"):
            check_member_safe(entry(path, kind, link="x"))


@pytest.mark.parametrize("kind", ["char", "block", "fifo"])
def test_devices_need_permission(kind: str) -> None:
    with pytest.raises(UnsafeArchiveError, match=kind):
        check_member_safe(entry("dev", kind))
    check_member_safe(entry("dev", kind), allow_devices=True)


@pytest.mark.parametrize("target", ["/etc/shadow", "../x", "a/../../x", "", ".", "a/..", "a\x00"])
def test_unsafe_hardlink_targets_are_rejected(target: str) -> None:
    with pytest.raises(UnsafeArchiveError):
        check_member_safe(entry("h", "hardlink", target))


@pytest.mark.parametrize("target", ["/etc/passwd", "../../..", "a/b", "."])
def test_symlink_targets_are_data(target: str) -> None:
    check_member_safe(entry("s", "symlink", target))


def test_nul_in_symlink_target_is_rejected() -> None:
    with pytest.raises(UnsafeArchiveError, match="NUL"):
        check_member_safe(entry("s", "symlink", "a\x00b"))


def check_all(entries: Iterable[TarEntry]) -> None:
    checker = TarSafetyChecker()
    for item in entries:
        checker.check(item)


@pytest.mark.parametrize(
    "attack",
    [
        [entry("evil", "symlink", "/etc"), entry("evil/passwd")],
        [entry("evil", "symlink", "/etc"), entry("a/../evil/passwd")],
        [entry("evil", "symlink", "/etc"), entry("evil/../x")],  # ".." resolves via /etc
        [entry("evil", "symlink", "/etc"), entry("evil", "dir"), entry("evil/x")],
        [entry("d", "dir"), entry("d/evil", "symlink", "../.."), entry("d/evil/x", "dir")],
        [entry("evil", "symlink", "/etc"), entry("h", "hardlink", "evil/shadow")],
        [entry("evil", "symlink", "/"), entry("h", "hardlink", "evil"), entry("h/etc/passwd")],
    ],
)
def test_writing_through_an_archive_symlink_is_rejected(attack: list[TarEntry]) -> None:
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        check_all(attack)


def test_ordinary_archive_with_symlinks_passes() -> None:
    check_all(
        [
            entry(".", "dir"),
            entry("a", "dir"),
            entry("a/f"),
            entry("l", "symlink", "a"),
            entry("lx/f"),  # shares a prefix string with "l" but not a component
            entry("a/l2", "symlink", "/abs"),
            entry("h", "hardlink", "a/f"),
            entry("m", "symlink", "l/f"),  # a symlink *target* through a symlink is data
        ]
    )


def test_checker_applies_member_checks() -> None:
    with pytest.raises(UnsafeArchiveError, match="char"):
        check_all([entry("dev", "char")])
    checker = TarSafetyChecker(allow_devices=True)
    checker.check(entry("dev", "char"))


def test_checker_on_real_archive() -> None:
    raw = make_tar(
        [
            member("./", tarfile.DIRTYPE),
            member("./evil", tarfile.SYMTYPE, linkname="/etc"),
            member("./evil/x"),
        ],
        tarfile.PAX_FORMAT,
    )
    with pytest.raises(UnsafeArchiveError) as caught:
        check_all(index([raw]))
    assert caught.value.path == "evil/x"


# --------------------------------------------------------------------------------------
# build_dirs_tar


def test_dirs_tar_reads_back() -> None:
    raw = build_dirs_tar(["a", "a/b", "a/b/c"], mode=0o750, uid=12, gid=34, mtime=1_600_000_000)
    members = tarfile_members(raw)
    assert [(m.name, m.isdir(), m.mode, m.uid, m.gid, m.mtime) for m in members] == [
        (name, True, 0o750, 12, 34, 1_600_000_000) for name in ("a", "a/b", "a/b/c")
    ]
    assert raw.endswith(END)
    assert [e.path for e in index([raw])] == ["a", "a/b", "a/b/c"]


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["a/b/c"], ["a", "a/b", "a/b/c"]),
        (["a", "a/b", "a/b/c"], ["a", "a/b", "a/b/c"]),
        (["a/b", "a"], ["a", "a/b"]),
        (["x", "y/z", "x/w"], ["x", "y", "y/z", "x/w"]),
        ([], []),
    ],
)
def test_dirs_tar_creates_every_parent_once(paths: list[str], expected: list[str]) -> None:
    assert [m.name for m in tarfile_members(build_dirs_tar(paths, mtime=0))] == expected


def test_dirs_tar_long_and_unicode_names() -> None:
    components = ["x" * 90, "y" * 90, "日本語", "z" * 200]
    expected = ["/".join(components[: i + 1]) for i in range(len(components))]
    raw = build_dirs_tar(expected, mtime=0)
    assert [m.name for m in tarfile_members(raw)] == expected
    assert [e.path for e in index([raw])] == expected
    assert expected_entries(raw) == index([raw])


def test_dirs_tar_numbers_beyond_octal_fields() -> None:
    raw = build_dirs_tar(["a"], uid=2**30, gid=2**33, mtime=-5)
    (info,) = tarfile_members(raw)
    assert (info.uid, info.gid, info.mtime) == (2**30, 2**33, -5)
    assert index([raw]) == expected_entries(raw)


def test_dirs_tar_defaults() -> None:
    before = int(time.time())
    (info,) = tarfile_members(build_dirs_tar(["d"]))
    assert (info.mode, info.uid, info.gid) == (0o755, 0, 0)
    assert before <= info.mtime <= time.time() + 1
    assert build_dirs_tar([]) == END


def test_components_must_be_a_list() -> None:
    with pytest.raises(TypeError):
        build_dirs_tar("a/b")


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "/", "/abs", "a/", "a//b", "a/./b", "a/../b", "../a", "a\x00"]
)
def test_dirs_tar_rejects_bad_paths(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid directory path"):
        build_dirs_tar(["ok", bad])


@pytest.mark.parametrize("options", [{"mode": 0o10000}, {"mode": -1}, {"uid": -1}, {"gid": -1}])
def test_dirs_tar_rejects_bad_attributes(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"mode|owner"):
        build_dirs_tar(["a"], **options)


_DIR_PATH = st.lists(_COMPONENT.filter(lambda c: c not in (".", "..")), min_size=1, max_size=4)


@given(paths=st.lists(_DIR_PATH, max_size=5))
def test_dirs_tar_round_trips(paths: list[list[str]]) -> None:
    raw = build_dirs_tar(["/".join(parts) for parts in paths], mtime=1)
    prefixes = ["/".join(parts[:end]) for parts in paths for end in range(1, len(parts) + 1)]
    expected = list(dict.fromkeys(prefixes))
    assert [m.name for m in tarfile_members(raw)] == expected
    assert index([raw]) == expected_entries(raw)

"""The streaming member filter: exact output for any split of the input."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from docksnap.service.excludes import Excludes
from docksnap.service.tarfilter import DROP, KEEP, Decision, Drop, Rename, TarFilter
from docksnap.tarstream import TarEntry


def make_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [
            ("keep.txt", b"k" * 700),
            ("d" * 150 + "/long.log", b"long name, pax header"),
            ("drop.log", b"x" * 1025),
            ("empty", b""),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link-to-drop")
        link.type, link.linkname = tarfile.LNKTYPE, "drop.log"
        tar.addfile(link)
    return buffer.getvalue()


RAW = make_tar()


async def split(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos, n = 0, 0
    while pos < len(data):
        size = sizes[n % len(sizes)]
        yield data[pos : pos + size]
        pos, n = pos + size, n + 1


def run(decide: object, sizes: list[int]) -> tuple[bytes, TarFilter]:
    filt = TarFilter(decide, hash_data=True)  # type: ignore[arg-type]

    async def go() -> bytes:
        return b"".join([p async for p in filt.run(split(RAW, sizes))])

    return asyncio.run(go()), filt


def decide(entry: TarEntry) -> Decision:
    if entry.path.endswith(".log") and entry.path.startswith("drop"):
        return Drop("test")
    if entry.path == "empty":
        return Rename("renamed")
    return KEEP


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=8))
def test_any_split_gives_the_same_stream(sizes: list[int]) -> None:
    out, filt = run(decide, sizes)
    reference, _ = run(decide, [len(RAW)])
    assert out == reference
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        names = {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar}  # type: ignore[union-attr]
    assert names == {
        "keep.txt": b"k" * 700,
        "d" * 150 + "/long.log": b"long name, pax header",
        "renamed": b"",
    }
    # The hard link to a dropped file goes too, with its reason.
    assert [(e.path, r) for e, r in filt.dropped] == [
        ("drop.log", "test"),
        ("link-to-drop", "hard link to 'drop.log', which was left out"),
    ]
    assert set(filt.digests) == {"keep.txt", "d" * 150 + "/long.log", "empty"}


def test_keep_everything_is_the_input_with_a_fresh_end_marker() -> None:
    out, _ = run(lambda entry: KEEP, [512])
    assert out.rstrip(b"\0") == RAW.rstrip(b"\0")
    drop_all, _ = run(lambda entry: DROP, [100])
    assert drop_all == bytes(1024)


def test_gitignore_rules() -> None:
    spec = Excludes(["build/", "*.log", "!keep.log", "/top"])
    assert spec.matches("a/b.log", is_dir=False)
    assert not spec.matches("x/keep.log", is_dir=False)
    assert spec.matches("build", is_dir=True)
    assert not spec.matches("build", is_dir=False)  # a file called build is not a directory
    assert spec.matches("top", is_dir=False)
    assert not spec.matches("a/top", is_dir=False)
    assert not spec.matches(".", is_dir=True)
    excluder = Excludes(["cache/", "!cache/keep"]).member_filter()
    entries = [
        TarEntry("cache", "dir", 0, 0, 0, 0, 0, "", 0),
        TarEntry("cache/keep", "file", 0, 0, 0, 0, 0, "", 0),
    ]
    assert [excluder.excluded(e) for e in entries] == [True, True]  # no re-include below

"""Tar streams for store tests: built with tarfile, fed back in pieces of any size."""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import PurePosixPath


def build_tar(files: Mapping[str, bytes], *, mtime: int = 1_700_000_000) -> bytes:
    """A tar archive shaped as Docker's archive API returns it: ``./``, then every
    directory before what it holds, then ``files``."""
    buffer = io.BytesIO()
    dirs = sorted({str(parent) for name in files for parent in PurePosixPath(name).parents})
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in dirs:
            info = tarfile.TarInfo("./" if directory == "." else f"./{directory}/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_members(data: bytes) -> list[tuple[object, ...]]:
    """What extraction would produce, as sorted member tuples.

    This is what the store contract promises equal (see ``TarReader``): stores
    that do not keep the bytes (the volume store: Docker re-tars the volume)
    return the same members in their own order and encoding, with the root
    directory's times those of the volume. So members are sorted, the root's
    mtime is left out, and the mode keeps permission bits only (some writers
    also encode the file type there).
    """
    members: list[tuple[object, ...]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            content = tar.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            name = info.name.removeprefix("./").rstrip("/") or "."
            mtime = None if name == "." else int(info.mtime)
            members.append(
                (
                    name,
                    info.type,
                    info.mode & 0o7777,
                    info.uid,
                    info.gid,
                    mtime,
                    info.linkname,
                    content,
                )
            )
    return sorted(members, key=lambda member: str(member[0]))


def text_files(count: int, size: int, *, seed: int = 1) -> dict[str, bytes]:
    """Compressible, distinct files: lines of words, like source code or logs."""
    rng = random.Random(seed)
    words = [f"w{n}".encode() for n in range(5000)]
    files: dict[str, bytes] = {}
    for n in range(count):
        parts: list[bytes] = []
        length = 0
        while length < size:
            line = b" ".join(rng.choices(words, k=12)) + b"\n"
            parts.append(line)
            length += len(line)
        files[f"dir{n % 7}/file{n:04d}.txt"] = b"".join(parts)[:size]
    return files


def random_files(count: int, size: int, *, seed: int = 2) -> dict[str, bytes]:
    """Incompressible files (seeded, so runs are reproducible)."""
    rng = random.Random(seed)
    return {f"bin/blob{n:04d}": rng.randbytes(size) for n in range(count)}


async def pieces(data: bytes, sizes: Iterable[int] = (65536,)) -> AsyncIterator[bytes]:
    """Yield ``data`` in pieces whose sizes cycle through ``sizes``."""
    for _, piece in split(data, sizes):
        yield piece


def split(data: bytes, sizes: Iterable[int]) -> Iterator[tuple[int, bytes]]:
    """``data`` in pieces whose sizes cycle through ``sizes``, each with its offset."""
    cycle = list(sizes)
    pos = index = 0
    while pos < len(data):
        step = cycle[index % len(cycle)]
        yield pos, data[pos : pos + step]
        pos += step
        index += 1


async def failing_after(data: bytes, limit: int, error: BaseException) -> AsyncIterator[bytes]:
    """Yield ``data`` in 64 KiB pieces, then raise ``error`` once ``limit`` bytes went out."""
    sent = 0
    async for piece in pieces(data):
        if sent >= limit:
            raise error
        yield piece
        sent += len(piece)
    raise error


def file_header(name: str, size: int) -> bytes:
    """The tar header of one regular file of ``size`` bytes (its data follows)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
    return info.tobuf(format=tarfile.PAX_FORMAT)


def tar_trailer(size: int) -> bytes:
    """Padding after ``size`` bytes of file data, then the end-of-archive marker."""
    return bytes(-size % 512) + bytes(1024)

"""Deterministic benchmark data: planned from a seed, generated on the host, streamed as a tar.

A data set is a :class:`Layout` (directories and :class:`FileSpec` records, sizes known up
front) plus, for ``incremental``, a :class:`Mutation` applied after it is built. File bytes
come from :class:`Content`: text lines picked by ``random.Random(seed)`` (compressible,
~2.5x with zstd-3), BLAKE3 XOF output keyed by the seed (incompressible, 4+ GB/s, so a
2 GiB set costs no noticeable host time), or both interleaved. The same seed always gives
the same bytes, and the tar is produced in ~1 MiB pieces: nothing holds a whole file.
"""

from __future__ import annotations

import math
import random
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import blake3

Kind = Literal["text", "mixed", "random"]

MB = 10**6
MiB = 1 << 20
PIECE = MiB
MTIME = 1_700_000_000
DATA_ROOT = "data"  # data sets live under /data/<name> in the source container


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One regular file: where (relative to the data set), how big, what kind of bytes."""

    path: str
    size: int
    kind: Kind
    key: int  # content seed of this file, unique within a layout
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class Layout:
    """Directories (parents first) and files of one data set."""

    dirs: tuple[str, ...]
    files: tuple[FileSpec, ...]

    @property
    def data_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, slots=True)
class Mutation:
    """The ~1% change that turns ``small-files`` into ``incremental``."""

    append_to: str  # a text file that gets `seq 1 append_lines` appended
    append_lines: int
    add: FileSpec  # a new incompressible file (4 MiB at full scale)
    delete_dir: str  # removed with everything in it


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """A named data set: its layout, the cases that run on it, and how to build it."""

    name: str
    layout: Layout
    cases: tuple[str, ...]
    description: str
    base: str | None = None  # resnapshot_incremental starts from this data set's snapshot
    mutation: Mutation | None = None
    max_repeat: int | None = None  # cap for very large sets (the huge set runs once)
    verify_restore: bool = True

    @property
    def dir(self) -> str:
        return f"/{DATA_ROOT}/{self.name}"


# --- content -------------------------------------------------------------------------


@dataclass
class Content:
    """Bytes of every file, a pure function of (seed, file key, size, kind)."""

    seed: int
    _lines: list[bytes] = field(init=False, repr=False)
    _avg_line: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        letters = "abcdefghijklmnopqrstuvwxyz_"
        words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(3000)]
        words += ["def", "return", "import", "self", "None", "class", "if", "for", "in"] * 40
        self._lines = [
            (
                " " * rng.choice((0, 4, 8, 12)) + " ".join(rng.choices(words, k=rng.randint(2, 9)))
            ).encode()
            + b"\n"
            for _ in range(4096)
        ]
        self._avg_line = sum(map(len, self._lines)) / len(self._lines)

    def pieces(self, spec: FileSpec) -> Iterator[bytes]:
        """The file's bytes in pieces of at most PIECE bytes."""
        offset = 0
        rng = random.Random((self.seed << 40) ^ spec.key)
        xof = blake3.blake3(f"docksnap-bench:{self.seed}:{spec.key}".encode())
        while offset < spec.size:
            n = min(PIECE, spec.size - offset)
            if spec.kind == "text":
                yield self._text(rng, n)
            elif spec.kind == "random":
                yield xof.digest(length=n, seek=offset)
            else:
                yield _interleave(self._text(rng, n), xof.digest(length=n, seek=offset), 512)
            offset += n

    def _text(self, rng: random.Random, n: int) -> bytes:
        out = b"".join(rng.choices(self._lines, k=int(n / self._avg_line) + 16))
        while len(out) < n:
            out += b"".join(rng.choices(self._lines, k=64))
        return out[:n]


def _interleave(a: bytes, b: bytes, block: int) -> bytes:
    """Alternate ``block``-byte runs of ``a`` and ``b``; same length as ``a``."""
    half = block // 2
    return b"".join(a[i : i + half] + b[i + half : i + block] for i in range(0, len(a), block))[
        : len(a)
    ]


# --- layouts -------------------------------------------------------------------------


def _parents(paths: Iterable[str]) -> tuple[str, ...]:
    dirs: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return tuple(sorted(dirs))


def venv_layout(seed: int, n_files: int, total: int) -> Layout:
    """A virtualenv-like tree: many small files (log-normal sizes, median ~5 KB),
    mostly text (.py), some semi-compressible (.pyc), a few large binaries (.so)."""
    rng = random.Random(seed)
    n_pkgs = max(8, n_files // 80)
    raw = [min(rng.lognormvariate(math.log(3000), 1.7), 32 * MiB) for _ in range(n_files)]
    scale = total / sum(raw)
    files: list[FileSpec] = []
    for i, size in enumerate(int(r * scale) for r in raw):
        pkg = f"pkg{rng.randrange(n_pkgs):03d}"
        sub = rng.choice(("", "", "", "core/", "utils/", "tests/"))
        roll = rng.random()
        if size > 512 * 1024:
            kind: Kind = "random" if roll < 0.7 else "mixed"
            ext, mode = (".so", 0o755) if kind == "random" else (".dat", 0o644)
        elif roll < 0.6:
            kind, ext, mode = "text", ".py", 0o644
        elif roll < 0.85:
            kind, ext, mode = "mixed", ".pyc", 0o644
        elif roll < 0.95:
            kind, ext, mode = "text", ".json", 0o644
        else:
            kind, ext, mode = "random", ".bin", 0o644
        files.append(FileSpec(f"{pkg}/{sub}m{i:05d}{ext}", size, kind, key=i, mode=mode))
    files.sort(key=lambda f: f.path)
    return Layout(_parents(f.path for f in files), tuple(files))


def blob_layout(total: int, parts: Iterable[tuple[str, Kind, float]]) -> Layout:
    files = [
        FileSpec(name, int(total * share), kind, key=i)
        for i, (name, kind, share) in enumerate(parts)
    ]
    return Layout(_parents(f.path for f in files), tuple(files))


def incremental_mutation(layout: Layout, scale: float) -> Mutation:
    """Append to one .py file, add one new incompressible file, delete one directory."""
    pkgs = sorted({f.path.split("/")[0] for f in layout.files})
    quarter, half, three_quarters = (pkgs[len(pkgs) * k // 4] for k in (1, 2, 3))
    target = next(f for f in layout.files if f.path.startswith(quarter + "/") and f.kind == "text")
    added = FileSpec(f"{three_quarters}/added.bin", int(4 * MiB * scale), "random", key=10**7)
    doomed = f"{half}/tests" if any(d == f"{half}/tests" for d in layout.dirs) else half
    return Mutation(target.path, 500, added, doomed)


# --- the catalogue of data sets -----------------------------------------------------------

SNAPSHOT_CASES = (
    "raw_get",
    "raw_host_read",
    "raw_put",
    "docker_cp_out",
    "docker_cp_in",
    "docker_cp_out_stream",
    "docker_cp_in_stream",
    "seed_snapshot",
    "seed_restore",
    "snapshot",
    "snapshot_host",
    "resnapshot_unchanged",
    "resnapshot_unchanged_host",
    "resnapshot_incremental_host",
    "restore",
    "warm_restore",
    "restic_backup",
    "restic_backup_unchanged",
    "restic_restore",
)


def datasets(seed: int, *, quick: bool) -> dict[str, DatasetSpec]:
    """Every data set, at quick or full scale (``huge`` only at full scale)."""
    small_total, small_files = (60 * MB, 3_000) if quick else (200 * MB, 10_000)
    large_total = 100 * MB if quick else 500 * MB
    venv = venv_layout(seed, small_files, small_total)
    specs = [
        DatasetSpec(
            "small-files",
            venv,
            SNAPSHOT_CASES,
            f"{small_files:,} files, virtualenv-like sizes and contents",
        ),
        DatasetSpec(
            "large-files",
            blob_layout(
                large_total,
                [
                    ("blobs/model-a.bin", "random", 0.35),
                    ("blobs/model-b.bin", "random", 0.15),
                    ("logs/server.log", "text", 0.30),
                    ("tables/table.dat", "mixed", 0.20),
                ],
            ),
            SNAPSHOT_CASES,
            "4 files: random, text and half/half",
        ),
        DatasetSpec(
            "incremental",
            venv,
            ("raw_get", "resnapshot_incremental"),
            "small-files after: append to 1 file, add 1 file, delete 1 directory",
            base="small-files",
            mutation=incremental_mutation(venv, small_total / (200 * MB)),
            verify_restore=False,
        ),
    ]
    if not quick:
        parts: list[tuple[str, Kind, float]] = [
            (f"part-{i:02d}.{'bin' if i % 2 else 'log'}", "random" if i % 2 else "text", 1 / 16)
            for i in range(16)
        ]
        specs.append(
            DatasetSpec(
                "huge",
                blob_layout(2 * 1024 * MiB, parts),
                ("raw_get", "snapshot", "restore", "warm_restore"),
                "one 2 GiB directory: 16 x 128 MiB, half text, half random",
                max_repeat=1,
                verify_restore=False,
            )
        )
    return {spec.name: spec for spec in specs}


# --- tar -------------------------------------------------------------------------------------


def _header(name: str, *, size: int = 0, mode: int, directory: bool) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = MTIME
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.PAX_FORMAT)


def tar_pieces(
    prefix: str, dirs: Iterable[str], files: Iterable[FileSpec], content: Content
) -> Iterator[bytes]:
    """A tar of ``dirs`` and ``files`` under ``prefix``, in pieces of about PIECE bytes."""
    buffer = bytearray()
    top = list(_parents([prefix + "/x"])) if prefix else []
    for path in top + [f"{prefix}/{d}" if prefix else d for d in dirs]:
        buffer += _header(path + "/", mode=0o755, directory=True)
    for spec in files:
        name = f"{prefix}/{spec.path}" if prefix else spec.path
        buffer += _header(name, size=spec.size, mode=spec.mode, directory=False)
        for piece in content.pieces(spec):
            buffer += piece
            if len(buffer) >= PIECE:
                yield bytes(buffer)
                buffer.clear()
        buffer += bytes(-spec.size % 512)
    buffer += bytes(1024)
    yield bytes(buffer)


def dataset_tar(spec: DatasetSpec, content: Content) -> Iterator[bytes]:
    """The data set's whole tree as a tar to extract at ``/``."""
    return tar_pieces(f"{DATA_ROOT}/{spec.name}", spec.layout.dirs, spec.layout.files, content)

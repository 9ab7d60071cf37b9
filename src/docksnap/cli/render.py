"""Human-readable output: sizes, local times, tar-style file lines, aligned tables.

Plain text only: what is printed here may go to a pipe, where escape codes
would be noise, so styling is left to the progress display on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Sequence

from docksnap.model import SnapshotInfo
from docksnap.report import CaptureReport
from docksnap.service.archive import changed_fields
from docksnap.tarstream import TarEntry

#: Id characters ``ls`` shows (more when needed to keep them unique), as progress bars do.
SHORT_ID = 8
_MIN_CUT = 6
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
_TYPE_BITS = {
    "file": stat.S_IFREG,
    "hardlink": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


def size(n: float) -> str:
    """``512 B``, ``12.3 MiB``: binary units, one decimal."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def local_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def duration(seconds: float) -> str:
    """``45s``, ``2h30m``, ``3d4h``: the two largest units."""
    rest = int(seconds)
    parts: list[str] = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= length or (unit == "s" and not parts):
            parts.append(f"{rest // length}{unit}")
            rest %= length
    return "".join(parts[:2])


def mode_string(entry: TarEntry) -> str:
    """``-rw-r--r--`` as ``ls -l`` and ``tar -tv`` show it (``h`` for a hard link)."""
    text = stat.filemode(_TYPE_BITS.get(entry.type, 0) | entry.mode)
    if entry.type == "hardlink":
        return "h" + text[1:]
    return text if entry.type in _TYPE_BITS else "?" + text[1:]


def display_path(entry: TarEntry) -> str:
    return entry.path + "/" if entry.type == "dir" else entry.path


def file_lines(entries: Sequence[TarEntry], prefix: str = "") -> list[str]:
    """One ``tar -tv`` line per entry, the size column aligned; under it, one
    ``getfattr -d`` style line per extended attribute a restore sets."""
    width = max((len(str(e.size)) for e in entries), default=1)
    owner_width = max((len(f"{e.uid}/{e.gid}") for e in entries), default=3)
    lines: list[str] = []
    for entry in entries:
        lines.append(prefix + _file_line(entry, width, owner_width))
        lines.extend(f"{prefix}    {n}={xattr_value(v)}" for n, v in entry.xattrs)
    return lines


def xattr_value(value: bytes) -> str:
    """``"text"`` when printable UTF-8, else ``0x`` and hex, as ``getfattr`` shows it."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    return json.dumps(text) if text.isprintable() else "0x" + value.hex()


def _file_line(entry: TarEntry, width: int, owner_width: int) -> str:
    owner = f"{entry.uid}/{entry.gid}"
    line = (
        f"{mode_string(entry)} {owner:<{owner_width}} {entry.size:>{width}} "
        f"{local_time(entry.mtime)} {display_path(entry)}"
    )
    if entry.type == "symlink":
        return f"{line} -> {entry.link}"
    if entry.type == "hardlink":
        return f"{line} link to {entry.link}"
    return line


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> list[str]:
    """Columns padded to their widest cell; columns in ``right`` are right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def output_width() -> int | None:
    """The width to fit tables to: ``COLUMNS``, else the terminal's; ``None`` for a pipe."""
    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def short_ids(ids: Sequence[str], minimum: int = SHORT_ID) -> dict[str, str]:
    """Each id's shortest prefix (at least ``minimum`` characters) unique among ``ids``."""
    length = minimum
    while len({i[:length] for i in ids}) < len(set(ids)) and length < 36:
        length += 1
    return {i: i[:length] for i in ids}


def snapshot_table(
    infos: Sequence[SnapshotInfo],
    kinds: Sequence[str] | None = None,
    *,
    short_ids: bool = False,
    width: int | None = None,
) -> list[str]:
    """The snapshot table; ``kinds`` adds a KIND column, ``short_ids`` prints unique
    id prefixes, ``width`` fits it.

    To fit, the CONTAINER then CREATED columns are dropped, then NAME and DIR
    are cut (ending in ``…``) down to a few characters each.
    """
    shown = _short_ids_of(infos) if short_ids else {i.id: i.id for i in infos}
    rows = [
        [
            shown[i.id],
            i.name or "-",
            i.dir,
            size(i.size),
            local_time(i.created_at),
            (i.source.container if i.source else "") or "-",
        ]
        for i in infos
    ]
    headers = ["ID", "NAME", "DIR", "SIZE", "CREATED", "CONTAINER"]
    if kinds is not None:
        headers.append("KIND")
        for row, kind in zip(rows, kinds, strict=True):
            row.append(kind)
    if width is not None:
        headers, rows = _fit(headers, rows, width)
    return table(headers, rows, frozenset({3}))


def _short_ids_of(infos: Sequence[SnapshotInfo]) -> dict[str, str]:
    return short_ids([i.id for i in infos])


def _fit(
    headers: list[str], rows: list[list[str]], width: int
) -> tuple[list[str], list[list[str]]]:
    def total() -> int:
        return sum(max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)) + 2 * (
            len(headers) - 1
        )

    for dropped in ("CONTAINER", "CREATED"):
        if total() <= width:
            break
        column = headers.index(dropped)
        headers = headers[:column] + headers[column + 1 :]
        rows = [r[:column] + r[column + 1 :] for r in rows]
    for cut in ("DIR", "NAME"):
        excess = total() - width
        if excess <= 0:
            break
        column = headers.index(cut)
        widest = max([len(headers[column]), *(len(r[column]) for r in rows)])
        keep = max(_MIN_CUT, widest - excess)
        rows = [[*r[:column], _cut(r[column], keep), *r[column + 1 :]] for r in rows]
    return headers, rows


def _cut(text: str, keep: int) -> str:
    return text if len(text) <= keep else text[: keep - 1] + "…"


def report_line(report: CaptureReport) -> str:
    """The one-line summary of a capture report printed after a snapshot."""
    hint = "" if report.ok else " (`docksnap show ID --report` lists them)"
    return f"capture: {report.summary()}{hint}"


def report_lines(report: CaptureReport | None) -> list[str]:
    """Every entry of a capture report, one per line."""
    if report is None:
        return ["capture report: none stored (the capture was complete)"]
    lines = [f"capture report: {report.summary()}"]
    lines += [f"  {e.reason:<9} {e.path}  {e.detail}" for e in report.entries]
    if report.omitted:
        lines.append(f"  ... and {report.omitted} more")
    lines.append(f"  checked: {', '.join(report.checked) or '-'}")
    return lines


def image(name: str) -> str:
    """An image id shortened as ``docker images`` shows it; a name as is."""
    return name[:19] if name.startswith("sha256:") else name


def key_values(pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in pairs) + 1
    return [f"{k + ':':<{width}} {v}" for k, v in pairs]


def describe_change(old: TarEntry, new: TarEntry, fields: Sequence[str] | None = None) -> str:
    """``field old -> new; ...`` for each of ``fields`` (default: every field that differs)."""
    return "; ".join(
        f"{field} {_show(field, getattr(old, field))} -> {_show(field, getattr(new, field))}"
        for field in (changed_fields(old, new) if fields is None else fields)
    )


def _show(field: str, value: object) -> str:
    if field == "size" and isinstance(value, int):
        return size(value)
    if field == "mtime" and isinstance(value, int):
        return local_time(value)
    if field == "mode" and isinstance(value, int):
        return f"{value:04o}"
    if field == "xattrs" and isinstance(value, tuple):
        return "{" + ", ".join(f"{n}={xattr_value(v)}" for n, v in value) + "}"
    return str(value)

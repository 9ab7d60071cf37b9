"""The capture report: what a snapshot did not take faithfully, and why.

A report travels with the snapshot that it describes: in the result of
``snapshot_directory()`` / ``snapshot_container()`` and, when it has anything
to say, inside the stored tar stream itself: a second entry for the root
directory after the last member, identical to the first, whose pax header holds
the report under :data:`PAX_KEY`. Tar readers ignore unknown pax keys, and the
repeated directory entry changes nothing on extraction; a clean snapshot
carries no such entry and stays byte for byte what the engine sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PAX_KEY = "DOCKSNAP.report"
MAX_ENTRIES = 1000

#: Why a member is in the report.
REASONS = {
    "socket": "a socket: tar cannot carry it, the engine's archive leaves it out",
    "unreadable": "in the container but not in the engine's archive (unreadable to the engine)",
    "hardlink": "a hard link to a member that was left out",
    "xattrs": "extended attributes (or ACLs) the engine's archive does not carry",
    "changed": "changed while it was being read (the container was not paused)",
    "vanished": "deleted while it was being read (the container was not paused)",
    "appeared": "created while the directory was being read (the container was not paused)",
}


@dataclass(frozen=True, slots=True)
class ReportEntry:
    """One member not captured faithfully: its path (relative to the snapshot's
    directory), a reason from :data:`REASONS`, and a detail naming what differed."""

    path: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class CaptureReport:
    """Everything a capture did not take faithfully, plus what it left out on purpose.

    ``entries`` are the problems (at most :data:`MAX_ENTRIES`; ``omitted`` counts
    the rest); ``excluded`` counts members left out by exclude patterns, which
    are not problems. ``checked`` says which checks ran (e.g. ``"changes"``,
    ``"reread"``, ``"xattrs"``), so an empty report is not mistaken for one
    that could not look.
    """

    entries: tuple[ReportEntry, ...] = ()
    omitted: int = 0
    excluded: int = 0
    checked: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing was skipped or changed (exclusions do not count)."""
        return not self.entries and not self.omitted

    @property
    def problem_count(self) -> int:
        return len(self.entries) + self.omitted

    def summary(self) -> str:
        """One line: counts per reason, and exclusions."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[entry.reason] = counts.get(entry.reason, 0) + 1
        parts = [f"{n} {reason}" for reason, n in sorted(counts.items())]
        if self.omitted:
            parts.append(f"{self.omitted} more not listed")
        text = "complete" if not parts else "skipped or inexact: " + ", ".join(parts)
        if self.excluded:
            text += f"; {self.excluded} excluded"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "entries": [entry.to_dict() for entry in self.entries],
            "omitted": self.omitted,
            "excluded": self.excluded,
            "checked": list(self.checked),
        }

    @classmethod
    def from_dict(cls, data: Any) -> CaptureReport:
        """Rebuild a report from :meth:`to_dict` output; unknown or bad data gives an empty one."""
        if not isinstance(data, dict):
            return cls()
        entries = tuple(
            ReportEntry(str(e.get("path", "")), str(e.get("reason", "")), str(e.get("detail", "")))
            for e in data.get("entries") or ()
            if isinstance(e, dict)
        )
        return cls(
            entries=entries,
            omitted=int(data.get("omitted") or 0),
            excluded=int(data.get("excluded") or 0),
            checked=tuple(str(c) for c in data.get("checked") or ()),
        )

    def to_pax(self) -> dict[str, str]:
        """The pax records that store this report."""
        return {PAX_KEY: json.dumps(self.to_dict(), separators=(",", ":"))}

    @classmethod
    def from_pax(cls, records: Mapping[str, str]) -> CaptureReport | None:
        """The report stored in pax records, or ``None`` when there is none."""
        raw = records.get(PAX_KEY)
        if raw is None:
            return None
        try:
            return cls.from_dict(json.loads(raw))
        except ValueError:
            return None


def build_report(
    entries: list[ReportEntry], *, excluded: int, checked: tuple[str, ...]
) -> CaptureReport:
    """A report keeping the first :data:`MAX_ENTRIES` entries, sorted by path."""
    ordered = sorted(entries, key=lambda e: (e.path, e.reason))
    return CaptureReport(
        entries=tuple(ordered[:MAX_ENTRIES]),
        omitted=max(0, len(ordered) - MAX_ENTRIES),
        excluded=excluded,
        checked=checked,
    )

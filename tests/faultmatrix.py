"""Collects fault-injection outcomes into the fault matrix (fault by operation → outcome).

Tests call :func:`record`; with ``DOCKSNAP_FAULT_MATRIX=path`` set, the session
writes the collected rows there as a Markdown table (summarized in docs/SECURITY.md,
"Reliability").
"""

from __future__ import annotations

import os
from pathlib import Path

ROWS: dict[tuple[str, str, str], str] = {}


def record(layer: str, fault: str, operation: str, outcome: str) -> None:
    ROWS[(layer, fault, operation)] = outcome


def outcome_of(exc: BaseException | None, extra: str = "") -> str:
    text = "succeeds" if exc is None else type(exc).__name__
    return f"{text}; {extra}" if extra else text


def write_table() -> None:
    path = os.environ.get("DOCKSNAP_FAULT_MATRIX")
    if not path or not ROWS:
        return
    lines = ["| layer | fault | operation | outcome |", "|---|---|---|---|"]
    lines += [f"| {la} | {fa} | {op} | {out} |" for (la, fa, op), out in sorted(ROWS.items())]
    Path(path).write_text("\n".join(lines) + "\n")

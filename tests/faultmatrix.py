"""Collects fault-injection outcomes into the fault matrix (fault by operation → outcome).

Tests call :func:`record`; with ``DOCKSNAP_FAULT_MATRIX=path`` set, the session
writes the collected rows there as a Markdown table (summarized in docs/SECURITY.md,
"Reliability"). Also the helpers both fault-matrix files share (engine faults,
store faults): the source container, the leak census, a small tar to import.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import docksnap
from tests.conftest import (
    SESSION_ID,
    SESSION_LABEL,
    SESSION_LABELS,
    TEST_IMAGE,
    docker,
    unique_name,
)

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


@contextlib.asynccontextmanager
async def source_container(script: str) -> AsyncIterator[str]:
    """A running container that ran ``script`` (writing what to snapshot); its name."""
    async with docksnap.Client(store="file:///nonexistent", labels=SESSION_LABELS) as client:
        box = client.container(unique_name("ds-fault-src"))
        await box.start(TEST_IMAGE, entrypoint=["sh", "-c", f"{script}; exec sleep 1000"])
        try:
            yield box.name
        finally:
            await box.destroy()


def engine_resources() -> set[str]:
    """This session's containers and volumes on the engine, to find what a fault leaked."""
    label = f"label={SESSION_LABEL}={SESSION_ID}"
    containers = docker("ps", "-aq", "--filter", label).split()
    volumes = docker("volume", "ls", "-q", "--filter", label).split()
    return {f"container {c}" for c in containers} | {f"volume {v}" for v in volumes}


async def one_file_tar(data: bytes) -> AsyncIterator[bytes]:
    """A tar of one member, ``file``, holding ``data``: the import's input, in one piece."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("file")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    yield buffer.getvalue()

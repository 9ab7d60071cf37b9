"""One docksnap operation in a fresh process: its time, CPU and peak resident memory.

The parent writes a JSON :class:`Request` to stdin; the worker prints one JSON
:class:`Result` line. A fresh process per measurement makes ``ru_maxrss`` that
operation's own peak (plus the interpreter and imports, reported as ``rss_start_bytes``).

Only the operation is timed: ``snapshot_directory()`` for a snapshot, ``start()`` of a
new container with the snapshot for a restore (create, restore, start, as a user sees it).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Op = Literal["snapshot", "restore", "noop"]
SCRIPT = str(Path(__file__).resolve())


@dataclass(frozen=True, slots=True)
class Request:
    op: Op
    store: str
    labels: dict[str, str]
    container: str  # snapshot: the source; restore: the new container's name
    dir: str = ""
    image: str = ""
    entrypoint: list[str] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None  # restore: DirectorySnapshot.to_dict()
    profile: str | None = None  # write a pyinstrument + stage summary here
    restore_cache: str = "off"  # restore: "auto" mounts a view of the host's restore cache
    # snapshot: how the directory is read. The archive path unless a case asks: the
    # targets of the store-format issue are about it (host capture has its own case).
    capture: str = "archive"


@dataclass(frozen=True, slots=True)
class Result:
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    rss_start_bytes: int
    snapshot: dict[str, Any] | None = None
    reuse: dict[str, Any] | None = None  # snapshot: CaptureReuse.to_dict() (host capture)


class WorkerError(RuntimeError):
    """The worker process failed; the message holds its stderr."""


async def call(request: Request) -> Result:
    """Run ``request`` in a fresh interpreter (the parent's, i.e. the venv's)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(json.dumps(asdict(request)).encode())
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-15:]
        raise WorkerError(f"{request.op} worker failed:\n" + "\n".join(tail))
    return Result(**json.loads(out.decode().strip().splitlines()[-1]))


# --- the worker side ------------------------------------------------------------------------


def _rss_now() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(request: Request) -> Result:
    import docksnap

    async with docksnap.Client(store=request.store, labels=request.labels) as client:
        box = client.container(request.container)
        snapshots = (
            [docksnap.DirectorySnapshot.from_dict(request.snapshot)] if request.snapshot else []
        )
        profiler = _start_profile(request)
        rss_start, cpu0, t0 = _rss_now(), _cpu(), time.perf_counter()
        record = reuse = None
        if request.op == "snapshot":
            taken = await box.snapshot_directory(request.dir, capture=request.capture)  # type: ignore[arg-type]
            record = taken.to_dict()
            reuse = taken.reuse.to_dict() if taken.reuse is not None else None
        elif request.op == "restore":
            await box.start(
                request.image,
                entrypoint=request.entrypoint,
                snapshots=snapshots,
                restore_cache=request.restore_cache,
            )
        seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
        if profiler is not None:
            profiler.finish(request, seconds, cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return Result(seconds, cpu, peak, rss_start, record, reuse)


def _start_profile(request: Request) -> Any:
    if not request.profile:
        return None
    from _stages import OpProfile  # only when profiling: keeps the RSS runs lean

    return OpProfile.start()


def main() -> None:
    request = Request(**json.loads(sys.stdin.read()))
    result = asyncio.run(_run(request))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()

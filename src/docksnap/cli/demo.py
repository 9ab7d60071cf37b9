"""The README's main job: a directory survives its container, with timings.

Start a container that writes files, snapshot the directory, destroy the
container, start a fresh one from the snapshot, show the files are back, and
time `docker cp` out and in of the same directory for comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from docksnap.errors import CacheEntryNotFoundError
from docksnap.model import DirectorySnapshot
from docksnap.service.client import Client

WORKSPACE = "/workspace"
CHECKSUM_FILE = "/tmp/docksnap-demo.sum"  # noqa: S108 -- a path inside the container
# Half small files (like a source tree), half a few large ones, in busybox sh.
_WRITE = (
    "mkdir -p {ws}/src {ws}/blobs && i=0; while [ $i -lt {small} ]; do "
    "head -c 51200 /dev/urandom > {ws}/src/file$i.bin; i=$((i+1)); done; "
    "head -c {big} /dev/urandom > {ws}/blobs/a.bin; head -c {big} /dev/zero > {ws}/blobs/b.bin"
)
_CHECKSUM = (
    "cd {ws} && find . -type f | sort | xargs md5sum | md5sum > {sum}.tmp && mv {sum}.tmp {sum}"
)


@dataclass(frozen=True, slots=True)
class DemoReport:
    snapshot: DirectorySnapshot
    timings: dict[str, float]
    files_match: bool


async def run_demo(
    client: Client, *, image: str, size_mb: int = 100, say: Callable[[str], None] = print
) -> DemoReport:
    """Run the demo on ``client``; every container and the snapshot are removed at the end."""
    suffix = uuid.uuid4().hex[:8]
    first, second = (
        client.container(f"docksnap-demo-{suffix}"),
        client.container(f"docksnap-demo-{suffix}-restored"),
    )
    timings: dict[str, float] = {}
    small = size_mb * 1024 // 100  # half the bytes in 50 KiB files
    big = size_mb * 1024 * 1024 // 4  # a quarter each in two large files
    script = _WRITE.format(ws=WORKSPACE, small=small, big=big)
    checksum = _CHECKSUM.format(ws=WORKSPACE, sum=CHECKSUM_FILE)
    snapshot = None
    try:
        say(f"1. start {first.name}, writing ~{size_mb} MB into {WORKSPACE}")
        await first.start(
            image, entrypoint=["sh", "-c", f"{script} && {checksum}; exec sleep 3600"]
        )
        original = await _wait_for_file(client, first.name, CHECKSUM_FILE)
        with _timed(timings, "snapshot", say):
            snapshot = await first.snapshot_directory(WORKSPACE, name="docksnap-demo")
        say(f"   snapshot {snapshot.id}: {snapshot.size / 1e6:.1f} MB tar stream")
        with tempfile.TemporaryDirectory() as tmp:
            with _timed(timings, "docker cp out (same directory)", say):
                _docker_cp(f"{first.name}:{WORKSPACE}", tmp)
            with _timed(timings, "docker cp in (same directory)", say):
                _docker_cp(f"{tmp}/workspace", f"{first.name}:/tmp/copied")
        with _timed(timings, "destroy", say):
            await first.destroy()
        with _timed(timings, "restore (start with snapshot)", say):
            await second.start(
                image, entrypoint=["sh", "-c", f"{checksum}; exec sleep 3600"], snapshots=[snapshot]
            )
        restored = await _wait_for_file(client, second.name, CHECKSUM_FILE)
        match = restored == original
        say(f"2. files are back: {'yes' if match else 'NO'} (md5 of all files {restored[:32]!r})")
        return DemoReport(snapshot, timings, match)
    finally:
        await first.destroy()
        await second.destroy()
        if snapshot is not None:
            await client.snapshots.delete(snapshot.id)
            with contextlib.suppress(CacheEntryNotFoundError):
                await client.cache.remove(snapshot.id)  # the restore filled it


class _timed:
    def __init__(self, timings: dict[str, float], label: str, say: Callable[[str], None]) -> None:
        self._timings, self._label, self._say = timings, label, say

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self._start
        self._timings[self._label] = elapsed
        if exc[0] is None:
            self._say(f"   {self._label}: {elapsed:.2f} s")


def _docker_cp(source: str, dest: str) -> None:
    docker = shutil.which("docker")
    if docker is None:
        raise FileNotFoundError("the docker CLI is needed for the docker cp comparison")
    subprocess.run([docker, "cp", "-q", source, dest], check=True)


async def _wait_for_file(client: Client, container: str, path: str) -> str:
    """The text of ``path`` in the container, once the container's script has written it."""
    async with asyncio.timeout(300):
        while await client.docker.stat_path(container, path) is None:  # noqa: ASYNC110 -- polls the engine
            await asyncio.sleep(0.2)
    async with client.docker.get_archive(container, path) as archive:
        data = b"".join([piece async for piece in archive.chunks])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        return member.read().decode() if member else ""

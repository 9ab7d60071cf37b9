"""The bench's own containers and volumes, and the docker CLI.

Everything the bench creates carries ``docksnap-bench=<this run's id>`` and is tracked by
id; docksnap clients get the same label, so :meth:`Engine.leftovers` finds whatever anyone
left behind in this run, and never touches another run's (teammates bench concurrently on
one engine; with one shared value, each run's leak check removed the others' containers).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from docksnap.docker import DockerClient

BENCH_LABEL = "docksnap-bench"
BENCH_LABELS = {BENCH_LABEL: uuid.uuid4().hex[:12]}
IMAGE = "docksnap-test:latest"
SLEEP = ["sleep", "86400"]
DOCKER_CLI = "docker"


class CommandError(RuntimeError):
    """A docker CLI command failed."""


async def docker_cli(*args: str, stdin: IO[bytes] | None = None, capture: bool = False) -> bytes:
    """Run ``docker ARGS``; return stdout when ``capture`` (else discard it)."""
    proc = await asyncio.create_subprocess_exec(
        DOCKER_CLI,
        *args,
        stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise CommandError(f"docker {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out or b""


@dataclass
class Engine:
    """Creates, tracks and removes the bench's containers and volumes."""

    docker: DockerClient
    run_id: str
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    docksnap_containers: list[str] = field(default_factory=list)  # names, made via docksnap
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def name(self, role: str) -> str:
        """A fresh container/volume name for this run."""
        return f"docksnap-bench-{self.run_id}-{role}-{next(self._names)}"

    async def create(self, *, name: str | None = None, mount: tuple[str, str] | None = None) -> str:
        """Create (not start) a busybox container that sleeps; ``mount`` = (volume, target)."""
        host: dict[str, Any] = {"NetworkMode": "none"}
        if mount is not None:
            host["Mounts"] = [{"Type": "volume", "Source": mount[0], "Target": mount[1]}]
        config = {
            "Image": IMAGE,
            "Entrypoint": SLEEP,
            "Labels": BENCH_LABELS,
            "NetworkDisabled": True,
            "HostConfig": host,
        }
        container = await self.docker.create_container(name, config)
        self.containers.append(container)
        return container

    async def volume(self) -> str:
        name = self.name("vol")
        await self.docker.create_volume(name, BENCH_LABELS)
        self.volumes.append(name)
        return name

    async def remove(self, container: str) -> None:
        await self.docker.remove_container(container)
        with contextlib.suppress(ValueError):
            self.containers.remove(container)

    async def remove_volume(self, volume: str) -> None:
        await self.docker.remove_volume(volume)
        with contextlib.suppress(ValueError):
            self.volumes.remove(volume)

    @contextlib.asynccontextmanager
    async def target(self, directory: str) -> AsyncIterator[tuple[str, str]]:
        """A fresh volume and a created container with it mounted at ``directory``.

        Mirrors what a docksnap restore fills (a fresh volume at the snapshot's dir).
        Yields (volume, container); both are removed on exit.
        """
        volume = await self.volume()
        try:
            container = await self.create(mount=(volume, directory))
            try:
                yield volume, container
            finally:
                await self.remove(container)
        finally:
            await self.remove_volume(volume)

    async def exec(self, container: str, script: str) -> str:
        out = await docker_cli("exec", container, "sh", "-c", script, capture=True)
        return out.decode().strip()

    async def tree_digest(self, container: str, directory: str) -> str:
        """md5 over every file's path and bytes under ``directory`` (restore check)."""
        script = f"cd {directory} && find . -type f | sort | xargs md5sum | md5sum"
        return await self.exec(container, script)

    async def cleanup(self) -> None:
        """Remove every tracked container and volume, by id/name, newest first."""
        for container in reversed(self.containers[:]):
            with contextlib.suppress(Exception):
                await self.remove(container)
        for volume in reversed(self.volumes[:]):
            with contextlib.suppress(Exception):
                await self.remove_volume(volume)

    async def leftovers(self) -> tuple[list[str], list[str]]:
        """Ids of containers and names of volumes that still carry the bench label."""
        containers = await self.docker.list_containers(BENCH_LABELS)
        volumes = await self.docker.list_volumes(BENCH_LABELS)
        return [c["Id"] for c in containers], [v["Name"] for v in volumes]

    async def remove_leftovers(self, containers: list[str], volumes: list[str]) -> None:
        for container in containers:
            await self.docker.remove_container(container)
        for volume in volumes:
            with contextlib.suppress(Exception):
                await self.docker.remove_volume(volume)


async def file_pieces(path: Path, piece: int = 1 << 20) -> AsyncIterator[bytes]:
    """A file's bytes in ``piece``-sized reads, each on a thread (as an async app would)."""
    file = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(file.read, piece):
            yield data
    finally:
        file.close()

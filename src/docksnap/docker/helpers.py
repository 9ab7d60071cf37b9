"""Helper containers: created to reach a volume through the archive API, never started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

from docksnap.docker.client import DockerClient

HELPER_MOUNT = "/mnt"


@contextlib.asynccontextmanager
async def helper_container(
    docker: DockerClient, image: str, volume: str, labels: Mapping[str, str]
) -> AsyncIterator[str]:
    """Yield the id of a created, never-started container with ``volume`` at ``/mnt``.

    The engine mounts a created container's volumes for archive calls, so data
    moves in and out of the volume without running anything from the image.
    The helper is force-removed on exit, also when the body fails or is
    cancelled, so a helper never outlives the operation that made it.
    """
    helper = await docker.create_container(
        None,
        {
            "Image": image,
            "Labels": dict(labels),
            # Never started; an entrypoint that exists in any image keeps create
            # from failing on images without a default command.
            "Entrypoint": ["/"],
            "NetworkDisabled": True,
            "HostConfig": {
                "NetworkMode": "none",
                "Mounts": [{"Type": "volume", "Source": volume, "Target": HELPER_MOUNT}],
            },
        },
    )
    try:
        yield helper
    finally:
        # Shielded so that a cancelled operation still removes its helper.
        await asyncio.shield(docker.remove_container(helper))


class HelperVolumes:
    """A Docker engine's volumes, read and written through never-started helpers.

    The engine side of the volume store (``docksnap.store.volume.VolumeEngine``):
    the service layer builds one over its :class:`DockerClient` and hands it to
    the store, so the store layer never imports this package.
    """

    def __init__(self, docker: DockerClient) -> None:
        self._docker = docker

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        await self._docker.create_volume(name, labels)

    async def inspect_volume(self, name: str) -> dict[str, Any] | None:
        return await self._docker.inspect_volume(name)

    async def list_volumes(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return await self._docker.list_volumes(labels)

    async def remove_volume(self, name: str) -> None:
        await self._docker.remove_volume(name)

    async def fill_volume(
        self, volume: str, tar: AsyncIterable[bytes], *, image: str, labels: Mapping[str, str]
    ) -> None:
        async with helper_container(self._docker, image, volume, labels) as helper:
            await self._docker.put_archive(helper, HELPER_MOUNT, tar)

    @contextlib.asynccontextmanager
    async def read_volume(
        self, volume: str, *, image: str, labels: Mapping[str, str]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with (
            helper_container(self._docker, image, volume, labels) as helper,
            self._docker.get_archive(helper, HELPER_MOUNT + "/.") as archive,
        ):
            yield archive.chunks

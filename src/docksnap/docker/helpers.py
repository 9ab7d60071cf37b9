"""Helper containers: created to reach a volume through the archive API, never started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

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

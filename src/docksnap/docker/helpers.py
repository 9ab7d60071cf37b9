"""Helper containers: created to reach a volume through the archive API, never started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

from docksnap import labels as lbl
from docksnap.docker.client import DockerClient
from docksnap.errors import DockerError, DockerUnavailableError

HELPER_MOUNT = "/mnt"
HELPER_NAME_PREFIX = "docksnap-helper-"
_REMOVE_ATTEMPTS = 3
log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def helper_container(
    docker: DockerClient, image: str, volume: str, labels: Mapping[str, str]
) -> AsyncIterator[str]:
    """Yield the id of a created, never-started container with ``volume`` at ``/mnt``.

    The engine mounts a created container's volumes for archive calls, so data
    moves in and out of the volume without running anything from the image.
    The helper is force-removed on exit, also when the body fails or is
    cancelled, so a helper never outlives the operation that made it. When the
    process dies first (SIGKILL), its creator label lets ``gc`` and the removal
    of the volume's owner find it (:mod:`docksnap.service.orphans`).
    """
    # Named, so that a helper the engine created although its answer was lost
    # (a dropped connection) can still be found and removed.
    name = HELPER_NAME_PREFIX + uuid.uuid4().hex
    try:
        helper = await _create(docker, name, image, volume, labels)
    except BaseException:
        await asyncio.shield(_remove(docker, name, quietly=True))
        raise
    # Shielded so that a cancelled operation still removes its helper.
    try:
        yield helper
    except BaseException:
        await asyncio.shield(_remove(docker, helper, quietly=True))
        raise
    await asyncio.shield(_remove(docker, helper, quietly=False))


async def _create(
    docker: DockerClient, name: str, image: str, volume: str, labels: Mapping[str, str]
) -> str:
    return await docker.create_container(
        name,
        {
            "Image": image,
            "Labels": {**labels, **lbl.creator_fields()},
            # Never started; an entrypoint that exists in any image keeps create
            # from failing on images without a default command.
            "Entrypoint": ["/"],
            "NetworkDisabled": True,
            "HostConfig": {
                "NetworkMode": "none",
                # NoCopy: else the engine copies what the image has at /mnt into an
                # empty volume, and a restore volume would hold the image's files
                # (and its symlinks, which the extraction would then follow).
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": volume,
                        "Target": HELPER_MOUNT,
                        "VolumeOptions": {"NoCopy": True},
                    }
                ],
            },
        },
    )


async def _remove(docker: DockerClient, helper: str, *, quietly: bool) -> None:
    """Remove the helper, retrying: a helper left behind pins its volume.

    ``quietly`` (the operation already failed): a removal that keeps failing is
    logged, not raised, so that the caller sees the original error; the helper
    is then an orphan for ``gc`` or the owner's removal to find.
    """
    for attempt in range(_REMOVE_ATTEMPTS):
        try:
            await docker.remove_container(helper)
            return
        except (DockerError, DockerUnavailableError) as exc:
            if attempt < _REMOVE_ATTEMPTS - 1:
                await asyncio.sleep(0.2 * (attempt + 1))
            elif quietly:
                log.warning("helper container %s was not removed: %s", helper[:12], exc)
            else:
                raise


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

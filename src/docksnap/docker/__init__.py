"""The Docker Engine API client: the only part of docksnap that speaks HTTP to Docker."""

from docksnap.docker.client import ArchiveStream, DockerClient, EngineAddress
from docksnap.docker.helpers import HelperVolumes, helper_container

__all__ = ["ArchiveStream", "DockerClient", "EngineAddress", "HelperVolumes", "helper_container"]

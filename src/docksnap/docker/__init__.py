"""The Docker Engine API client: the only part of docksnap that speaks HTTP to Docker."""

from docksnap.docker.client import ArchiveStream, DockerClient, EngineAddress
from docksnap.docker.helpers import helper_container

__all__ = ["ArchiveStream", "DockerClient", "EngineAddress", "helper_container"]

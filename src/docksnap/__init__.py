"""docksnap: durable directories for Docker containers.

Snapshot a directory of a running container into an immutable, portable
snapshot; start new containers with snapshots restored before their entrypoint
runs. A Python implementation of workerd's containers snapshot API.
"""

from docksnap.errors import (
    ContainerAlreadyRunningError,
    ContainerError,
    ContainerNotFoundError,
    ContainerNotRunningError,
    ContainerStartError,
    DirectoryNotFoundError,
    DockerError,
    DockerUnavailableError,
    DocksnapError,
    InvalidArgumentError,
    InvalidPathError,
    InvalidSnapshotError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    SnapshotTooLargeError,
    StoreError,
    StoreFormatError,
    StoreUnavailableError,
    UnsafeArchiveError,
)
from docksnap.model import DirectorySnapshot, SnapshotRestore
from docksnap.service import Catalogue, Client, Container
from docksnap.store.base import SnapshotInfo, SnapshotSource
from docksnap.tarstream import TarError, TarFormatError, TarLimitError

__version__ = "0.1.0"

__all__ = [
    "Catalogue",
    "Client",
    "Container",
    "ContainerAlreadyRunningError",
    "ContainerError",
    "ContainerNotFoundError",
    "ContainerNotRunningError",
    "ContainerStartError",
    "DirectoryNotFoundError",
    "DirectorySnapshot",
    "DockerError",
    "DockerUnavailableError",
    "DocksnapError",
    "InvalidArgumentError",
    "InvalidPathError",
    "InvalidSnapshotError",
    "SnapshotCorruptError",
    "SnapshotInfo",
    "SnapshotNotFoundError",
    "SnapshotRestore",
    "SnapshotSource",
    "SnapshotTooLargeError",
    "StoreError",
    "StoreFormatError",
    "StoreUnavailableError",
    "TarError",
    "TarFormatError",
    "TarLimitError",
    "UnsafeArchiveError",
    "__version__",
]

"""docksnap: durable directories for Docker containers.

Snapshot a directory of a running container into an immutable, portable
snapshot; start new containers with snapshots restored before their entrypoint
runs. A Python implementation of workerd's containers snapshot API.
"""

from docksnap.docker import ArchiveStream, DockerClient
from docksnap.errors import (
    AmbiguousSnapshotError,
    CacheEntryInUseError,
    CacheEntryNotFoundError,
    CaptureIncompleteError,
    ContainerAlreadyRunningError,
    ContainerError,
    ContainerNotFoundError,
    ContainerNotRunningError,
    ContainerStartError,
    DirectoryNotFoundError,
    DockerError,
    DockerTimeoutError,
    DockerUnavailableError,
    DocksnapError,
    HostCaptureUnavailableError,
    ImageNotFoundError,
    InvalidArgumentError,
    InvalidPathError,
    InvalidSnapshotError,
    MergeConflictError,
    RestoreThroughSymlinkError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    SnapshotTooLargeError,
    StoreError,
    StoreFormatError,
    StoreUnavailableError,
    UnsafeArchiveError,
)
from docksnap.model import (
    CaptureReuse,
    DirectorySnapshot,
    SnapshotInfo,
    SnapshotRestore,
    SnapshotSource,
)
from docksnap.report import CaptureReport, ReportEntry
from docksnap.service import Catalogue, Client, Container
from docksnap.service.archive import FileChange, SnapshotDiff
from docksnap.service.container import ContainerContext
from docksnap.service.merge import Conflict, MergeResult
from docksnap.service.orphans import OrphanReport
from docksnap.service.progress import Operation, Phase, ProgressEvent, ProgressHook
from docksnap.service.restore_cache import CacheEntry, RestoreCache
from docksnap.store.base import (
    GcReport,
    Problem,
    Repair,
    SnapshotStore,
    StoreStats,
    TarReader,
    VerifyReport,
)
from docksnap.store.copy import CopyReport
from docksnap.sync import SyncClient
from docksnap.tarstream import TarEntry, TarError, TarFormatError, TarLimitError

__version__ = "0.1.0"

__all__ = [
    "AmbiguousSnapshotError",
    "ArchiveStream",
    "CacheEntry",
    "CacheEntryInUseError",
    "CacheEntryNotFoundError",
    "CaptureIncompleteError",
    "CaptureReport",
    "CaptureReuse",
    "Catalogue",
    "Client",
    "Conflict",
    "Container",
    "ContainerAlreadyRunningError",
    "ContainerContext",
    "ContainerError",
    "ContainerNotFoundError",
    "ContainerNotRunningError",
    "ContainerStartError",
    "CopyReport",
    "DirectoryNotFoundError",
    "DirectorySnapshot",
    "DockerClient",
    "DockerError",
    "DockerTimeoutError",
    "DockerUnavailableError",
    "DocksnapError",
    "FileChange",
    "GcReport",
    "HostCaptureUnavailableError",
    "ImageNotFoundError",
    "InvalidArgumentError",
    "InvalidPathError",
    "InvalidSnapshotError",
    "MergeConflictError",
    "MergeResult",
    "Operation",
    "OrphanReport",
    "Phase",
    "Problem",
    "ProgressEvent",
    "ProgressHook",
    "Repair",
    "ReportEntry",
    "RestoreCache",
    "RestoreThroughSymlinkError",
    "SnapshotCorruptError",
    "SnapshotDiff",
    "SnapshotInfo",
    "SnapshotNotFoundError",
    "SnapshotRestore",
    "SnapshotSource",
    "SnapshotStore",
    "SnapshotTooLargeError",
    "StoreError",
    "StoreFormatError",
    "StoreStats",
    "StoreUnavailableError",
    "SyncClient",
    "TarEntry",
    "TarError",
    "TarFormatError",
    "TarLimitError",
    "TarReader",
    "UnsafeArchiveError",
    "VerifyReport",
    "__version__",
]

"""The exception tree of docksnap.

Every error docksnap raises on purpose derives from :class:`DocksnapError`.
Errors about a bad argument also derive from :class:`ValueError`, so code that
already catches ``ValueError`` keeps working::

    DocksnapError
    ├── InvalidArgumentError (ValueError)
    │   ├── InvalidPathError             a path that is relative, has NUL, or climbs above /
    │   ├── InvalidSnapshotError         a snapshot record that fails validation
    │   ├── AmbiguousSnapshotError       an id prefix that matches several snapshots
    │   ├── UnsafeArchiveError           a tar member that could escape its directory
    │   │   └── AmbiguousArchiveError    tar readers disagree on a member (docksnap.tarstream)
    │   └── RestoreThroughSymlinkError   a restore would pass through a restored symlink (.link)
    ├── ContainerError                   (.container: the container's name)
    │   ├── ContainerNotFoundError
    │   ├── ContainerNotRunningError
    │   ├── ContainerAlreadyRunningError
    │   └── ContainerStartError          start() failed; nothing it created is left behind
    ├── DirectoryNotFoundError           (.container, .path)
    ├── SnapshotNotFoundError            (.snapshot_id)
    ├── SnapshotTooLargeError            (.limit)
    ├── SnapshotCorruptError             (.snapshot_id, .detail)
    ├── CaptureIncompleteError           strict=True and the capture report is not empty (.report)
    ├── MergeConflictError               merge found conflicts under on_conflict="fail" (.conflicts)
    ├── ImageNotFoundError               the image a container snapshot needs is not on this engine
    ├── HostCaptureUnavailableError      capture="host" is not possible here (.container, .reason)
    ├── TarError                         (docksnap.tarstream)
    │   ├── TarFormatError (ValueError)  a malformed or truncated tar stream (.offset)
    │   └── TarLimitError                a tar stream past a configured limit (.offset)
    ├── DockerError                      (.status, .message: the engine's answer)
    ├── DockerUnavailableError           (.address: where the engine was looked for)
    │   └── DockerTimeoutError           the engine went silent (.operation, .seconds)
    └── StoreError                       (.store: the store's URL)
        ├── StoreFormatError             a store written by an unknown format version
        └── StoreUnavailableError        a transient fault that outlived its retries

Messages name the value that was wrong; the CLI maps each class to an exit code.
"""

from __future__ import annotations

from typing import Any


class DocksnapError(Exception):
    """Root of every error docksnap raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take their fields, not a message, in __init__, so the default
        # pickling (calling the class with self.args) would fail; rebuild instead.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[DocksnapError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidArgumentError(DocksnapError, ValueError):
    """An argument failed validation; nothing was changed."""


class InvalidPathError(InvalidArgumentError):
    """A path is relative, contains NUL, or climbs above the root."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{reason}: {path!r}")
        self.path = path
        self.reason = reason


class InvalidSnapshotError(InvalidArgumentError):
    """A snapshot record (e.g. from ``DirectorySnapshot.from_dict``) is malformed."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"invalid snapshot {field} {value!r}: {reason}")
        self.field = field
        self.value = value


class AmbiguousSnapshotError(InvalidArgumentError):
    """A snapshot reference (an id prefix) matches more than one snapshot."""

    def __init__(self, reference: str, candidates: list[str]) -> None:
        shown = ", ".join(candidates[:10]) + (", ..." if len(candidates) > 10 else "")
        super().__init__(
            f"snapshot reference {reference!r} is ambiguous: {len(candidates)} snapshots "
            f"match ({shown})"
        )
        self.reference = reference
        self.candidates = candidates


class UnsafeArchiveError(InvalidArgumentError):
    """A tar member could write outside its directory, is a device file, or is one
    the engine would refuse to extract."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"unsafe tar member {path!r}: {reason}")
        self.path = path
        self.reason = reason


class RestoreThroughSymlinkError(InvalidArgumentError):
    """A restore's mount point or member path passes through a symlink that an
    earlier restore of the same start put there, or (``in_image``) a merge's
    member passes through a symlink the container's own files have.

    The engine resolves such a link inside the container, so the restore would
    land wherever the link points (a snapshot holding ``sub -> /etc`` would put
    the next one into ``/etc``). A restored link is refused before anything is
    created; an image's link when the merge reaches it, and the failed start
    removes the container.
    """

    def __init__(
        self, link: str, link_target: str, snapshot_id: str, path: str, *, in_image: bool = False
    ) -> None:
        if in_image:
            where = f"which the container's image has; snapshot {snapshot_id} was not merged"
        else:
            where = f"which snapshot {snapshot_id} restores; nothing was created"
        super().__init__(
            f"restoring at {path} would pass through the symlink {link} -> {link_target}, {where}"
        )
        self.link = link
        self.link_target = link_target
        self.snapshot_id = snapshot_id
        self.path = path
        self.in_image = in_image


class ContainerError(DocksnapError):
    """Something about one container's state prevents the operation."""

    def __init__(self, container: str, message: str) -> None:
        super().__init__(message)
        self.container = container


class ContainerNotFoundError(ContainerError):
    """No container with this name exists on the engine."""


class ContainerNotRunningError(ContainerError):
    """The operation needs a running container."""


class ContainerAlreadyRunningError(ContainerError):
    """``start()`` was called on a container that is already running."""


class ContainerStartError(ContainerError):
    """``start()`` failed; the container and its restore volumes were removed."""


class DirectoryNotFoundError(DocksnapError):
    """The directory to snapshot does not exist in the container."""

    def __init__(self, container: str, path: str) -> None:
        super().__init__(f"directory not found in container {container!r}: {path}")
        self.container = container
        self.path = path


class SnapshotNotFoundError(DocksnapError):
    """No snapshot with this id exists in the store."""

    def __init__(self, snapshot_id: str, where: str = "") -> None:
        suffix = f" in {where}" if where else ""
        super().__init__(f"snapshot {snapshot_id!r} not found{suffix}")
        self.snapshot_id = snapshot_id


class SnapshotTooLargeError(DocksnapError):
    """The directory's tar stream exceeded the size limit; nothing was stored."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(
            f"snapshot of {path} exceeds the size limit of {limit} bytes; nothing was stored"
        )
        self.path = path
        self.limit = limit


class SnapshotCorruptError(DocksnapError):
    """Stored data failed verification: a chunk is missing or its hash does not match."""

    def __init__(self, snapshot_id: str, detail: str) -> None:
        super().__init__(f"snapshot {snapshot_id!r} is corrupt: {detail}")
        self.snapshot_id = snapshot_id
        self.detail = detail


class CacheEntryNotFoundError(DocksnapError):
    """No restore-cache entry has this name or snapshot id (``docksnap cache rm``)."""

    def __init__(self, reference: str) -> None:
        super().__init__(f"no restore cache entry {reference!r} (see `docksnap cache ls`)")
        self.reference = reference


class CacheEntryInUseError(DocksnapError):
    """A restore-cache entry is mounted (read) by a container's restore; it was kept."""

    def __init__(self, entry: str, snapshot_id: str) -> None:
        super().__init__(
            f"restore cache entry {entry} (snapshot {snapshot_id}) is in use by a container; "
            "remove that container first"
        )
        self.entry = entry
        self.snapshot_id = snapshot_id


class CaptureIncompleteError(DocksnapError):
    """``strict=True`` and the capture could not take everything faithfully; nothing stored."""

    def __init__(self, path: str, report: Any) -> None:
        super().__init__(
            f"snapshot of {path} is incomplete ({report.summary()}); strict mode stored nothing"
        )
        self.path = path
        self.report = report


class MergeConflictError(DocksnapError):
    """A three-way merge found conflicting changes and the policy was "fail"; nothing stored."""

    def __init__(self, conflicts: Any) -> None:
        paths = ", ".join(repr(c.path) for c in conflicts[:5])
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        super().__init__(f"{len(conflicts)} conflicting path(s): {paths}{more}; nothing stored")
        self.conflicts = tuple(conflicts)


class ImageNotFoundError(DocksnapError):
    """The image a whole-container snapshot is applied to does not exist on this engine."""

    def __init__(self, image: str, message: str) -> None:
        super().__init__(message)
        self.image = image


class HostCaptureUnavailableError(DocksnapError):
    """``capture="host"`` was asked for and the container's files cannot be read from here.

    ``reason`` says why: a remote engine, a stopped container, no permission,
    a pid that is not the container's, a runtime mount in the directory.
    ``capture="auto"`` falls back to the archive API for the same reasons.
    """

    def __init__(self, container: str, reason: str) -> None:
        super().__init__(f"cannot capture container {container!r} from the host: {reason}")
        self.container = container
        self.reason = reason


class DockerError(DocksnapError):
    """The Docker engine answered with an error status."""

    def __init__(self, status: int, message: str, *, operation: str = "") -> None:
        where = f"{operation}: " if operation else ""
        super().__init__(f"{where}Docker engine returned {status}: {message}")
        self.status = status
        self.message = message
        self.operation = operation


class DockerUnavailableError(DocksnapError):
    """No Docker engine answered at the configured address."""

    def __init__(self, address: str, cause: str) -> None:
        super().__init__(
            f"cannot reach the Docker engine at {address}: {cause} "
            "(is dockerd running? set DOCKER_HOST to point elsewhere)"
        )
        self.address = address


class DockerTimeoutError(DockerUnavailableError):
    """The engine sent nothing for ``seconds`` during ``operation`` (a hung engine).

    Worth a retry once the engine answers again; what the operation created
    has been removed.
    """

    def __init__(self, address: str, operation: str, seconds: float) -> None:
        DocksnapError.__init__(
            self,
            f"the Docker engine at {address} sent nothing for {seconds:g} s during {operation} "
            "(raise --engine-timeout / --stall-timeout if it is only slow)",
        )
        self.address = address
        self.operation = operation
        self.seconds = seconds


class StoreError(DocksnapError):
    """The snapshot store failed an operation."""

    def __init__(self, store: str, message: str) -> None:
        super().__init__(f"{store}: {message}")
        self.store = store


class StoreFormatError(StoreError):
    """The store was written in a format this version cannot read."""


class StoreUnavailableError(StoreError):
    """A transient store fault persisted through every retry."""

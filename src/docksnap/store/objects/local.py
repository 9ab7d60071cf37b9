"""An :class:`~docksnap.store.objects.ObjectStore` on a local directory.

Each object is one file at ``<root>/<key>``. Writes go to a temporary file in the
destination directory and are published with ``rename``/``link``, so a reader (or
a crash) never sees a prefix of an object under its real name. Every write is
fsynced, file and directory, before it returns: the chunked store commits a
snapshot by writing its manifest last, and that only means something if what was
written before it is on disk first.

Temporary files are named ``.<name>.<random>.tmp``. Keys may not have components
that start with ``.``, so a temporary file can never be mistaken for an object;
:meth:`LocalObjectStore.sweep` removes the ones a killed process left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from docksnap.errors import InvalidArgumentError, StoreError
from docksnap.store.objects import ObjectInfo, ObjectNotFoundError, check_key, check_prefix

# Snapshot data is a copy of a container's directory and may hold its secrets:
# files and directories the store creates are private to the user running docksnap.
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_TEMP_SUFFIX = ".tmp"


class LocalObjectStore:
    """Objects as files under ``root``. Thread-safe; no state but the directory
    (and whether the file system supports unnamed temp files).

    ``fsync=False`` skips the fsyncs (for throwaway stores in tests and benchmarks
    only): objects are still published atomically, but a power loss may lose them.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self._root = Path(os.path.abspath(root))
        self._fsync = fsync
        self._url = self._root.as_uri()
        self._tmpfile_supported = hasattr(os, "O_TMPFILE")

    @property
    def url(self) -> str:
        return self._url

    @property
    def root(self) -> Path:
        return self._root

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Write ``key`` atomically (temp file, fsync, rename, fsync dir). Idempotent.

        Errors are :class:`StoreError`; none is retried (local disks do not have
        transient faults worth retrying, e.g. ENOSPC stays until space is freed).
        """
        path = self._path(key)
        tmp = self._write_temp(path, data, key, "put")
        try:
            os.replace(tmp, path)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise self._error("put", key, exc) from exc
        self._sync_dir(path.parent, key, "put")

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Create ``key`` unless it exists; True if this call created it. Atomic.

        The complete, fsynced file is hard-linked to the final name: ``link(2)``
        fails with EEXIST if the name exists, so of racing callers exactly one
        wins, and its complete file is what the others see.
        """
        path = self._path(key)
        created = self._link_anonymous(path, data, key)
        if created is None:
            created = self._link_named_temp(path, data, key)
        self._sync_dir(path.parent, key, "put_if_absent")
        return created

    def _link_anonymous(self, path: Path, data: bytes | memoryview, key: str) -> bool | None:
        """``put_if_absent`` through an unnamed ``O_TMPFILE`` file; None if unsupported.

        Chunks are written by the thousand: a named temp file costs a create and
        an unlink each, and on ext4 the unlinks slow every later inode allocation
        (measured: ~9% of a snapshot's CPU). An unnamed file has neither, and a
        crash leaves nothing behind to sweep.
        """
        if not self._tmpfile_supported:
            return None
        try:
            fd = self._open_tmpfile(path.parent)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self._tmpfile_supported = False
                return None
            raise self._error("put_if_absent", key, exc) from exc
        try:
            _write_all(fd, data)
            if self._fsync:
                os.fsync(fd)
            _link_fd(fd, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._error("put_if_absent", key, exc) from exc
        finally:
            os.close(fd)

    def _open_tmpfile(self, directory: Path) -> int:
        flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
        try:
            return os.open(directory, flags, _FILE_MODE)
        except FileNotFoundError:
            self._make_dirs(directory)
            return os.open(directory, flags, _FILE_MODE)

    def _link_named_temp(self, path: Path, data: bytes | memoryview, key: str) -> bool:
        """``put_if_absent`` by hard-linking a named temp file (any POSIX file system)."""
        tmp = self._write_temp(path, data, key, "put_if_absent")
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._error("put_if_absent", key, exc) from exc
        finally:
            _unlink_quietly(tmp)

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a stored object now. Read-only."""
        try:
            return stat.S_ISREG(os.stat(self._path(key)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._error("exists", key, exc) from exc

    def get(self, key: str) -> bytes:
        """The whole object; :class:`ObjectNotFoundError` if absent. Idempotent."""
        try:
            with open(self._path(key), "rb") as file:
                return file.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise self._missing("get", key) from exc
        except OSError as exc:
            raise self._error("get", key, exc) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes at ``start``; a range past the end is a :class:`StoreError`."""
        if start < 0 or length < 0:
            raise InvalidArgumentError(f"invalid range start={start} length={length}")
        try:
            with open(self._path(key), "rb") as file:
                data = os.pread(file.fileno(), length, start)
                size = os.fstat(file.fileno()).st_size
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise self._missing("get_range", key) from exc
        except OSError as exc:
            raise self._error("get_range", key, exc) from exc
        if len(data) != length:
            raise StoreError(
                self._url,
                f"get_range {key!r}: object is {size} bytes, "
                f"range {start}+{length} runs past its end",
            )
        return data

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, each once, in no order.

        Only the directory that holds the prefix is walked. Temporary files and
        symlinks are never listed. Objects created or deleted during the walk may or
        may not appear; objects present throughout appear exactly once.
        """
        check_prefix(prefix)
        base = prefix.rpartition("/")[0]
        yield from self._walk(self._root / base if base else self._root, base, prefix)

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is success. The removal is fsynced."""
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        except OSError as exc:
            raise self._error("delete", key, exc) from exc
        self._sync_dir(path.parent, key, "delete")

    def sweep(self, older_than: float) -> tuple[int, int]:
        """Remove temporary files older than ``older_than`` seconds: (count, bytes).

        Only a write that was interrupted (its process killed) leaves one behind, or
        one still in progress: ``older_than`` must exceed the longest single write.
        """
        cutoff = time.time() - older_than
        removed = freed = 0
        for path, info in self._walk_temps(self._root):
            if info.st_mtime <= cutoff:
                _unlink_quietly(path)
                removed += 1
                freed += info.st_size
        return removed, freed

    def close(self) -> None:
        """Nothing to release; idempotent."""

    # --- internals -------------------------------------------------------------

    def _path(self, key: str) -> Path:
        check_key(key)
        return self._root / key

    def _write_temp(self, path: Path, data: bytes | memoryview, key: str, op: str) -> Path:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}{_TEMP_SUFFIX}"
        try:
            fd = self._create(tmp)
        except OSError as exc:
            raise self._error(op, key, exc) from exc
        try:
            _write_all(fd, data)
            if self._fsync:
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(tmp)
            raise self._error(op, key, exc) from exc
        os.close(fd)
        return tmp

    def _create(self, tmp: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(tmp, flags, _FILE_MODE)
        except FileNotFoundError:
            self._make_dirs(tmp.parent)
            return os.open(tmp, flags, _FILE_MODE)

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and missing parents, each fsynced into its parent."""
        missing: list[Path] = []
        current = directory
        while not current.exists() and current != current.parent:
            missing.append(current)  # the root itself too, and its parents if need be
            current = current.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, _DIR_MODE)
            except FileExistsError:
                continue  # another thread made it; it fsyncs its own parent
            # A directory entry is durable only once its parent is synced; otherwise
            # a crash could lose the directory together with every object in it.
            self._sync_dir(path.parent, str(path), "mkdir")

    def _sync_dir(self, directory: Path, key: str, op: str) -> None:
        if not self._fsync:
            return
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error(op, key, exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise self._error(op, key, exc) from exc
        finally:
            os.close(fd)

    def _walk(self, directory: Path, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._error("list", prefix, exc) from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temporary files, never objects
            key = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                below = key + "/"
                if below.startswith(prefix) or prefix.startswith(below):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                info = _stat_quietly(entry)
                if info is not None:
                    yield ObjectInfo(key=key, size=info.st_size, mtime=info.st_mtime)

    def _walk_temps(self, directory: Path) -> Iterator[tuple[Path, os.stat_result]]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk_temps(Path(entry.path))
            elif _is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
                info = _stat_quietly(entry)
                if info is not None:
                    yield Path(entry.path), info

    def _error(self, op: str, key: str, exc: OSError) -> StoreError:
        return StoreError(self._url, f"{op} {key!r} failed: {exc.strerror or exc}")

    def _missing(self, op: str, key: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(self._url, f"{op} {key!r}: no such object")


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    with memoryview(data) as view:
        flat = view.cast("B") if view.format != "B" else view
        written = 0
        while written < flat.nbytes:
            written += os.write(fd, flat[written:])


def _stat_quietly(entry: os.DirEntry[str]) -> os.stat_result | None:
    # A concurrent delete between scandir and stat is normal: the object is gone.
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None


def _link_fd(fd: int, path: Path) -> None:
    """Give the open unnamed file ``fd`` the name ``path`` (EEXIST if it is taken).

    CPython calls linkat(2) with AT_SYMLINK_FOLLOW, which resolves the magic
    /proc/self/fd link to the file itself, only when a directory fd is passed;
    without one it calls link(2), which refuses with EXDEV.
    """
    proc_fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=proc_fds, follow_symlinks=True)
    finally:
        os.close(proc_fds)


def _unlink_quietly(path: Path) -> None:
    # Best effort: a leftover temporary file is invisible and swept later.
    with contextlib.suppress(OSError):
        os.unlink(path)

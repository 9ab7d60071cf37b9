"""Open a path *inside* a container's root directory, never on the host.

A container chooses its own symlinks: ``/work -> /``, ``a -> ../../..``,
``x -> /proc/self/root``. Resolving ``/work/x`` with a string path under
``/proc/<pid>/root`` would let the kernel follow them relative to the *host*'s
root. Everything here resolves relative to a directory descriptor of the
container's root instead:

- :func:`resolve_in_root` walks a path one component at a time from the root
  descriptor (``O_PATH | O_NOFOLLOW``), reading each symlink it meets and
  continuing inside the root: an absolute target restarts at the container's
  root, ``..`` never climbs above it (the kernel's ``RESOLVE_IN_ROOT``
  semantics). It returns the canonical path as the container sees it, which the
  mount check of host capture needs and the kernel does not give back.
- :func:`open_in_root` then opens that canonical path with ``openat2(2)`` and
  ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS``: if anything
  was swapped for a symlink in between, the open fails instead of following it.
  Where the kernel lacks ``openat2`` (ENOSYS, before Linux 5.6), the same
  canonical path is opened component by component with ``O_NOFOLLOW``.

Magic links (``/proc/self/fd/N`` inside the container) are never followed:
:func:`resolve_in_root` reads them as plain symlinks, whose text points
somewhere inside the container again.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

# From linux/openat2.h.
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())
_MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS: more is a loop
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.readlinkat.restype = ctypes.c_ssize_t
_libc.readlinkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
    """``openat2(2)``; raises :class:`OSError` (ENOSYS where the kernel lacks it)."""
    if _SYS_OPENAT2 is None:
        raise OSError(errno.ENOSYS, "openat2 is not known on this architecture")
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), os.fsdecode(path))
    return int(fd)


def readlink_fd(fd: int) -> bytes:
    """The target of the symlink ``fd`` was opened on (``O_PATH | O_NOFOLLOW``).

    ``readlinkat(fd, "")`` reads the very inode held, so a name swapped since
    cannot change the answer.
    """
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = _libc.readlinkat(fd, b"", buf, size)
        if n < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        if n < size:
            return buf.raw[:n]
        size *= 4
        if size > 1 << 20:
            raise OSError(errno.ENAMETOOLONG, "symlink target too long")


def resolve_in_root(root_fd: int, path: str) -> str:
    """The canonical form of absolute ``path`` inside the root ``root_fd`` holds.

    Symlinks are read and resolved inside the root, as ``RESOLVE_IN_ROOT``
    does; nothing outside it is ever looked at. Raises :class:`OSError`
    (ENOENT, ENOTDIR, ELOOP) as ``open`` would.
    """
    pending = _components(path.encode("utf-8", "surrogateescape"))
    done: list[bytes] = []
    held: list[int] = []  # descriptors of done's directories, root excluded
    links = 0
    try:
        while pending:
            part = pending.pop(0)
            if part == b".":
                continue
            if part == b"..":
                if done:
                    done.pop()
                    os.close(held.pop())
                continue
            parent = held[-1] if held else root_fd
            fd = os.open(part, _PATH_FLAGS, dir_fd=parent)
            mode = os.fstat(fd).st_mode
            if _is_symlink(mode):
                target = readlink_fd(fd)
                os.close(fd)
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                pending = _components(target) + pending
                if target.startswith(b"/"):
                    done.clear()
                    while held:
                        os.close(held.pop())
                continue
            if pending and not _is_dir(mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, "not a directory", path)
            done.append(part)
            held.append(fd)
    finally:
        for fd in held:
            os.close(fd)
    return "/" + b"/".join(done).decode("utf-8", "surrogateescape")


def open_in_root(root_fd: int, canonical: str, flags: int) -> int:
    """Open ``canonical`` (from :func:`resolve_in_root`) below ``root_fd``, following nothing.

    ``RESOLVE_IN_ROOT`` keeps even a racing rename inside the root, and
    ``RESOLVE_NO_SYMLINKS`` makes a symlink swapped in since the resolution an
    error (ELOOP) rather than a detour.
    """
    relative = canonical.lstrip("/").encode("utf-8", "surrogateescape") or b"."
    try:
        return openat2(
            root_fd,
            relative,
            flags,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
        )
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    return open_nofollow_walk(root_fd, relative, flags)


def open_nofollow_walk(root_fd: int, relative: bytes, flags: int) -> int:
    """Open ``relative`` under ``root_fd`` one component at a time, each ``O_NOFOLLOW``.

    The fallback for kernels without ``openat2``: no component may be a
    symlink (ELOOP) or ``..``, so nothing outside the root can be reached.
    """
    parts = [p for p in _components(relative) if p != b"."]
    if b".." in parts:
        raise OSError(errno.EINVAL, "'..' in a canonical path", os.fsdecode(relative))
    if not parts:
        return os.open(".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    current = root_fd
    try:
        for part in parts[:-1]:
            step = os.open(part, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=current)
            if current != root_fd:
                os.close(current)
            current = step
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
    finally:
        if current != root_fd:
            os.close(current)


def _components(path: bytes) -> list[bytes]:
    return [part for part in path.split(b"/") if part]


def _is_symlink(mode: int) -> bool:
    return mode & 0o170000 == 0o120000


def _is_dir(mode: int) -> bool:
    return mode & 0o170000 == 0o040000

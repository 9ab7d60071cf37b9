"""Decide whether a tar member is safe to extract under a directory.

Symlink *targets* are not checked: they are data, and restores extract through
Docker's archive API, which resolves every member path inside the container's root
(chrooted), so an absolute or climbing symlink target cannot reach the host. What can
still go wrong inside the container is an archive that writes *through* a symlink it
created itself (``evil -> /etc`` then ``evil/passwd``); :class:`TarSafetyChecker`
catches that, which needs the history of the archive, not one member.
"""

from __future__ import annotations

from .entry import TarEntry
from .errors import UnsafeArchiveError
from .keyset import KeySet, path_key

_DEVICE_TYPES = frozenset({"char", "block", "fifo"})
# The kernel's limits on a path and on one of its components: the engine cannot
# create longer ones, and refusing them first keeps the per-member checks linear.
PATH_MAX = 4096
NAME_MAX = 255
# uid_t and gid_t are 32 bits: the engine's lchown(2) truncates a larger header
# value (2**32 becomes 0, root), and 2**32 - 1 means "leave unchanged". Either way
# the owner a listing shows would not be the owner a restore creates.
ID_LIMIT = 2**32 - 1
# The kinds of path kept in one key table: a directory (in the archive, or implied
# as a member's parent), a symlink (or a hard link to one), any other non-directory.
_DIR = 1
_OTHER = 2
_SYMLINK = 3


def check_member_safe(entry: TarEntry, *, allow_devices: bool = False) -> None:
    """Raise :class:`UnsafeArchiveError` unless ``entry`` stays inside the archive root.

    Rejected: an empty path, NUL in the path or link, an absolute path, a path whose
    ".." components climb above the root (checked lexically: "a/../b" and even "a/.."
    are accepted, "../x" and "a/../../x" are not), a member resolving to the root that
    is not a directory, char/block devices and fifos unless ``allow_devices``, and a
    hardlink whose target is empty, absolute, climbs out, or is the root. Symlink
    targets may be absolute or climb: see the module docstring.
    """
    path = entry.path
    _check_path(path, path, "path")
    if _components(path) == [] and entry.type != "dir":
        raise UnsafeArchiveError(path, f"{entry.type} member replaces the archive root")
    if entry.type in _DEVICE_TYPES and not allow_devices:
        raise UnsafeArchiveError(path, f"{entry.type} members are not allowed")
    if "\x00" in entry.link:
        raise UnsafeArchiveError(path, f"NUL in link target {entry.link!r}")
    if entry.type == "hardlink":
        _check_path(entry.link, path, "hardlink target")
        if _components(entry.link) == []:
            raise UnsafeArchiveError(path, "hardlink to the archive root")


class TarSafetyChecker:
    """Check the members of one archive in stream order, remembering its symlinks.

    On top of :func:`check_member_safe`, rejects a member whose path, or hardlink
    target, goes through a symlink created earlier in the same archive. Once a path
    was a symlink it stays suspect even if a later member replaces it: a legitimate
    archive (one per ``docker cp``) has each path once, so this costs nothing real.
    A hardlink to such a symlink is itself a symlink (link(2) does not follow it), so
    it is remembered too. Paths are compared after lexical normalization, but a
    ".." after a symlink counts as going through it, as the kernel resolves it.

    Symlinks are remembered as keys of ~12 bytes (:class:`~.keyset.KeySet`), not as
    path strings, so ten million of them take ~120 MB whatever their lengths; a
    key collision can only refuse a safe member, never pass an unsafe one. ``paths``
    shares a table with a caller that keeps other kinds of path in it.
    """

    def __init__(self, *, allow_devices: bool = False, paths: KeySet | None = None) -> None:
        self._allow_devices = allow_devices
        self._paths = KeySet() if paths is None else paths

    def is_symlink(self, resolved: str) -> bool:
        """Whether the archive made ``resolved`` (normalized) a symlink so far."""
        return path_key(resolved, _SYMLINK) in self._paths

    def check(self, entry: TarEntry) -> None:
        """Raise :class:`UnsafeArchiveError` if ``entry`` is unsafe given earlier ones."""
        check_member_safe(entry, allow_devices=self._allow_devices)
        resolved = self._resolve(entry.path, entry.path, "path")
        if entry.type == "symlink":
            self._paths.add(path_key(resolved, _SYMLINK))
        elif entry.type == "hardlink":
            target = self._resolve(entry.link, entry.path, "hardlink target")
            if self.is_symlink(target):
                self._paths.add(path_key(resolved, _SYMLINK))

    def _resolve(self, path: str, member: str, what: str) -> str:
        prefixes: list[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if prefixes and self.is_symlink(prefixes[-1]):
                raise UnsafeArchiveError(
                    member, f"{what} {path!r} goes through symlink {prefixes[-1]!r}"
                )
            if part == "..":
                prefixes.pop()
            else:
                prefixes.append(f"{prefixes[-1]}/{part}" if prefixes else part)
        return prefixes[-1] if prefixes else "."


def _check_path(path: str, member: str, what: str) -> None:
    if not path:
        raise UnsafeArchiveError(member, f"empty {what}")
    if "\x00" in path:
        raise UnsafeArchiveError(member, f"NUL in {what} {path!r}")
    if path.startswith("/"):
        raise UnsafeArchiveError(member, f"absolute {what} {path!r}")
    if _components(path) is None:
        raise UnsafeArchiveError(member, f"{what} {path!r} climbs out of the archive root")


def _components(path: str) -> list[str] | None:
    """Return the lexically normalized components of ``path``, None if it climbs out."""
    stack: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not stack:
                return None
            stack.pop()
        elif part not in ("", "."):
            stack.append(part)
    return stack


class RestorableChecker:
    """Check an imported archive's members, in stream order, as the engine will
    extract them, so that an archive the engine would refuse at restore is refused
    at import instead.

    On top of :class:`TarSafetyChecker` (which it runs first), refuses: a member of a
    type the engine does not extract ("other": unknown type flags, '7', 'X'); a hard
    link whose target is not a non-directory member earlier in the archive (the
    engine's ``link(2)`` needs it on disk), or is the link itself (the engine
    removes the path before linking it, so the target is gone: in a merge restore
    the container's own file goes with it); a non-directory where the archive
    created a directory, explicitly or as the parent of an earlier member (the
    engine creates missing parents), or a directory where it created a
    non-directory (restores send ``noOverwriteDirNonDir``); a member under a path
    the archive created as a non-directory; a symlink with an empty target
    (symlink(2) refuses it); and a relative symlink whose target climbs above the
    archive root (the engine refuses it as "invalid symlink" into any directory
    but "/"; absolute targets are fine, they resolve inside the container). Checked
    first: a path or link longer than the kernel allows (which also keeps the
    prefix walks below linear in the archive's size), and a uid or gid that the
    engine's lchown(2) would truncate, possibly to root.

    Paths are remembered as keys in one :class:`~.keyset.KeySet` shared with the
    :class:`TarSafetyChecker`, ~12 bytes a path (directories, the parents they
    imply, symlinks, the rest), not as strings: a key collision (odds ~n²/2⁶²)
    can only make a valid archive refused, or let one through that the engine
    then refuses.
    """

    def __init__(self, *, allow_devices: bool = False) -> None:
        self._paths = KeySet()
        self._safety = TarSafetyChecker(allow_devices=allow_devices, paths=self._paths)

    def _is_other(self, normalized: str) -> bool:
        """Whether the archive made ``normalized`` a non-directory so far."""
        return path_key(normalized, _OTHER) in self._paths or self._safety.is_symlink(normalized)

    def check(self, entry: TarEntry) -> None:
        """Raise :class:`UnsafeArchiveError` naming ``entry`` if it cannot be restored."""
        _check_kernel_limits(entry)
        self._safety.check(entry)
        path = entry.path
        if entry.type == "other":
            raise UnsafeArchiveError(path, "a type flag the engine does not extract")
        parts = _components(path) or []
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            if self._is_other(parent):
                raise UnsafeArchiveError(path, f"its parent {parent!r} is not a directory")
            # The engine creates a missing parent as a directory (MkdirAll).
            self._paths.add(path_key(parent, _DIR))
        normalized = "/".join(parts)
        if entry.type == "symlink":
            _check_symlink_target(entry, parts)
        elif entry.type == "hardlink":
            self._check_hardlink_target(entry, normalized)
        self._remember(entry, normalized)

    def _check_hardlink_target(self, entry: TarEntry, normalized: str) -> None:
        target = "/".join(_components(entry.link) or [])
        if target == normalized:
            raise UnsafeArchiveError(entry.path, f"hard link to itself ({entry.link!r})")
        if not self._is_other(target):
            raise UnsafeArchiveError(
                entry.path, f"hard link to {entry.link!r}, which no earlier member created"
            )

    def _remember(self, entry: TarEntry, normalized: str) -> None:
        if entry.type == "dir":
            if self._is_other(normalized):
                raise UnsafeArchiveError(entry.path, "a directory replaces a non-directory")
            self._paths.add(path_key(normalized, _DIR))
        else:
            if path_key(normalized, _DIR) in self._paths:
                raise UnsafeArchiveError(entry.path, f"a {entry.type} replaces a directory")
            if not self._safety.is_symlink(normalized):  # one key per path is enough
                self._paths.add(path_key(normalized, _OTHER))


def _check_kernel_limits(entry: TarEntry) -> None:
    for what, value in (("path", entry.path), ("link target", entry.link)):
        encoded = value.encode("utf-8", "surrogateescape")
        if len(encoded) > PATH_MAX:
            raise UnsafeArchiveError(
                entry.path, f"{what} of {len(encoded)} bytes is longer than {PATH_MAX}"
            )
        if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
            raise UnsafeArchiveError(
                entry.path, f"{what} has a component longer than {NAME_MAX} bytes"
            )
    for name, number in (("uid", entry.uid), ("gid", entry.gid)):
        if not 0 <= number < ID_LIMIT:
            raise UnsafeArchiveError(
                entry.path, f"{name} {number} does not fit the kernel's {name}"
            )


def _check_symlink_target(entry: TarEntry, parts: list[str]) -> None:
    if not entry.link:
        raise UnsafeArchiveError(entry.path, "empty symlink target")
    # moby joins a relative target to the link's directory and refuses the member
    # ("invalid symlink") when that leaves the extraction directory.
    if entry.link.startswith("/"):
        return
    if _components("/".join([*parts[:-1], entry.link])) is None:
        raise UnsafeArchiveError(
            entry.path, f"symlink target {entry.link!r} climbs out of the archive root"
        )

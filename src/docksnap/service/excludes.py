"""Exclude patterns with ``.gitignore`` semantics, matched against tar members.

Patterns are relative to the snapshot's directory, exactly as a ``.gitignore``
at its top would be: ``*.log`` anywhere, ``/build`` only at the top, ``cache/``
directories only, ``!keep.log`` re-includes. Matching is ``pathspec``'s
``GitIgnoreSpec``; on top of it, as git does, nothing below an excluded
directory can be re-included (git never descends into one), so ``node_modules/``
with ``!node_modules/x`` still leaves all of ``node_modules`` out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pathspec

from docksnap.errors import InvalidArgumentError
from docksnap.tarstream import TarEntry

IGNORE_FILE = ".docksnapignore"


class Excludes:
    """A compiled, immutable list of exclude patterns."""

    def __init__(self, patterns: Iterable[str]) -> None:
        lines: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or "\0" in pattern:
                raise InvalidArgumentError(
                    f"exclude pattern must be a string without NUL: {pattern!r}"
                )
            lines.append(pattern)
        self.patterns: tuple[str, ...] = tuple(lines)
        try:
            self._spec = pathspec.GitIgnoreSpec.from_lines(lines)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"invalid exclude pattern: {exc}") from exc

    def __bool__(self) -> bool:
        return bool(self._spec.patterns)

    @classmethod
    def from_file(cls, path: str | Path) -> list[str]:
        """The patterns of an ignore file (comments and blank lines are pathspec's business)."""
        try:
            return Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read exclude file {str(path)!r}: {exc}") from exc

    def matches(self, path: str, *, is_dir: bool) -> bool:
        """Whether ``path`` (relative, as in the tar) is excluded by the patterns alone."""
        if path in (".", ""):
            return False  # the snapshot's own directory is never left out
        return self._spec.match_file(path + "/" if is_dir else path)

    def member_filter(self) -> MemberExcluder:
        """A stateful matcher for one stream: remembers excluded directories."""
        return MemberExcluder(self)


class MemberExcluder:
    """Decides members of one stream in order, keeping git's rule for directories."""

    def __init__(self, excludes: Excludes) -> None:
        self._excludes = excludes
        self._excluded_dirs: set[str] = set()
        self.count = 0

    def excluded(self, entry: TarEntry) -> bool:
        path = entry.path
        if self._under_excluded_dir(path) or self._excludes.matches(
            path, is_dir=entry.type == "dir"
        ):
            if entry.type == "dir":
                self._excluded_dirs.add(path)
            self.count += 1
            return True
        return False

    def _under_excluded_dir(self, path: str) -> bool:
        if not self._excluded_dirs:
            return False
        parent = path
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if parent in self._excluded_dirs:
                return True
        return False


def combine(patterns: Sequence[str] | None, files: Sequence[str | Path] = ()) -> list[str]:
    """``patterns`` followed by the lines of each exclude file, in order."""
    if isinstance(patterns, str):
        raise InvalidArgumentError("exclude must be a list of patterns, not a string")
    lines = list(patterns or ())
    for path in files:
        lines += Excludes.from_file(path)
    return lines

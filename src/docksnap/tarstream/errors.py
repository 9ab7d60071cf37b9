"""Errors raised by :mod:`docksnap.tarstream`.

``TarError`` is the root of this package's errors. Each class takes the fields that
identify the problem (an ``offset`` in the stream or a member ``path``) plus a
``reason``; the message names both, so a log line alone says what was wrong and where.
"""

from __future__ import annotations

from docksnap.errors import DocksnapError, InvalidArgumentError, UnsafeArchiveError

__all__ = [
    "AmbiguousArchiveError",
    "TarError",
    "TarFormatError",
    "TarLimitError",
    "UnsafeArchiveError",
]


class TarError(DocksnapError):
    """Root of every error raised by :mod:`docksnap.tarstream`."""


class TarFormatError(TarError, InvalidArgumentError):
    """The byte stream is not a well-formed tar archive at ``offset``."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"malformed tar stream at offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class TarLimitError(TarError):
    """The stream exceeds a configured limit at ``offset`` (entry count, record size)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"tar stream exceeds a limit at offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class AmbiguousArchiveError(UnsafeArchiveError):
    """Tar readers disagree on what member ``path`` is (its name, link, size, ...).

    The engine's reader (Go's ``archive/tar``) gives ``path``; the archive is
    refused because a check, or a person with another tool, would see something else.
    """

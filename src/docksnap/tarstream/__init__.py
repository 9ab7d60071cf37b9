"""Fast, bounded-memory reading and writing of the tar streams Docker exchanges.

- :class:`TarIndexer` indexes a tar stream fed in chunks, reading headers only.
- :class:`TarEntry` is what it produces per member (also a manifest storage format).
- :func:`check_member_safe` and :class:`TarSafetyChecker` vet members before extraction.
- :func:`build_dirs_tar` writes the archive that creates missing parent directories.
"""

from __future__ import annotations

from .build import build_dirs_tar
from .entry import ENTRY_TYPES, TarEntry, normalize_name
from .errors import (
    AmbiguousArchiveError,
    TarError,
    TarFormatError,
    TarLimitError,
    UnsafeArchiveError,
)
from .indexer import TarIndexer
from .safety import TarSafetyChecker, check_member_safe

__all__ = [
    "ENTRY_TYPES",
    "AmbiguousArchiveError",
    "TarEntry",
    "TarError",
    "TarFormatError",
    "TarIndexer",
    "TarLimitError",
    "TarSafetyChecker",
    "UnsafeArchiveError",
    "build_dirs_tar",
    "check_member_safe",
    "normalize_name",
]

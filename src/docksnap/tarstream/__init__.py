"""Fast, bounded-memory reading and writing of the tar streams Docker exchanges.

- :class:`TarIndexer` indexes a tar stream fed in chunks, reading headers only.
- :class:`TarEntry` is what it produces per member (also a manifest storage format).
- :func:`check_member_safe` and :class:`TarSafetyChecker` vet members before extraction;
  :class:`RestorableChecker` also refuses what the engine would refuse to extract.
- :class:`TarCanonicalizer` re-encodes an imported archive with canonical headers.
- :func:`build_dirs_tar` writes the archive that creates missing parent directories.
"""

from __future__ import annotations

from .build import build_dirs_tar
from .canonical import TarCanonicalizer, canonical_header
from .entry import DATA_TYPES, ENTRY_TYPES, TarEntry, normalize_name
from .errors import (
    AmbiguousArchiveError,
    TarError,
    TarFormatError,
    TarLimitError,
    UnsafeArchiveError,
)
from .indexer import MemberIndexer, TarIndexer
from .safety import RestorableChecker, TarSafetyChecker, check_member_safe

__all__ = [
    "DATA_TYPES",
    "ENTRY_TYPES",
    "AmbiguousArchiveError",
    "MemberIndexer",
    "RestorableChecker",
    "TarCanonicalizer",
    "TarEntry",
    "TarError",
    "TarFormatError",
    "TarIndexer",
    "TarLimitError",
    "TarSafetyChecker",
    "UnsafeArchiveError",
    "build_dirs_tar",
    "canonical_header",
    "check_member_safe",
    "normalize_name",
]

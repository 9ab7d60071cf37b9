"""The content-addressed snapshot store (docksnap's default), over any object store.

:class:`ChunkedStore` implements :class:`~docksnap.store.base.SnapshotStore`; the
format it writes is in ``docs/FORMAT.md`` and :mod:`.format`.
"""

from __future__ import annotations

from docksnap.store.chunked.format import ChunkerParams, ChunkRef, StoreConfig
from docksnap.store.chunked.members import Member, MemberChunkRecord, ReusedContent
from docksnap.store.chunked.store import ChunkedStore

__all__ = [
    "ChunkRef",
    "ChunkedStore",
    "ChunkerParams",
    "Member",
    "MemberChunkRecord",
    "ReusedContent",
    "StoreConfig",
]

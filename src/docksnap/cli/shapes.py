"""The JSON documents ``--json`` prints: one function per shape, keys in a fixed order.

These shapes are a public contract, documented in docs/CLI.md: add keys, never
rename or remove them. Times are Unix seconds (floats), sizes bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docksnap.cli.render import xattr_value
from docksnap.model import DirectorySnapshot
from docksnap.service.archive import SnapshotDiff
from docksnap.service.orphans import OrphanReport
from docksnap.service.restore_cache import CacheEntry
from docksnap.store.base import GcReport, SnapshotInfo, StoreStats, VerifyReport
from docksnap.tarstream import TarEntry

JSON = dict[str, Any]


def record(snapshot: DirectorySnapshot) -> JSON:
    """The portable record; ``DirectorySnapshot.from_dict`` accepts it as is.

    Unlike ``to_dict`` it always carries the optional fields (``null`` when
    unset), so scripts see the same keys every time.
    """
    return {**snapshot.to_dict(), "digest": snapshot.digest, "created_at": snapshot.created_at}


def info(item: SnapshotInfo) -> JSON:
    source = None
    if item.source is not None:
        source = {"container": item.source.container, "image": item.source.image}
    return {
        "snapshot": record(item.snapshot),
        "source": source,
        "created_at": item.created_at,
        "last_used_at": item.last_used_at,
        "ttl": item.ttl,
        "stored_size": item.stored_size,
    }


def entry(item: TarEntry) -> JSON:
    return {
        **_fields(item, "path", "type", "mode", "uid", "gid", "mtime", "size", "link"),
        "xattrs": {name: xattr_value(value) for name, value in item.xattrs},
    }


def show(item: SnapshotInfo, files: Sequence[TarEntry], shown: int) -> JSON:
    return {**info(item), "file_count": len(files), "files": [entry(e) for e in files[:shown]]}


def diff(result: SnapshotDiff) -> JSON:
    return {
        "added": [entry(e) for e in result.added],
        "removed": [entry(e) for e in result.removed],
        "changed": [
            {
                "path": change.new.path,
                "fields": list(change.fields),
                "old": entry(change.old),
                "new": entry(change.new),
            }
            for change in result.changed
        ],
    }


def verify(report: VerifyReport) -> JSON:
    return {
        **_fields(report, "ok", "snapshots_checked", "objects_checked", "bytes_checked"),
        "problems": [_fields(p, "snapshot_id", "object", "detail") for p in report.problems],
        "repaired": [
            {"chunk": r.chunk, "source": r.source, "snapshot_ids": list(r.snapshot_ids)}
            for r in report.repaired
        ],
        "damaged_snapshots": list(report.damaged_snapshots),
    }


def gc(expired: Sequence[str], report: GcReport, orphans: OrphanReport) -> JSON:
    return {
        "expired": list(expired),
        **_fields(report, "objects_deleted", "bytes_deleted", "objects_kept_young"),
        "orphans": {"containers": list(orphans.containers), "volumes": list(orphans.volumes)},
    }


def stats(store_url: str, totals: StoreStats) -> JSON:
    return {
        "store": store_url,
        **_fields(
            totals,
            *("snapshots", "logical_bytes", "stored_bytes", "chunks"),
            *("dedup_ratio", "compression_ratio"),
        ),
        "extra": dict(totals.extra),
    }


def cache_entry(item: CacheEntry) -> JSON:
    return _fields(
        item,
        *("name", "snapshot_id", "size", "created_at", "last_used_at"),
        *("complete", "in_use", "references"),
    )


def _fields(item: object, *names: str) -> JSON:
    """``item``'s attributes ``names`` under their own names, in that order."""
    return {name: getattr(item, name) for name in names}

"""The labels docksnap puts on every container and volume it creates.

Everything docksnap makes carries ``io.docksnap.managed=true`` and a role, so
that leaks are findable (``docker ps -a --filter label=io.docksnap.managed``)
and so that docksnap never removes what it did not create.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum

from docksnap.process import creator_id

PREFIX = "io.docksnap."
MANAGED = PREFIX + "managed"
ROLE = PREFIX + "role"
OWNER = PREFIX + "container"  # the app container a restore volume belongs to
SNAPSHOT_ID = PREFIX + "snapshot-id"
CREATED_AT = PREFIX + "created-at"  # Unix seconds, decimal
RESTORED = PREFIX + "restored"  # on an app container: JSON {target: snapshot id}
CREATOR = PREFIX + "creator"  # the creating process: docksnap.process.creator_id()
# The restore cache (service/restore_cache.py):
CACHE_STORE = PREFIX + "cache-store"  # on a cache entry: which store it came from (a hash)
CACHE_ENTRY = PREFIX + "cache-entry"  # on a restore view's volumes: the entry they read
UPPER = PREFIX + "upper"  # on an overlay view volume: the volume holding its upper/work
VIEW = PREFIX + "view"  # on an upper/work volume: the overlay view volume that uses it


class Role(StrEnum):
    APP = "app"
    CACHE = "cache"
    HELPER = "helper"
    RESTORE = "restore"
    SNAPSHOT = "snapshot"


def make_labels(
    role: Role, extra: Mapping[str, str] | None = None, fields: Mapping[str, str] | None = None
) -> dict[str, str]:
    """docksnap's labels for a resource of ``role``, plus the client's ``extra`` labels."""
    labels = dict(extra or {})
    labels.update(fields or {})
    labels[MANAGED] = "true"
    labels[ROLE] = str(role)
    return labels


def creator_fields(owner: str | None = None) -> dict[str, str]:
    """Who made a transient resource, and when: what gc needs to tell an orphan.

    ``owner`` is the app container a restore volume belongs to.
    """
    fields = {CREATOR: creator_id(), CREATED_AT: str(int(time.time()))}
    if owner is not None:
        fields[OWNER] = owner
    return fields

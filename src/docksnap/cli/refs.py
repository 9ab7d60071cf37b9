"""Snapshot references on the command line: ``ID``, an id prefix, ``name:NAME[~N]``.

Every command that takes a snapshot id resolves it here, through the library's
one rule (:meth:`docksnap.Catalogue.resolve`), before doing anything.
"""

from __future__ import annotations

import click

from docksnap.service.catalogue import NAME_REF
from docksnap.service.client import Client


async def snapshot_id(client: Client, ref: str) -> str:
    """The full id ``ref`` names; SnapshotNotFoundError or AmbiguousSnapshotError otherwise."""
    return (await client.snapshots.resolve(ref)).id


def restore_spec(text: str, option: str) -> tuple[str, str | None]:
    """``REF`` or ``REF:/mount/point``.

    Ids and prefixes hold no colon; in ``name:NAME:/mount/point`` the mount point
    starts at the first ``:/`` after the name, since mount points are absolute.
    """
    if text.startswith(NAME_REF):
        name, sep, mount_point = text[len(NAME_REF) :].partition(":/")
        ref, mount_point = NAME_REF + name, "/" + mount_point if sep else ""
    else:
        ref, sep, mount_point = text.partition(":")
    if not ref or ref == NAME_REF or (sep and not mount_point):
        raise click.BadParameter(
            f"{text!r} is not ID[:MOUNT_POINT] (ID: an id, a prefix, or name:NAME)",
            param_hint=option,
        )
    return ref, mount_point or None

"""Engine resources a dead docksnap left behind: helper containers and restore volumes.

A docksnap killed mid-restore (SIGKILL, OOM, a lost machine) cannot remove the
helper container it was filling a restore volume through, and the helper pins
that volume ("volume is in use"). A container removed with a plain
``docker rm -f`` leaves its restore volumes. Both are found here by their
labels: every helper and restore volume names its creator process and creation
time (:func:`docksnap.labels.creator_fields`).

An orphan is a resource whose creator is known to be dead (same host, same
boot, the pid gone or reused), or, when this host cannot tell (made on another
host, or before labels named the creator), one older than the grace period. A
resource whose creator still runs is never an orphan, whatever the grace: that
docksnap may be filling it right now. A restore volume any container mounts is
never removed, nor the upper/work volume of a restore cache view while that
view's volume exists (no container mounts an upper volume: its view does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from docksnap import labels as lbl
from docksnap.docker import DockerClient
from docksnap.errors import DockerError
from docksnap.process import creator_alive

log = logging.getLogger(__name__)

_HELPERS = {lbl.MANAGED: "true", lbl.ROLE: str(lbl.Role.HELPER)}


@dataclass(frozen=True, slots=True)
class OrphanReport:
    """What :func:`reap_orphans` removed: helper container ids and restore volume names."""

    containers: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()


async def remove_helpers_of(docker: DockerClient, volume: str) -> list[str]:
    """Force-remove the docksnap helper containers that mount ``volume``; return their ids.

    Idempotent. Touches only containers labelled as docksnap helpers, never an
    app container or anything docksnap did not make.
    """
    helpers = [c["Id"] for c in await docker.list_containers(_HELPERS, volume=volume)]
    for helper in helpers:
        await docker.remove_container(helper)
    return helpers


async def reap_orphans(
    docker: DockerClient, *, grace: float, labels: Mapping[str, str] | None = None
) -> OrphanReport:
    """Remove orphaned helpers, then the restore volumes no container uses any more.

    Only resources that also carry every label in ``labels`` (a client's own
    labels) are considered. Idempotent; safe beside live docksnap processes
    (their resources are not orphans). A volume that a container starts using
    meanwhile is kept (the engine refuses with 409).
    """
    now = time.time()
    scope = {**(labels or {}), lbl.MANAGED: "true"}
    containers = []
    for helper in await docker.list_containers({**scope, lbl.ROLE: str(lbl.Role.HELPER)}):
        if _is_orphan(helper.get("Labels") or {}, helper.get("Created"), now, grace):
            await docker.remove_container(helper["Id"])
            containers.append(str(helper["Id"]))
    volumes = []
    candidates = await docker.list_volumes({**scope, lbl.ROLE: str(lbl.Role.RESTORE)})
    # Views before the upper volumes they use, so both go in one pass.
    candidates.sort(key=lambda v: lbl.VIEW in (v.get("Labels") or {}))
    for volume in candidates:
        name = str(volume["Name"])
        labels = volume.get("Labels") or {}
        if not _is_orphan(labels, None, now, grace):
            continue
        if await docker.list_containers({}, volume=name):
            continue  # mounted: its container (running or not) still owns it
        view = labels.get(lbl.VIEW)
        if view and await docker.inspect_volume(view) is not None:
            continue  # the upper layer of a view that still exists
        try:
            await docker.remove_volume(name)
        except DockerError as exc:
            if exc.status != 409:
                raise
            log.info("restore volume %s came into use while gc ran; kept", name)
            continue
        volumes.append(name)
    return OrphanReport(tuple(containers), tuple(volumes))


def _is_orphan(labels: Mapping[str, str], created: Any, now: float, grace: float) -> bool:
    alive = creator_alive(labels.get(lbl.CREATOR, ""))
    if alive is not None:
        return not alive
    try:
        born = float(labels.get(lbl.CREATED_AT) or created)
    except (TypeError, ValueError):
        return False  # no age either: keep what cannot be judged
    return now - born > grace

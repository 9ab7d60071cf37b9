"""Which process made a resource, and whether that process still runs.

Helper containers and restore volumes carry their creator's identity in a label
so that ``gc`` can tell an orphan (its creator died, e.g. SIGKILL mid-restore)
from a resource a live docksnap is using right now. A pid alone is not enough:
pids are reused, so the identity also holds the kernel's boot id and the
process's start time.
"""

from __future__ import annotations

import os
from functools import cache

_BOOT_ID = "/proc/sys/kernel/random/boot_id"


@cache
def boot_id() -> str:
    """This boot of this machine; ``""`` where the kernel does not say."""
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def creator_id() -> str:
    """``boot-id/pid/start-ticks`` of this process."""
    pid = os.getpid()
    return f"{boot_id()}/{pid}/{_start_ticks(pid) or ''}"


def creator_alive(identity: str) -> bool | None:
    """Whether the process ``identity`` names still runs; None when this host cannot tell.

    None for another machine (or an earlier boot, whose processes are all gone
    but which a remote engine's host could share an id format with) and for a
    malformed identity; callers then fall back on the resource's age.
    """
    boot, _, rest = identity.partition("/")
    pid_text, _, ticks = rest.partition("/")
    if not boot or boot != boot_id() or not pid_text.isdigit() or not ticks:
        return None
    return _start_ticks(int(pid_text)) == ticks

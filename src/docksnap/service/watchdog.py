"""The pause watchdog: ``python -P .../watchdog.py URL DIR CONTAINER TOKEN PID``.

Started by :class:`docksnap.service.pause.Watchdog` before a pause is sent.
It blocks reading stdin, a pipe only its parent can write to, and does nothing
until that pipe closes. A parent that released its hold writes ``released``
first, and the watchdog just exits. Otherwise the parent died (or could not
release): the watchdog releases the hold ``TOKEN`` through the shared registry
in ``DIR``, which unpauses the container only if no other holder remains and
the pause was docksnap's, and exits.

Run as a file, not with ``-m``, and importing docksnap only when it has work:
its start-up then costs a bare interpreter's few milliseconds of CPU. Imported
at start-up, docksnap's modules took 0.3-0.5 s of CPU from the snapshot
reading a paused container, on a busy 2-core machine. ``-P`` keeps this
file's directory off ``sys.path``.
"""

from __future__ import annotations

import os
import signal
import sys

_ENGINE_RETRY_S = 30.0


ARMED = b"armed"
RELEASED = b"released"


async def _release(engine_url: str, directory: str, container_id: str, token: str) -> str:
    import asyncio
    import time
    from pathlib import Path

    from docksnap.docker import DockerClient
    from docksnap.errors import DockerUnavailableError
    from docksnap.service.pause import PauseRegistry

    registry = PauseRegistry(Path(directory))
    deadline = time.monotonic() + _ENGINE_RETRY_S
    docker = DockerClient(engine_url)
    try:
        while True:
            try:
                outcome = await registry.release(docker, container_id, token)
                return outcome.value
            except DockerUnavailableError:
                # The record keeps the token: a later docksnap command recovers it.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await docker.aclose()


def main(argv: list[str]) -> int:
    engine_url, directory, container_id, token, parent = argv
    # Terminal signals are for docksnap; its own cleanup releases the hold.
    for signo in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(signo, signal.SIG_IGN)
    try:
        os.write(1, ARMED)
        os.close(1)
    except OSError:
        pass  # the parent is already gone: all the more reason to go on
    said = b""
    while piece := os.read(0, 4096):
        said += piece[: len(RELEASED) + 1]
    if said == RELEASED:
        return 0
    import asyncio

    outcome = asyncio.run(_release(engine_url, directory, container_id, token))
    if outcome == "unpaused":
        # stderr is the parent's: the user who ran docksnap sees why it happened.
        sys.stderr.write(
            f"docksnap: warning: unpaused container {container_id[:12]}: "
            f"docksnap process {parent} paused it and ended without unpausing\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

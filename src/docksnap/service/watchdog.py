"""The pause watchdog: ``python -m docksnap.service.watchdog URL DIR CONTAINER TOKEN PID``.

Started by :class:`docksnap.service.pause.Watchdog` before a pause is sent.
It blocks reading stdin, a pipe only its parent can write to, and does nothing
until that pipe closes: when the parent ends normally (after releasing its hold)
or is killed. Then it releases the hold ``TOKEN`` through the shared registry in
``DIR``, which unpauses the container only if no other holder remains and the
pause was docksnap's, and exits. A release the parent already did is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

_ENGINE_RETRY_S = 30.0


async def _release(engine_url: str, directory: Path, container_id: str, token: str) -> str:
    from docksnap.docker import DockerClient
    from docksnap.errors import DockerUnavailableError
    from docksnap.service.pause import PauseRegistry

    registry = PauseRegistry(directory)
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
    while os.read(0, 4096):
        pass
    outcome = asyncio.run(_release(engine_url, Path(directory), container_id, token))
    if outcome == "unpaused":
        # stderr is the parent's: the user who ran docksnap sees why it happened.
        sys.stderr.write(
            f"docksnap: warning: unpaused container {container_id[:12]}: "
            f"docksnap process {parent} paused it and ended without unpausing\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

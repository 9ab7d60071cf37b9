"""What every handler shares: the client, the authenticator, the stats history."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

from starlette.requests import Request

from docksnap.http.auth import Authenticator
from docksnap.http.history import StatsHistory
from docksnap.service.client import Client


@dataclass(slots=True)
class Runtime:
    """The server's state while it runs; built by the app's lifespan."""

    client: Client
    auth: Authenticator
    history: StatsHistory
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def changed(self) -> None:
        """The store's totals changed: sample them in the background for the chart."""
        task = asyncio.get_running_loop().create_task(self.history.sample(self.client))
        self._pending.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Let pending samples finish (at shutdown, before the client closes)."""
        if self._pending:
            await asyncio.wait(set(self._pending))


def runtime(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)

"""What every handler shares: the client, the authenticator, the stats history."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
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
    _sampler: asyncio.Task[None] | None = None
    _again: bool = False

    def changed(self) -> None:
        """The store's totals changed: sample them in the background for the chart.

        Totals can be costly (a listing of the store), so changes coalesce: one
        sample runs at a time, and any number of changes during it cause one more.
        """
        if self._sampler is not None and not self._sampler.done():
            self._again = True
            return
        self._sampler = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self._again = False
            await self.history.sample(self.client)
            if not self._again:
                return

    async def drain(self) -> None:
        """Let a pending sample finish (at shutdown, before the client closes)."""
        if self._sampler is not None:
            await asyncio.wait({self._sampler})


def runtime(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)

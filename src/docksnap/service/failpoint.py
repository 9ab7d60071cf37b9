"""Named stopping points on the snapshot path, for crash tests only.

Tests must kill a real ``docksnap snapshot`` process at exact moments (the
pause sent, the archive half read, the store still writing) and interleave two
snapshots deterministically. Timing-based kills cannot hit those moments
reliably on a loaded machine, so the code marks them by name.

``DOCKSNAP_TEST_FAILPOINT=NAME=PATH`` (read on every call, so tests can set it
in-process) makes the first caller that reaches ``NAME`` create ``PATH`` and wait
until ``PATH`` is removed; a caller that finds ``PATH`` already there passes on,
so a second snapshot is not held by the first one's point. Unset (always, in
production) a point costs one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import os

ENV = "DOCKSNAP_TEST_FAILPOINT"


async def failpoint(name: str) -> None:
    """Stop here while the test holds the point called ``name``."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, path = spec.partition("=")
    if wanted != name or not path:
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    # Polled (not an Event): the test that releases the point is another process.
    while await asyncio.to_thread(os.path.exists, path):  # noqa: ASYNC110
        await asyncio.sleep(0.01)

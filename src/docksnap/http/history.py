"""Store totals over time, for the dashboard's chart of logical vs stored bytes.

No store keeps its own history, so the server samples the totals when it
starts and after every operation that changes them, and appends each sample
to a JSON-lines file in its state directory (one file per store URL). Memory
holds the last :data:`KEEP` samples; the file is rewritten to that length when
it grows past twice as many.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from docksnap.service.client import Client

log = logging.getLogger(__name__)
KEEP = 2000


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "docksnap"


class StatsHistory:
    """Samples of ``{time, snapshots, logical_bytes, stored_bytes}``, oldest first."""

    def __init__(self, state_dir: Path, store_url: str) -> None:
        digest = hashlib.sha256(store_url.encode()).hexdigest()[:16]
        self._path = state_dir / f"stats-{digest}.jsonl"
        self._samples: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._lines = 0
        self._lock = asyncio.Lock()
        self._load()

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for line in self._path.read_text().splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    sample = json.loads(line)
                    self._samples.append({k: sample[k] for k in _KEYS})
                    self._lines += 1

    def samples(self) -> list[dict[str, Any]]:
        return list(self._samples)

    async def sample(self, client: Client) -> None:
        """Record the store's totals now; a failure is logged, never raised."""
        try:
            totals = await client.snapshots.stats()
        except Exception:
            log.warning("could not sample the store's totals", exc_info=True)
            return
        sample = {
            "time": time.time(),
            "snapshots": totals.snapshots,
            "logical_bytes": totals.logical_bytes,
            "stored_bytes": totals.stored_bytes,
        }
        async with self._lock:
            self._samples.append(sample)
            await asyncio.to_thread(self._append, sample)

    def _append(self, sample: dict[str, Any]) -> None:
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._lines >= 2 * KEEP:
                temp = self._path.with_suffix(".tmp")
                temp.write_text("".join(json.dumps(s) + "\n" for s in self._samples))
                os.replace(temp, self._path)
                self._lines = len(self._samples)
                return
            with self._path.open("a") as out:
                out.write(json.dumps(sample) + "\n")
            self._lines += 1
        except OSError:
            log.warning("could not write %s", self._path, exc_info=True)


_KEYS = ("time", "snapshots", "logical_bytes", "stored_bytes")

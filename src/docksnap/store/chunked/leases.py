"""Leases: who is writing to the store right now, so gc can keep what they may use.

A writer (a save) holds ``leases/<uuid>`` for as long as it runs: created before
it loads the chunk index, refreshed (``put``, which moves the object's mtime)
every ``ttl / 4`` seconds by a timer thread, deleted when the save ends. gc
counts a lease as live while its mtime is within ``ttl`` of the store's clock,
unless its holder is a process on this host that no longer exists, so a writer
killed with SIGKILL stops protecting anything after ``ttl`` (one host: at once).

A writer whose refreshes failed for longer than ``ttl / 2`` must not commit: gc
may already count it as dead (:meth:`Lease.check`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Final

import msgspec

from docksnap.errors import StoreError
from docksnap.store.objects import ObjectInfo, ObjectNotFoundError, ObjectStore

LEASES: Final = "leases/"
DEFAULT_TTL: Final = 60.0

log = logging.getLogger(__name__)


class LeaseRecord(msgspec.Struct, frozen=True):
    """The ``leases/<uuid>`` object, JSON."""

    host: str
    pid: int
    kind: str


class Lease:
    """A lease this process holds. Use as a context manager around the work."""

    def __init__(self, objects: ObjectStore, kind: str, *, ttl: float = DEFAULT_TTL) -> None:
        self._objects = objects
        self.key = f"{LEASES}{uuid.uuid4()}"
        self._ttl = ttl
        self._record = msgspec.json.encode(
            LeaseRecord(host=socket.gethostname(), pid=os.getpid(), kind=kind)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = 0.0

    def __enter__(self) -> Lease:
        self._objects.put(self.key, self._record)
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._refresh, name="docksnap-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def check(self) -> None:
        """Raise StoreError if the lease may have expired in gc's eyes (refreshes failed)."""
        if time.monotonic() - self._last_ok > self._ttl / 2:
            raise StoreError(
                self._objects.url,
                f"lost the write lease {self.key} (not refreshed for over {self._ttl / 2:.0f} s); "
                "nothing committed",
            )

    def release(self) -> None:
        """Stop refreshing and delete the lease; idempotent, never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._objects.delete(self.key)
        except StoreError:
            log.warning("could not delete lease %s; it expires on its own", self.key)

    def _refresh(self) -> None:
        while not self._stop.wait(self._ttl / 4):
            try:
                self._objects.put(self.key, self._record)
                self._last_ok = time.monotonic()
            except StoreError:
                log.warning("could not refresh lease %s", self.key, exc_info=True)


def live_leases(objects: ObjectStore, now: float, ttl: float = DEFAULT_TTL) -> frozenset[str]:
    """Keys of the leases that may still be held, judged at store time ``now``."""
    return frozenset(info.key for info in objects.list(LEASES) if _live(objects, info, now, ttl))


def still_live(
    objects: ObjectStore, keys: Iterable[str], now: float, ttl: float = DEFAULT_TTL
) -> bool:
    """Whether any of ``keys`` is a live lease now."""
    wanted = set(keys)
    if not wanted:
        return False
    return any(
        info.key in wanted and _live(objects, info, now, ttl) for info in objects.list(LEASES)
    )


def _live(objects: ObjectStore, info: ObjectInfo, now: float, ttl: float) -> bool:
    if info.mtime < now - ttl:
        return False
    try:
        record = msgspec.json.decode(objects.get(info.key), type=LeaseRecord)
    except ObjectNotFoundError:
        return False
    except msgspec.DecodeError:
        return True  # unreadable: trust the clock alone
    # A holder that died on this host needs no waiting for the clock.
    return record.host != socket.gethostname() or _process_exists(record.pid)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Store faults a real disk or S3 server will not produce on demand (tests only).

Two seams, both at the :class:`~docksnap.store.objects.ObjectStore` contract, so
they hold whatever the chunked store's format does above them:

* :class:`FaultyObjectStore` wraps any ObjectStore (here the real local one) and
  fails chosen methods as that backend reports a full or failing disk: a
  :class:`StoreError` naming the operation, key and ``strerror``, exactly what
  ``LocalObjectStore`` raises for ``ENOSPC``/``EIO``. ``slow`` delays every call.
* :class:`FaultyTransport` wraps the real S3 transport under the real
  :class:`~docksnap.store.s3.S3ObjectStore`, answering chosen requests with
  ``503 SlowDown`` or a connection reset, so the store's own retry policy runs
  against them and talks to the real server when the fault is lifted.
"""

from __future__ import annotations

import builtins
import errno
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from docksnap.errors import StoreError
from docksnap.store.objects import ObjectInfo, ObjectStore
from docksnap.store.objects.s3.transport import FailureKind, S3Failure, Transport

WRITES = frozenset({"put", "put_if_absent", "delete"})
READS = frozenset({"get", "get_range", "exists", "list"})
EVERYTHING = WRITES | READS

_ERRNO = {"enospc": errno.ENOSPC, "eio": errno.EIO}


@dataclass(frozen=True, slots=True)
class _Armed:
    fault: str
    methods: frozenset[str]
    after: int  # calls to let through first
    times: int | None  # how many calls fail (None: every one after ``after``)


class _Trigger:
    """Which calls fail: armed faults, counted across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: _Armed | None = None
        self._seen = 0
        self.fired = 0

    def arm(
        self, fault: str, methods: Iterable[str], *, after: int = 0, times: int | None = None
    ) -> None:
        with self._lock:
            self._armed = _Armed(fault, frozenset(methods), after, times)
            self._seen = 0
            self.fired = 0

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def check(self, method: str) -> str | None:
        """The fault this call gets, or None."""
        with self._lock:
            armed = self._armed
            if armed is None or method not in armed.methods:
                return None
            self._seen += 1
            if self._seen <= armed.after:
                return None
            if armed.times is not None and self.fired >= armed.times:
                return None
            self.fired += 1
            return armed.fault


class FaultyObjectStore(_Trigger):
    """An ObjectStore that forwards to ``inner`` unless a fault is armed for the method."""

    SLOW_SECONDS = 0.02

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__()
        self._inner = inner

    @property
    def url(self) -> str:
        return self._inner.url

    def _gate(self, method: str, key: str) -> None:
        fault = self.check(method)
        if fault is None:
            return
        if fault == "slow":
            time.sleep(self.SLOW_SECONDS)
            return
        code = _ERRNO[fault]
        # What LocalObjectStore._error reports for an OSError with this errno.
        raise StoreError(self.url, f"{method} {key!r} failed: {os.strerror(code)}")

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._gate("put", key)
        self._inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self._gate("put_if_absent", key)
        return self._inner.put_if_absent(key, data)

    def exists(self, key: str) -> bool:
        self._gate("exists", key)
        return self._inner.exists(key)

    def get(self, key: str) -> bytes:
        self._gate("get", key)
        return self._inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._gate("get_range", key)
        return self._inner.get_range(key, start, length)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._gate("list", prefix)
        return self._inner.list(prefix)

    def delete(self, key: str) -> None:
        self._gate("delete", key)
        self._inner.delete(key)

    def close(self) -> None:
        self._inner.close()


class FaultyTransport(_Trigger):
    """An S3 :class:`Transport` answering armed requests with SlowDown or a reset."""

    def __init__(self, inner: Transport) -> None:
        super().__init__()
        self._inner = inner

    def _gate(self, method: str) -> None:
        fault = self.check(method)
        if fault == "slowdown":
            raise S3Failure(
                FailureKind.TRANSIENT,
                "Please reduce your request rate.",
                status=503,
                code="SlowDown",
            )
        if fault == "reset":
            raise S3Failure(FailureKind.TRANSIENT, "connection reset by peer")

    def check_bucket(self) -> None:
        self._inner.check_bucket()

    def put(self, key: str, data: bytes | memoryview, *, create: bool) -> None:
        self._gate("put_if_absent" if create else "put")
        self._inner.put(key, data, create=create)

    def get(self, key: str) -> bytes:
        self._gate("get")
        return self._inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._gate("get_range")
        return self._inner.get_range(key, start, length)

    def head(self, key: str) -> ObjectInfo:
        self._gate("exists")
        return self._inner.head(key)

    def list(self, directory: str, after: str | None) -> Iterator[builtins.list[ObjectInfo]]:
        self._gate("list")
        return self._inner.list(directory, after)

    def delete(self, key: str) -> None:
        self._gate("delete")
        self._inner.delete(key)

    def close(self) -> None:
        self._inner.close()

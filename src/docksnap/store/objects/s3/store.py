"""An :class:`~docksnap.store.objects.ObjectStore` on an S3-compatible bucket.

Keys map to ``<prefix>/<key>`` in one bucket. Every write is a single-part PUT,
which S3 and its clones apply atomically; the commit point of the chunked store
(``put_if_absent`` of a manifest) is a PUT with ``If-None-Match: *``, so of two
hosts saving into one bucket exactly one creates a given key.

Failures are sorted once, here (see :class:`~docksnap.store.objects.s3.transport.FailureKind`):

* transient (5xx, 429/SlowDown, 409 conflict, reset, timeout): retried with
  capped exponential backoff and jitter (:class:`RetryPolicy`); still failing
  after the last attempt → :class:`~docksnap.errors.StoreUnavailableError`;
* missing object → :class:`~docksnap.store.objects.ObjectNotFoundError`;
* anything else (403, 401, missing bucket, other 4xx) → :class:`StoreError` at
  once, naming the store, the operation and the key, with a hint at the fix.
"""

from __future__ import annotations

import builtins
import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from docksnap.errors import InvalidArgumentError, StoreError, StoreUnavailableError
from docksnap.store.objects import ObjectInfo, ObjectNotFoundError, check_key, check_prefix
from docksnap.store.objects.s3.config import RetryPolicy, S3Config
from docksnap.store.objects.s3.transport import FailureKind, ObstoreTransport, S3Failure, Transport

_T = TypeVar("_T")

# Written and removed by the conditional-write check. The leading dot keeps it out
# of every key space the stores use (their keys never start with '.').
_PROBE_PREFIX = ".docksnap-probe/"


class S3ObjectStore:
    """Objects in an S3 bucket under a prefix. Thread-safe.

    At most ``config.max_connections`` requests are in flight at once, whatever
    the number of calling threads. The first call checks that the bucket exists
    and the credentials work, so a misconfiguration fails on the first operation
    with a message that says what to fix; the first ``put_if_absent`` also checks
    that the server honours ``If-None-Match: *`` (some S3 clones ignore it, which
    would let two hosts overwrite each other's snapshots).
    """

    def __init__(
        self,
        config: S3Config,
        *,
        transport: Transport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``transport`` and ``sleep`` replace the real ones in tests (no server, no waits)."""
        self._config = config
        self._transport = transport if transport is not None else ObstoreTransport(config)
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._ready_lock = threading.Lock()
        self._bucket_checked = False
        self._conditional_checked = not config.check_conditional_writes
        self._sleep = sleep
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> S3ObjectStore:
        """``s3://BUCKET[/PREFIX][?endpoint=…&region=…]``; see :mod:`.config`."""
        return cls(S3Config.from_url(url, env))

    @property
    def url(self) -> str:
        return self._config.url

    @property
    def config(self) -> S3Config:
        return self._config

    # --- ObjectStore ------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Write ``key`` with one single-part PUT, replacing any object there.

        Atomic (S3 never shows a partial object) and idempotent, so transient
        faults are retried; permanent ones raise :class:`StoreError` at once.
        """
        check_key(key)
        self._call("put", key, lambda: self._transport.put(key, data, create=False))

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Create ``key`` with ``If-None-Match: *``; True if this call created it.

        Atomic and race-free on the server: of concurrent creators exactly one
        gets a 2xx, the others 412 (False). Transient faults are retried. When a
        retry meets 412 after an attempt whose outcome is unknown (a timeout or
        reset after the body was sent), the earlier attempt may have created the
        object: the stored bytes are compared with ``data``, and equal bytes
        count as this call's creation.
        """
        check_key(key)
        self._ensure_bucket("put_if_absent", key)
        self._check_conditional_writes()
        ambiguous = False

        def attempt() -> bool:
            nonlocal ambiguous
            try:
                self._transport.put(key, data, create=True)
            except S3Failure as failure:
                if failure.kind is FailureKind.EXISTS:
                    return False
                ambiguous = ambiguous or failure.transient
                raise
            return True

        created = self._call("put_if_absent", key, attempt)
        if not created and ambiguous:
            return self._holds(key, data)
        return created

    def exists(self, key: str) -> bool:
        """HEAD ``key``. Read-only and idempotent; transient faults are retried."""
        check_key(key)
        try:
            self._call("exists", key, lambda: self._transport.head(key))
        except ObjectNotFoundError:
            return False
        return True

    def get(self, key: str) -> bytes:
        """The whole object; :class:`ObjectNotFoundError` if absent. Idempotent, retried."""
        check_key(key)
        return self._call("get", key, lambda: self._transport.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; a range past the object's end is a StoreError."""
        check_key(key)
        if start < 0 or length < 0:
            raise InvalidArgumentError(f"invalid range start={start} length={length}")
        if length == 0:
            return b""
        data = self._call("get_range", key, lambda: self._transport.get_range(key, start, length))
        if len(data) != length:
            raise StoreError(
                self.url, f"get_range {key}: range {start}+{length} runs past the object's end"
            )
        return data

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, each once, in key order.

        Pages are fetched lazily. A transient fault is retried by resuming after
        the last key listed, so no key is repeated or skipped; the retry budget
        is renewed whenever a page arrives.
        """
        check_prefix(prefix)
        self._ensure_bucket("list", prefix)
        # S3 lists by string prefix, but obstore by whole path segments: list the
        # segment that holds the prefix and filter (e.g. "locks/gc" lists "locks/").
        directory = prefix.rpartition("/")[0]
        after: str | None = None
        failures = 0
        while True:
            try:
                for page in self._pages(directory, after):
                    failures = 0
                    for info in page:
                        after = info.key
                        if info.key.startswith(prefix) and not _is_probe(info.key):
                            yield info
                return
            except S3Failure as failure:
                failures += 1
                self._give_up_unless_transient("list", prefix, failure, failures)
            self._sleep(self._backoff(failures))

    def _pages(self, directory: str, after: str | None) -> Iterator[builtins.list[ObjectInfo]]:
        """The transport's pages, each fetched holding a connection slot (released
        before the page is handed on, so a slow consumer blocks no other request)."""
        pages = iter(self._transport.list(directory, after))
        while True:
            with self._slots:
                page = next(pages, None)
            if page is None:
                return
            yield page

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is success. Idempotent, so retried."""
        check_key(key)
        self._call("delete", key, lambda: self._transport.delete(key))

    def close(self) -> None:
        """Release the transport; idempotent."""
        self._transport.close()

    # --- retries and errors -------------------------------------------------------------

    def _call(self, op: str, key: str, request: Callable[[], _T]) -> _T:
        """Run ``request`` under the retry policy, bounded by the connection slots."""
        self._ensure_bucket(op, key)
        return self._retrying(op, key, request)

    def _retrying(self, op: str, key: str, request: Callable[[], _T]) -> _T:
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._slots:
                    return request()
            except S3Failure as failure:
                self._give_up_unless_transient(op, key, failure, attempt)
            self._sleep(self._backoff(attempt))

    def _give_up_unless_transient(
        self, op: str, key: str, failure: S3Failure, attempt: int
    ) -> None:
        """Raise the caller's error unless ``failure`` is transient and attempts remain."""
        if not failure.transient:
            raise self._error(op, key, failure) from failure
        if attempt >= self._config.retry.attempts:
            raise self._unavailable(op, key, failure, attempt) from failure

    def _backoff(self, retry: int) -> float:
        ceiling = self._config.retry.ceiling(retry)
        return self._random.uniform(ceiling / 2, ceiling)

    def _error(self, op: str, key: str, failure: S3Failure) -> StoreError:
        where = f"{op} {key}" if key else op
        if failure.kind is FailureKind.NOT_FOUND:
            return ObjectNotFoundError(self.url, f"{where}: no such object")
        return StoreError(self.url, f"{where}: {_explain(failure, self._config)}")

    def _unavailable(self, op: str, key: str, failure: S3Failure, attempts: int) -> StoreError:
        where = f"{op} {key}" if key else op
        return StoreUnavailableError(
            self.url,
            f"{where}: {self._config.where} still failing after {attempts} attempts: "
            f"{_status_text(failure)}{failure.detail}",
        )

    # --- first-use checks ------------------------------------------------------------------

    def _ensure_bucket(self, op: str, key: str) -> None:
        """Once per store: the bucket exists and the credentials are accepted.

        A failure is reported as a failure of the operation that needed the bucket
        (``op`` ``key``), which is what the caller was trying to do.
        """
        if self._bucket_checked:
            return
        with self._ready_lock:
            if not self._bucket_checked:
                self._retrying(op, key, self._transport.check_bucket)
                self._bucket_checked = True

    def _check_conditional_writes(self) -> None:
        """Once per store: a second create of one key must fail with 412.

        Servers that ignore ``If-None-Match`` (old MinIO, some gateways) would turn
        every commit into a blind overwrite; refuse to write to them instead.
        """
        if self._conditional_checked:
            return
        with self._ready_lock:
            if self._conditional_checked:
                return
            probe = f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
            try:
                first = self._try_create(probe)
                second = self._try_create(probe)
            finally:
                with contextlib.suppress(StoreError):
                    self._retrying("delete", probe, lambda: self._transport.delete(probe))
            if first and second:
                raise StoreError(
                    self.url,
                    f"{self._config.where} ignores conditional writes (If-None-Match: *): "
                    "two hosts could overwrite each other's snapshots, so docksnap will not "
                    "write here",
                )
            self._conditional_checked = True

    def _try_create(self, key: str) -> bool:
        def attempt() -> bool:
            try:
                self._transport.put(key, b"probe", create=True)
            except S3Failure as failure:
                if failure.kind is FailureKind.EXISTS:
                    return False
                raise
            return True

        return self._retrying("check conditional writes", key, attempt)

    def _holds(self, key: str, data: bytes | memoryview) -> bool:
        try:
            stored = self._retrying("get", key, lambda: self._transport.get(key))
        except ObjectNotFoundError:
            return False
        return stored == bytes(data)


def _status_text(failure: S3Failure) -> str:
    if failure.status is None:
        return ""
    return f"{failure.status} {failure.code}: " if failure.code else f"{failure.status}: "


def _explain(failure: S3Failure, config: S3Config) -> str:
    """A permanent failure in words, with what to check."""
    status = f"{failure.status} {failure.code}" if failure.code else str(failure.status)
    code = failure.code
    if failure.kind is FailureKind.NO_BUCKET:
        return f"bucket {config.bucket!r} does not exist ({status}) — create it first"
    if failure.kind is FailureKind.DENIED:
        return f"access denied ({status}) — {_denied_hint(code)}"
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraint"):
        return (
            f"wrong region ({status}): the bucket is not in {config.region!r} — "
            "set AWS_REGION or ?region="
        )
    return f"request refused ({status}): {failure.detail}"


def _denied_hint(code: str | None) -> str:
    hints = {
        "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
        "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
        "InvalidToken": "check AWS_SESSION_TOKEN",
        "ExpiredToken": "the session token expired; refresh AWS_SESSION_TOKEN",
        "RequestTimeTooSkewed": "this host's clock is off; sync it (NTP)",
        "AccessDenied": "the credentials lack permission on this bucket or prefix",
    }
    return hints.get(code or "", "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


def _is_probe(key: str) -> bool:
    return key.startswith(_PROBE_PREFIX)


__all__ = ["RetryPolicy", "S3Config", "S3ObjectStore"]

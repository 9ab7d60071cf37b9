"""One S3 request each, no retries: the seam between the store's policy and the wire.

:class:`Transport` is what :class:`~docksnap.store.objects.s3.S3ObjectStore` needs from an
S3 client. Every failure comes out as an :class:`S3Failure` that says what kind
of failure it is (transient, missing, denied …), so the retry policy and the
error messages live in one place above this seam, and tests can script any
status sequence with a fake transport.

:class:`ObstoreTransport` is the real one. obstore (Rust ``object_store``) was
chosen over boto3 by measurement: see docs/S3.md. Its own retries are turned off
(``max_retries=0``) so that a request is retried by exactly one policy.
"""

from __future__ import annotations

import builtins
import enum
import importlib
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from docksnap.errors import InvalidArgumentError
from docksnap.store.objects import ObjectInfo
from docksnap.store.objects.s3.config import S3Config

if TYPE_CHECKING:
    from obstore.store import ClientConfig
    from obstore.store import S3Config as ObstoreS3Config


class FailureKind(enum.Enum):
    """What a failed request means for the caller."""

    NOT_FOUND = "not found"  # 404 on an object: a fact, not a fault
    EXISTS = "exists"  # 412 on a conditional create: someone else created it
    TRANSIENT = "transient"  # 5xx, 429, 409 conflict, resets, timeouts: worth a retry
    DENIED = "denied"  # 401/403: credentials or permissions; retrying cannot help
    NO_BUCKET = "no bucket"  # 404 NoSuchBucket
    PERMANENT = "permanent"  # any other 4xx, or a request we built wrong


class S3Failure(Exception):
    """One failed request: its kind, HTTP status and S3 error code when known."""

    def __init__(
        self, kind: FailureKind, detail: str, *, status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.code = code

    @property
    def transient(self) -> bool:
        return self.kind is FailureKind.TRANSIENT


class Transport(Protocol):
    """Single S3 requests on keys relative to the store's prefix. Thread-safe.

    Every method raises :class:`S3Failure` and nothing else for request failures.
    """

    def check_bucket(self) -> None:
        """One cheap request that fails if the bucket is missing or access is denied."""
        ...

    def put(self, key: str, data: bytes | memoryview, *, create: bool) -> None:
        """A single-part PUT; ``create`` adds ``If-None-Match: *`` (EXISTS on 412)."""
        ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``start`` (S3 returns fewer at the object's end)."""
        ...

    def head(self, key: str) -> ObjectInfo: ...

    def list(self, directory: str, after: str | None) -> Iterator[builtins.list[ObjectInfo]]:
        """Pages of the objects under ``directory`` (``""`` or ``a/b``), in key order,
        starting after key ``after``. May raise between pages."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; succeeds when it is already gone."""
        ...

    def close(self) -> None: ...


# --- failure classification -------------------------------------------------------------

_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
# S3 sends these codes with a 4xx status, but they mean "try again".
_TRANSIENT_CODES = frozenset({"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException"})


def classify(exc: Exception, *, create: bool = False) -> S3Failure:
    """Turn an obstore exception into an :class:`S3Failure`.

    obstore reports the HTTP status and S3's XML error body only in the message
    text, so the status is read from there; the exception class alone is not
    enough (with ``mode="create"`` both 409 and 412 arrive as AlreadyExistsError).
    """
    text = str(exc)
    detail = text.split("\n\nDebug source:", 1)[0].strip()
    match = _STATUS.search(text)
    status = int(match.group(1)) if match else None
    code_match = _CODE.search(text)
    code = code_match.group(1) if code_match else None
    kind = _kind(exc, status, code, create)
    return S3Failure(kind, detail, status=status, code=code)


def _kind(exc: Exception, status: int | None, code: str | None, create: bool) -> FailureKind:
    if code in _TRANSIENT_CODES:
        return FailureKind.TRANSIENT
    if status is None:
        return _kind_without_status(exc)
    if status == 412 and create:
        return FailureKind.EXISTS
    if status == 404:
        return FailureKind.NO_BUCKET if code == "NoSuchBucket" else FailureKind.NOT_FOUND
    if status in (401, 403):
        return FailureKind.DENIED
    # 409 ConditionalRequestConflict: a concurrent operation raced ours; AWS says retry.
    if status >= 500 or status in (408, 409, 429):
        return FailureKind.TRANSIENT
    return FailureKind.PERMANENT


def _kind_without_status(exc: Exception) -> FailureKind:
    """No HTTP status means the exchange itself failed (reset, refused, timeout)."""
    if isinstance(exc, FileNotFoundError):
        return FailureKind.NOT_FOUND
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return FailureKind.DENIED
    if isinstance(exc, PreconditionError | AlreadyExistsError):
        return FailureKind.EXISTS
    if isinstance(exc, BaseError | OSError | TimeoutError):
        return FailureKind.TRANSIENT
    return FailureKind.PERMANENT


# --- obstore ------------------------------------------------------------------------------


class ObstoreTransport:
    """:class:`Transport` over ``obstore.store.S3Store``: blocking calls that release
    the GIL while Rust does the HTTP, so many threads can have requests in flight."""

    def __init__(self, config: S3Config) -> None:
        self._store = S3Store(
            config.bucket,
            prefix=config.prefix or None,
            config=_store_config(config),
            client_options=_client_options(config),
            # One retry policy, ours, above this seam: see the module docstring.
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=config.timeout)},
            credential_provider=_profile_provider(config),
        )

    def check_bucket(self) -> None:
        try:
            for _page in obstore.list(self._store, chunk_size=1):
                break
        except Exception as exc:
            raise classify(exc) from exc

    def put(self, key: str, data: bytes | memoryview, *, create: bool) -> None:
        try:
            # Never multipart: Ceph ignores If-None-Match on CompleteMultipartUpload,
            # and a single PUT is atomic everywhere.
            obstore.put(
                self._store,
                key,
                data,
                mode="create" if create else "overwrite",
                use_multipart=False,
            )
        except Exception as exc:
            raise classify(exc, create=create) from exc

    def get(self, key: str) -> bytes:
        try:
            return obstore.get(self._store, key).bytes().to_bytes()
        except Exception as exc:
            raise classify(exc) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            return obstore.get_range(self._store, key, start=start, length=length).to_bytes()
        except Exception as exc:
            raise classify(exc) from exc

    def head(self, key: str) -> ObjectInfo:
        try:
            meta = obstore.head(self._store, key)
        except Exception as exc:
            raise classify(exc) from exc
        return _info(meta)

    def list(self, directory: str, after: str | None) -> Iterator[builtins.list[ObjectInfo]]:
        try:
            stream = obstore.list(
                self._store, prefix=directory or None, offset=after, chunk_size=1000
            )
            for page in stream:
                yield [_info(meta) for meta in page]
        except Exception as exc:
            raise classify(exc) from exc

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except FileNotFoundError as exc:
            failure = classify(exc)
            if failure.kind is not FailureKind.NOT_FOUND:
                raise failure from exc
        except Exception as exc:
            raise classify(exc) from exc

    def close(self) -> None:
        """obstore frees its connection pool when the store is garbage-collected."""


def _info(meta: Any) -> ObjectInfo:
    return ObjectInfo(
        key=str(meta["path"]), size=int(meta["size"]), mtime=meta["last_modified"].timestamp()
    )


def _store_config(config: S3Config) -> ObstoreS3Config:
    settings: ObstoreS3Config = {"region": config.region}
    if config.endpoint is not None:
        # S3-compatible servers (Ceph RGW, MinIO) are addressed by path, not by a
        # bucket subdomain that local DNS cannot resolve.
        settings["endpoint"] = config.endpoint
        settings["virtual_hosted_style_request"] = False
    if config.access_key_id and config.secret_access_key:
        settings["access_key_id"] = config.access_key_id
        settings["secret_access_key"] = config.secret_access_key
        if config.session_token:
            settings["session_token"] = config.session_token
    return settings


def _client_options(config: S3Config) -> ClientConfig:
    return {
        "allow_http": bool(config.endpoint and config.endpoint.startswith("http://")),
        "connect_timeout": timedelta(seconds=config.connect_timeout),
        "timeout": timedelta(seconds=config.timeout),
        "pool_max_idle_per_host": str(config.max_connections),
    }


def _profile_provider(config: S3Config) -> Any:
    """Credentials of a named profile (``~/.aws``), through boto3 when it is installed.

    Explicit keys win over a profile, as in the AWS SDKs.
    """
    if not config.profile or (config.access_key_id and config.secret_access_key):
        return None
    try:
        boto3 = importlib.import_module("boto3")
        provider = importlib.import_module("obstore.auth.boto3").Boto3CredentialProvider
    except ImportError as exc:
        raise InvalidArgumentError(
            f"AWS profile {config.profile!r} needs boto3 (pip install boto3); or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from exc
    return provider(boto3.Session(profile_name=config.profile))

"""Where an S3 store lives and how to reach it: parsed from a URL and the environment.

``s3://BUCKET[/PREFIX][?endpoint=URL&region=R&profile=P&max_connections=N&max_attempts=N]``

Settings come from the URL's query first, then from the standard AWS variables
(``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_DEFAULT_REGION``, ``AWS_PROFILE``). Credentials come only from the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``) or a profile, never from the URL: store URLs end up in
logs, error messages and shell history.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote, urlsplit

from docksnap.errors import InvalidArgumentError

DEFAULT_REGION = "us-east-1"

# Bucket names as S3 and its clones accept them (legacy us-east-1 names included).
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}")
_QUERY_KEYS = frozenset({"endpoint", "region", "profile", "max_connections", "max_attempts"})
_SECRET_KEYS = frozenset(
    {"access_key_id", "secret_access_key", "session_token", "aws_access_key_id", "secret"}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, for transient faults only.

    ``attempts`` counts the first try: 8 means up to 7 retries. The n-th retry
    waits a random time in ``[d/2, d]`` where ``d = min(max_delay, base_delay·2ⁿ⁻¹)``:
    the jitter spreads out clients that failed together (a server restart), the
    lower half-bound keeps the backoff real. The defaults give up after about
    10 s of waiting, long enough for a gateway restart or a throttling burst.
    """

    attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidArgumentError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise InvalidArgumentError(
                f"invalid retry delays base={self.base_delay} max={self.max_delay}"
            )

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1-based)."""
        return float(min(self.max_delay, self.base_delay * 2 ** (retry - 1)))


@dataclass(frozen=True, slots=True)
class S3Config:
    """Everything needed to open one bucket (and prefix) as an object store.

    ``endpoint`` selects an S3-compatible server (path-style addressing, and
    plain HTTP allowed only when it is an ``http://`` URL); ``None`` means AWS.
    ``timeout`` bounds one whole request (a stalled server is a transient fault
    once it expires); ``connect_timeout`` the TCP/TLS connect. Secrets are kept
    out of ``repr``.
    """

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = DEFAULT_REGION
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    max_connections: int = 32
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout: float = 5.0
    timeout: float = 60.0
    check_conditional_writes: bool = True

    def __post_init__(self) -> None:
        if not _BUCKET.fullmatch(self.bucket):
            raise InvalidArgumentError(f"invalid S3 bucket name {self.bucket!r}")
        object.__setattr__(self, "prefix", _normalize_prefix(self.prefix))
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", _check_endpoint(self.endpoint))
        if self.max_connections < 1:
            raise InvalidArgumentError(f"max_connections must be >= 1, got {self.max_connections}")

    @property
    def url(self) -> str:
        """``s3://bucket/prefix[?endpoint=…]``: names the store in messages and opens it
        again; holds no secret. The endpoint is part of it because the same bucket
        name on two servers is two stores (a copy between them must not be refused
        as a copy onto itself)."""
        base = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{base}?endpoint={self.endpoint}" if self.endpoint else base

    @property
    def where(self) -> str:
        """The server, for messages about reaching it."""
        return self.endpoint or f"AWS S3 ({self.region})"

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> S3Config:
        """Parse ``s3://BUCKET[/PREFIX]?…`` and fill the gaps from ``env`` (os.environ)."""
        env = os.environ if env is None else env
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidArgumentError(f"not an S3 store URL (s3://bucket[/prefix]): {url!r}")
        query = _parse_query(url, parts.query)
        config = cls(
            bucket=parts.netloc,
            prefix=unquote(parts.path),
            endpoint=query.get("endpoint") or _env_endpoint(env),
            region=query.get("region") or _env_region(env),
            profile=query.get("profile") or env.get("AWS_PROFILE") or None,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )
        return _apply_numbers(config, url, query)


def _parse_query(url: str, query: str) -> dict[str, str]:
    parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    secret = sorted(_SECRET_KEYS & parsed.keys())
    if secret:
        raise InvalidArgumentError(
            f"credentials do not belong in a store URL ({', '.join(secret)}): set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, instead"
        )
    unknown = sorted(parsed.keys() - _QUERY_KEYS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown parameter(s) {', '.join(unknown)} in {url!r}; "
            f"known: {', '.join(sorted(_QUERY_KEYS))}"
        )
    return {key: values[-1] for key, values in parsed.items()}


def _apply_numbers(config: S3Config, url: str, query: Mapping[str, str]) -> S3Config:
    if "max_connections" in query:
        config = replace(config, max_connections=_positive_int(url, query, "max_connections"))
    if "max_attempts" in query:
        attempts = _positive_int(url, query, "max_attempts")
        config = replace(config, retry=replace(config.retry, attempts=attempts))
    return config


def _positive_int(url: str, query: Mapping[str, str], name: str) -> int:
    text = query[name]
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer in {url!r}, got {text!r}")
    return int(text)


def _env_endpoint(env: Mapping[str, str]) -> str | None:
    # The S3-specific variable wins, as in the AWS SDKs and CLI.
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def _env_region(env: Mapping[str, str]) -> str:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def _normalize_prefix(prefix: str) -> str:
    """``/a/b/`` → ``a/b``; refuses components that are empty, ``.`` or ``..``."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    parts = stripped.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\x00" in stripped:
        raise InvalidArgumentError(f"invalid S3 key prefix {prefix!r}")
    return stripped


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgumentError(
            f"S3 endpoint must be an http:// or https:// URL, got {endpoint!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        raise InvalidArgumentError(
            f"S3 endpoint must be scheme://host[:port] only (no path, query or user): {endpoint!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"

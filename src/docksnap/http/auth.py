"""Who may call: one bearer token, and dashboard sessions derived from it.

Security reasoning, in one place:

- Every comparison of a secret goes through :func:`hmac.compare_digest`, so
  the time a wrong token takes to refuse says nothing about the right one.
- The dashboard never stores the token in the browser. Logging in sets a
  session cookie ``expiry.nonce.mac`` where ``mac`` is an HMAC of the rest
  under a key derived from the token: stateless, expiring, and void as soon as
  the token changes. The cookie is HttpOnly (no script reads it) and
  SameSite=Strict (no other site's page sends it).
- State-changing requests that authenticate with the cookie must also carry
  ``X-CSRF-Token``, an HMAC of the session cookie that only pages this server
  rendered contain, and must not come from another origin. Bearer requests need
  neither: a browser never adds an Authorization header by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from docksnap.errors import InvalidArgumentError

SESSION_COOKIE = "docksnap_session"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
TOKEN_ENV = "DOCKSNAP_API_TOKEN"  # noqa: S105 (a variable name, not a secret)
_MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True, slots=True)
class TokenSource:
    """The token and where it came from; ``created`` when this start made the file."""

    token: str
    origin: str
    created: bool = False


def default_token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "docksnap" / "api-token"


def load_token(path: Path, env: dict[str, str] | None = None) -> TokenSource:
    """The API token: ``DOCKSNAP_API_TOKEN``, else ``path``, created (mode 0600) if missing.

    A token file that others may read is refused, as ssh refuses such a key.
    """
    environ = os.environ if env is None else env
    given = environ.get(TOKEN_ENV, "")
    if given:
        _check_strength(given, TOKEN_ENV)
        return TokenSource(given, TOKEN_ENV)
    try:
        return TokenSource(_read_token_file(path), str(path))
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        # O_EXCL: two servers starting at once never overwrite each other's token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return TokenSource(_read_token_file(path), str(path))
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return TokenSource(token, str(path), created=True)


def _read_token_file(path: Path) -> str:
    with path.open() as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidArgumentError(
                f"API token file {path} is accessible by other users "
                f"(mode {stat.S_IMODE(mode):o}); run chmod 600 on it"
            )
        token = handle.read().strip()
    _check_strength(token, str(path))
    return token


def _check_strength(token: str, origin: str) -> None:
    if len(token) < _MIN_TOKEN_LENGTH:
        raise InvalidArgumentError(
            f"API token from {origin} is shorter than {_MIN_TOKEN_LENGTH} characters"
        )


class Authenticator:
    """Checks bearer tokens, and issues and checks dashboard sessions and CSRF tokens."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        # Separate keys per use, so a CSRF token can never pass as a session.
        self._session_key = hmac.digest(self._token, b"docksnap session", hashlib.sha256)
        self._csrf_key = hmac.digest(self._token, b"docksnap csrf", hashlib.sha256)

    def check_bearer(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (constant time)."""
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return self.check_token(given.strip())

    def check_token(self, given: str) -> bool:
        # compare_digest over bytes: its time depends on the lengths only, never
        # on where the first differing byte is.
        return hmac.compare_digest(given.encode(), self._token)

    def new_session(self, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + SESSION_SECONDS)
        body = f"{expiry}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac(self._session_key, body)}"

    def check_session(self, cookie: str | None, now: float | None = None) -> bool:
        if not cookie or cookie.count(".") != 2:
            return False
        body, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(self._session_key, body).encode()):
            return False
        expiry = body.partition(".")[0]
        return expiry.isdigit() and int(expiry) > (time.time() if now is None else now)

    def csrf_token(self, session: str) -> str:
        return self._mac(self._csrf_key, session)

    def check_csrf(self, session: str, given: str | None) -> bool:
        return hmac.compare_digest((given or "").encode(), self.csrf_token(session).encode())

    @staticmethod
    def _mac(key: bytes, body: str) -> str:
        return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()

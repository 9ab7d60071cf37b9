"""The ASGI middleware in front of everything: authentication, CSRF, body limits, headers.

It runs before any route, so no handler can forget a check. Order of checks:
public paths (the login page, static assets) pass; ``/v1`` needs a bearer
token or a dashboard session (plus, for state-changing requests, the CSRF
header and a same-origin request); other pages need a session, else they
redirect to the login form. Request bodies are read whole (up to
``max_body`` bytes, else 413) before the app sees them, except the streamed
import, whose body the handler reads piece by piece without any limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

from docksnap.http.auth import CSRF_HEADER, SESSION_COOKIE, Authenticator
from docksnap.http.problems import PROBLEM_JSON, http_problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 1 << 20
STREAMED_BODIES = {("POST", "/v1/snapshots/import")}
PUBLIC_PATHS = ("/login", "/favicon.ico", "/static/")
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

# Pages and API answers alike: no framing, no sniffing, no referrer to others, and only
# this server's own scripts and styles.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null"
    # on form posts, and the origin check below could not tell ours from others.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class Guard:
    def __init__(
        self, app: ASGIApp, auth: Authenticator, *, max_body: int = DEFAULT_MAX_BODY
    ) -> None:
        self.app = app
        self.auth = auth
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(send)
            return
        if (scope["method"], scope["path"]) not in STREAMED_BODIES:
            body = await _read_limited(receive, self.max_body)
            if body is None:
                await _problem(send, 413, f"request body over {self.max_body} bytes")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Callable[[Send], Awaitable[None]] | None:
        path: str = scope["path"]
        if path in PUBLIC_PATHS or path.startswith("/static/"):
            return None
        headers = _headers(scope)
        declared = headers.get("content-length", "0")
        if (scope["method"], path) not in STREAMED_BODIES and (
            not declared.isdigit() or int(declared) > self.max_body
        ):
            return lambda send: _problem(send, 413, f"request body over {self.max_body} bytes")
        api = path == "/v1" or path.startswith("/v1/")
        if api and "authorization" in headers:
            if self.auth.check_bearer(headers["authorization"]):
                return None
            return lambda send: _problem(send, 401, "wrong bearer token", challenge=True)
        session = _cookie(headers, SESSION_COOKIE)
        if session is None or not self.auth.check_session(session):
            if api:
                return lambda send: _problem(
                    send, 401, "a bearer token is required", challenge=True
                )
            return _redirect_to_login
        if scope["method"] not in _SAFE_METHODS and not self._same_site(headers, session):
            return lambda send: _problem(
                send, 403, "missing or wrong CSRF token, or foreign origin"
            )
        return None

    def _same_site(self, headers: dict[str, str], session: str) -> bool:
        # Two independent checks: the token proves the page came from us; the
        # Origin (sent by every current browser on POST) that the request did.
        origin = headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != headers.get("host"):
            return False
        given = headers.get(CSRF_HEADER)
        return self.auth.check_csrf(session, given)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _cookie(headers: dict[str, str], name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is the same as none
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


async def _read_limited(receive: Receive, limit: int) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            break
    return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # http.disconnect, when the client goes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return wrapped


async def _problem(send: Send, status: int, detail: str, *, challenge: bool = False) -> None:
    body = json.dumps(http_problem(status, detail)).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if challenge:
        headers.append((b"www-authenticate", b'Bearer realm="docksnap"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _redirect_to_login(send: Send) -> None:
    headers = [(b"location", b"/login"), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})

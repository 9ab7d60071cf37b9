"""A thin, typed, async client for the Docker Engine endpoints docksnap uses.

All traffic goes through :meth:`DockerClient._send`, the one place where httpx
is called and its exceptions are translated into docksnap's, except the archive
GET from a unix-socket engine, read off the socket by ``rawget.py`` (measured
there: httpx's per-frame overhead was most of the loop's CPU while the container
is paused). Nothing above this package imports httpx.

Two rules come from measurements on real engines (the benchmark's ``raw_get`` case,
bench/README.md, measures the first):

* Archive requests always send ``Accept-Encoding: identity``. With httpx's
  default ``gzip`` the daemon compresses the tar on the fly and streams at
  8-34 MB/s instead of 110-260 MB/s (moby/moby#40577).
* Bodies are never read whole: JSON answers are capped at 16 MiB, and archives
  stream through in the transport's own buffers in both directions.

Timeouts: a hung engine must not hang docksnap. Every call has a deadline for
the engine's answer (``call_timeout``, default 120 s: no engine call docksnap
makes needs longer), and every archive stream a stall timeout (``stall_timeout``,
default 120 s without a single byte either way), which never cuts a slow stream
that still moves. Waiting for a container to exit is the one call without a
deadline. Both come from the constructor, else ``DOCKSNAP_ENGINE_TIMEOUT`` and
``DOCKSNAP_STALL_TIMEOUT``; running out raises :class:`DockerTimeoutError`.

Paths carry no API version prefix, so the engine speaks its own current version;
every field used here has been stable since API 1.25.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

import httpx

from docksnap.docker import rawget
from docksnap.errors import (
    DockerError,
    DockerTimeoutError,
    DockerUnavailableError,
    InvalidArgumentError,
)

MAX_JSON_RESPONSE = 16 * 1024 * 1024


def _message(raw: bytes) -> str:
    """The engine's error message: the JSON ``message`` field, else the body as text."""
    try:
        message = json.loads(raw).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else raw.decode(errors="replace").strip()


DEFAULT_UNIX_SOCKET = "/var/run/docker.sock"

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_CALL_TIMEOUT = 120.0
DEFAULT_STALL_TIMEOUT = 120.0
CALL_TIMEOUT_ENV = "DOCKSNAP_ENGINE_TIMEOUT"
STALL_TIMEOUT_ENV = "DOCKSNAP_STALL_TIMEOUT"

JSON = dict[str, Any]
Deadline = Literal["call", "stream", "wait"]


@dataclass(frozen=True, slots=True)
class EngineTimeouts:
    """Seconds docksnap waits on the engine before giving up (see the module docstring)."""

    call: float = DEFAULT_CALL_TIMEOUT
    stall: float = DEFAULT_STALL_TIMEOUT
    connect: float = DEFAULT_CONNECT_TIMEOUT

    @classmethod
    def resolve(
        cls,
        call: float | None = None,
        stall: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> EngineTimeouts:
        """The given values, else the environment's, else the defaults; each checked."""
        env = os.environ if env is None else env
        return cls(
            call=_seconds(call, env, CALL_TIMEOUT_ENV, DEFAULT_CALL_TIMEOUT, "engine timeout"),
            stall=_seconds(stall, env, STALL_TIMEOUT_ENV, DEFAULT_STALL_TIMEOUT, "stall timeout"),
        )

    def for_kind(self, kind: Deadline) -> httpx.Timeout:
        """``call``: a plain request; ``stream``: an archive; ``wait``: no read deadline."""
        if kind == "stream":
            return httpx.Timeout(self.call, connect=self.connect, read=self.stall, write=self.stall)
        if kind == "wait":
            return httpx.Timeout(self.call, connect=self.connect, read=None)
        return httpx.Timeout(self.call, connect=self.connect)


def _seconds(
    value: float | None, env: Mapping[str, str], name: str, default: float, what: str
) -> float:
    if value is None:
        text = env.get(name)
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise InvalidArgumentError(
                f"{name} must be a number of seconds, got {text!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise InvalidArgumentError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class EngineAddress:
    """Where the engine listens, parsed from ``DOCKER_HOST`` and friends."""

    url: str  # as the user wrote it, for messages
    base_url: str  # what httpx talks to
    uds: str | None = None
    cert: tuple[str, str] | None = None
    verify: str | bool = True

    @classmethod
    def from_env(
        cls, host: str | None = None, env: Mapping[str, str] | None = None
    ) -> EngineAddress:
        """Parse ``host`` (or ``DOCKER_HOST``); default is the local unix socket.

        ``tcp://`` uses TLS when ``DOCKER_TLS_VERIFY`` is set, with ``ca.pem``,
        ``cert.pem`` and ``key.pem`` from ``DOCKER_CERT_PATH`` (default ``~/.docker``),
        as the docker CLI does.
        """
        env = os.environ if env is None else env
        url = host or env.get("DOCKER_HOST") or f"unix://{DEFAULT_UNIX_SOCKET}"
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return cls(url=url, base_url="http://docker", uds=parts.path or DEFAULT_UNIX_SOCKET)
        if parts.scheme in ("tcp", "http", "https"):
            if not parts.hostname:
                raise DockerUnavailableError(url, "no host name in the address")
            port = parts.port or (2376 if env.get("DOCKER_TLS_VERIFY") else 2375)
            if env.get("DOCKER_TLS_VERIFY") or parts.scheme == "https":
                certs = env.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
                return cls(
                    url=url,
                    base_url=f"https://{parts.hostname}:{port}",
                    cert=(os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem")),
                    verify=os.path.join(certs, "ca.pem"),
                )
            return cls(url=url, base_url=f"http://{parts.hostname}:{port}")
        raise DockerUnavailableError(
            url, f"unsupported scheme {parts.scheme!r} (use unix:// or tcp://)"
        )


@dataclass(frozen=True, slots=True)
class ArchiveStream:
    """An archive being read: the tar bytes, in order."""

    chunks: AsyncIterator[bytes]


class DockerClient:
    """Async Docker Engine API client. One instance per engine; safe for concurrent use.

    Every method raises :class:`DockerUnavailableError` when the engine cannot
    be reached (worth a retry once the engine is up) and :class:`DockerError`
    with the engine's status and message otherwise (a 5xx may be worth a retry,
    a 4xx is permanent).
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        call_timeout: float | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        self.address = EngineAddress.from_env(host)
        self.timeouts = EngineTimeouts.resolve(call_timeout, stall_timeout)
        transport = httpx.AsyncHTTPTransport(
            uds=self.address.uds,
            verify=self.address.verify,
            cert=self.address.cert,
            retries=0,
        )
        self._http = httpx.AsyncClient(
            transport=transport,
            base_url=self.address.base_url,
            # Each request sets its own (see _send); this is the plain call's.
            timeout=self.timeouts.for_kind("call"),
            headers={"Accept-Encoding": "identity"},
        )

    async def aclose(self) -> None:
        """Close pooled connections; idempotent."""
        await self._http.aclose()

    # -- the seam ---------------------------------------------------------------

    @asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, str | list[str]] | None = None,
        body: JSON | None = None,
        content: AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 204),
        deadline: Deadline = "call",
    ) -> AsyncIterator[httpx.Response]:
        """Send one request; yield the streaming response if its status is in ``ok``.

        ``deadline`` is the kind of deadline (:meth:`EngineTimeouts.for_kind`). A
        deadline that passes, while sending or while the body is read, is a
        :class:`DockerTimeoutError`; the connection is closed either way.
        """
        hdrs = dict(headers or {})
        data: bytes | AsyncIterable[bytes] | None = content
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        request = self._http.build_request(
            method,
            path,
            params=params,
            content=data,
            headers=hdrs,
            timeout=self.timeouts.for_kind(deadline),
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise self._timed_out(exc, operation, deadline) from exc
        except httpx.TransportError as exc:
            raise DockerUnavailableError(self.address.url, f"{type(exc).__name__}: {exc}") from exc
        try:
            if response.status_code not in ok:
                raise DockerError(
                    response.status_code, await self._error_message(response), operation=operation
                )
            yield response
        except httpx.TimeoutException as exc:
            raise self._timed_out(exc, operation, deadline) from exc
        except httpx.TransportError as exc:
            raise DockerUnavailableError(
                self.address.url, f"connection lost during {operation}: {exc}"
            ) from exc
        finally:
            await response.aclose()

    def _timed_out(
        self, exc: httpx.TimeoutException, operation: str, kind: Deadline
    ) -> DockerTimeoutError:
        if isinstance(exc, httpx.ConnectTimeout):
            seconds = self.timeouts.connect
        elif kind == "stream" and isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
            seconds = self.timeouts.stall
        else:
            seconds = self.timeouts.call
        return DockerTimeoutError(self.address.url, operation, seconds)

    async def _error_message(self, response: httpx.Response) -> str:
        return _message(await self._read_capped(response))

    @staticmethod
    async def _read_capped(response: httpx.Response) -> bytes:
        body = bytearray()
        async for piece in response.aiter_raw():
            body += piece
            if len(body) > MAX_JSON_RESPONSE:
                raise DockerError(
                    response.status_code, f"response larger than {MAX_JSON_RESPONSE} bytes"
                )
        return bytes(body)

    async def _json(self, method: str, path: str, *, operation: str, **kwargs: Any) -> Any:
        async with self._send(method, path, operation=operation, **kwargs) as response:
            raw = await self._read_capped(response)
        return json.loads(raw) if raw.strip() else None

    async def _inspect(self, path: str, *, operation: str) -> JSON | None:
        """``GET path``: the object's description, or ``None`` on a 404. Read-only."""
        async with self._send("GET", path, operation=operation, ok=(200, 404)) as response:
            raw = await self._read_capped(response)
            if response.status_code == 404:
                return None
        result: JSON = json.loads(raw)
        return result

    # -- system -----------------------------------------------------------------

    async def ping(self) -> None:
        """``GET /_ping``; raises :class:`DockerUnavailableError` when no engine answers."""
        async with self._send("GET", "/_ping", operation="ping") as response:
            await self._read_capped(response)

    async def version(self) -> JSON:
        result: JSON = await self._json("GET", "/version", operation="version")
        return result

    # -- containers -------------------------------------------------------------

    async def create_container(self, name: str | None, config: JSON) -> str:
        """Create (not start) a container; return its id. Not idempotent (409 on a taken name)."""
        params = {"name": name} if name else None
        result = await self._json(
            "POST", "/containers/create", operation="create container", params=params, body=config
        )
        return str(result["Id"])

    async def start_container(self, container: str) -> None:
        await self._json(
            "POST", f"/containers/{container}/start", operation="start container", ok=(204, 304)
        )

    async def inspect_container(self, container: str) -> JSON:
        result: JSON = await self._json(
            "GET", f"/containers/{container}/json", operation="inspect container"
        )
        return result

    async def list_containers(
        self, labels: Mapping[str, str], *, volume: str | None = None
    ) -> list[JSON]:
        """All containers (running or not) carrying every label in ``labels``
        (and mounting ``volume``, when given)."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        if volume is not None:
            filters["volume"] = [volume]
        result: list[JSON] = await self._json(
            "GET",
            "/containers/json",
            operation="list containers",
            params={"all": "true", "filters": json.dumps(filters)},
        )
        return result

    async def wait_container(self, container: str) -> int:
        """Block until the container is not running; return its exit code."""
        result = await self._json(
            "POST",
            f"/containers/{container}/wait",
            operation="wait for container",
            params={"condition": "not-running"},
            deadline="wait",
        )
        return int(result["StatusCode"])

    async def kill_container(self, container: str, signal: int) -> None:
        await self._json(
            "POST",
            f"/containers/{container}/kill",
            operation="signal container",
            params={"signal": str(signal)},
        )

    async def pause_container(self, container: str) -> None:
        await self._json("POST", f"/containers/{container}/pause", operation="pause container")

    async def unpause_container(self, container: str) -> None:
        await self._json("POST", f"/containers/{container}/unpause", operation="unpause container")

    async def remove_container(self, container: str) -> None:
        """Force-remove a container (running or not). Idempotent: a missing one is fine,
        and so is one whose removal is already in progress (409: a removal whose
        answer timed out goes on in the engine)."""
        await self._json(
            "DELETE",
            f"/containers/{container}",
            operation="remove container",
            params={"force": "true"},
            ok=(204, 404, 409),
        )

    # -- networks ---------------------------------------------------------------

    async def inspect_network(self, name: str) -> JSON | None:
        """The network's description, or ``None`` when it does not exist. Read-only."""
        return await self._inspect(f"/networks/{name}", operation="inspect network")

    # -- volumes ----------------------------------------------------------------

    async def create_volume(
        self,
        name: str,
        labels: Mapping[str, str],
        *,
        driver_options: Mapping[str, str] | None = None,
    ) -> None:
        """Create a named volume of the ``local`` driver. Idempotent in the engine: an
        existing name is returned. ``driver_options`` are ``docker volume create
        --opt``'s (``type``, ``device``, ``o``: a mount the engine makes at first use)."""
        body: JSON = {"Name": name, "Labels": dict(labels)}
        if driver_options:
            body["Driver"] = "local"
            body["DriverOpts"] = dict(driver_options)
        await self._json("POST", "/volumes/create", operation="create volume", body=body)

    async def inspect_volume(self, name: str) -> JSON | None:
        """The volume's description, or ``None`` when it does not exist."""
        return await self._inspect(f"/volumes/{name}", operation="inspect volume")

    async def list_volumes(self, labels: Mapping[str, str]) -> list[JSON]:
        """Volumes carrying every label in ``labels`` (a value of ``""`` matches any value)."""
        filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}
        result = await self._json(
            "GET", "/volumes", operation="list volumes", params={"filters": json.dumps(filters)}
        )
        volumes: list[JSON] = result.get("Volumes") or []
        return volumes

    async def remove_volume(self, name: str) -> None:
        """Remove a volume. Idempotent: a missing one is fine; one in use is a 409."""
        await self._json(
            "DELETE",
            f"/volumes/{name}",
            operation="remove volume",
            params={"force": "true"},
            ok=(204, 404),
        )

    # -- archives ---------------------------------------------------------------

    async def stat_path(self, container: str, path: str) -> JSON | None:
        """``HEAD /archive``: the path's stat in the container, or ``None`` if absent."""
        async with self._send(
            "HEAD",
            f"/containers/{container}/archive",
            operation="stat path",
            params={"path": path},
            ok=(200, 404),
        ) as response:
            if response.status_code == 404:
                return None
            return _decode_stat(response.headers.get("X-Docker-Container-Path-Stat", ""))

    @asynccontextmanager
    async def get_archive(self, container: str, path: str) -> AsyncIterator[ArchiveStream]:
        """Stream ``path`` out of the container as a tar. A 404 is a :class:`DockerError`.

        Read-only and idempotent. The stream yields the bytes as they arrive
        (from a unix-socket engine, a socket read's worth at a time); leaving the
        context closes the connection.
        """
        if self.address.uds is not None:
            async with self._unix_archive(self.address.uds, container, path) as chunks:
                yield ArchiveStream(chunks=chunks)
            return
        async with self._send(
            "GET",
            f"/containers/{container}/archive",
            operation="read archive",
            params={"path": path},
            deadline="stream",
        ) as response:
            yield ArchiveStream(chunks=response.aiter_raw())

    @asynccontextmanager
    async def _unix_archive(
        self, uds: str, container: str, path: str
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The archive's bytes read off the engine's unix socket (see rawget.py for why).

        Only the request and the body's reads are translated into docksnap's
        errors, not what the caller raises while it holds the stream.
        """
        operation = "read archive"
        target = f"/containers/{quote(container, safe='')}/archive?{urlencode({'path': path})}"
        async with contextlib.AsyncExitStack() as stack:
            with self._raw_errors(operation):
                response = await stack.enter_async_context(
                    rawget.unix_get(
                        uds,
                        target,
                        connect_timeout=self.timeouts.connect,
                        stall_timeout=self.timeouts.stall,
                    )
                )
                if response.status != 200:
                    raw = bytearray()
                    async for piece in response.body:
                        raw += piece
                        if len(raw) > MAX_JSON_RESPONSE:
                            break
                    raise DockerError(
                        response.status,
                        _message(bytes(raw[:MAX_JSON_RESPONSE])),
                        operation=operation,
                    )
            yield self._raw_body(response.body, operation)

    async def _raw_body(self, body: AsyncIterator[bytes], operation: str) -> AsyncIterator[bytes]:
        with self._raw_errors(operation):
            async for piece in body:
                yield piece

    @contextlib.contextmanager
    def _raw_errors(self, operation: str) -> Iterator[None]:
        """rawget's and the socket's exceptions as docksnap's, as :meth:`_send` does for httpx."""
        try:
            yield
        except TimeoutError as exc:  # connecting
            raise DockerTimeoutError(self.address.url, operation, self.timeouts.connect) from exc
        except rawget.StallError as exc:
            raise DockerTimeoutError(self.address.url, operation, self.timeouts.stall) from exc
        except (OSError, rawget.ProtocolError) as exc:
            raise DockerUnavailableError(
                self.address.url, f"connection lost during {operation}: {exc}"
            ) from exc

    async def put_archive(
        self, container: str, path: str, tar: AsyncIterable[bytes], *, size: int | None = None
    ) -> None:
        """Extract a tar stream at ``path`` (which must exist) in the container.

        Always sends ``noOverwriteDirNonDir=true``, so the tar can never replace a
        directory with a file or the reverse. Not atomic: a failure midway leaves
        what was extracted so far, which is why docksnap only extracts into
        containers and volumes it created and removes them on failure.
        """
        headers = {"Content-Type": "application/x-tar"}
        if size is not None:
            headers["Content-Length"] = str(size)
        async with self._send(
            "PUT",
            f"/containers/{container}/archive",
            operation="write archive",
            params={"path": path, "noOverwriteDirNonDir": "true"},
            content=tar,
            headers=headers,
            deadline="stream",
        ) as response:
            await self._read_capped(response)

    # -- filesystem changes and images (whole-container snapshots) ---------------

    async def container_changes(self, container: str) -> list[JSON]:
        """``GET /changes``: paths of the container's filesystem that differ from its image.

        Each item is ``{"Path": "/abs", "Kind": 0|1|2}`` (modified, added, deleted).
        Mounted volumes and bind mounts are not part of it. Read-only, idempotent.
        """
        result = await self._json(
            "GET", f"/containers/{container}/changes", operation="list changes"
        )
        return list(result or [])

    @asynccontextmanager
    async def export_container(self, container: str) -> AsyncIterator[ArchiveStream]:
        """Stream the container's whole filesystem (image plus changes) as a tar. Read-only."""
        async with self._send(
            "GET", f"/containers/{container}/export", operation="export container"
        ) as response:
            yield ArchiveStream(chunks=response.aiter_raw())

    async def inspect_image(self, image: str) -> JSON | None:
        """The image's description, or ``None`` when this engine does not have it."""
        return await self._inspect(f"/images/{image}/json", operation="inspect image")

    async def import_image(
        self, tar: AsyncIterable[bytes], *, repo: str, changes: list[str]
    ) -> str:
        """``POST /images/create?fromSrc=-``: a one-layer image of ``tar``; return its id.

        ``changes`` are Dockerfile instructions (CMD, ENV, LABEL ...) applied to
        its config. The engine reports failures inside a 200 answer's JSON
        stream; they are raised here as :class:`DockerError`. Not idempotent.
        """
        params: dict[str, str | list[str]] = {
            "fromSrc": "-",
            "repo": repo,
            "tag": "latest",
            "changes": changes,
        }
        async with self._send(
            "POST",
            "/images/create",
            operation="import image",
            params=params,
            content=tar,
            headers={"Content-Type": "application/x-tar"},
        ) as response:
            raw = await self._read_capped(response)
        image_id = ""
        for line in raw.decode(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("error"):
                raise DockerError(500, str(item["error"]), operation="import image")
            status = str(item.get("status", ""))
            if status.startswith("sha256:"):
                image_id = status
        if not image_id:
            raise DockerError(
                500, f"no image id in the answer: {raw[:200]!r}", operation="import image"
            )
        return image_id

    async def list_images(self, labels: Mapping[str, str]) -> list[JSON]:
        """Images carrying every label in ``labels``."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        result: list[JSON] = await self._json(
            "GET", "/images/json", operation="list images", params={"filters": json.dumps(filters)}
        )
        return result

    async def remove_image(self, image: str) -> None:
        """Remove an image. Idempotent: a missing one is fine; one in use is a 409."""
        await self._json("DELETE", f"/images/{image}", operation="remove image", ok=(200, 404))


def _decode_stat(header: str) -> JSON:
    if not header:
        return {}
    try:
        result: JSON = json.loads(base64.b64decode(header))
    except ValueError:
        return {}
    return result

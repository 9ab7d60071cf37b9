"""Running the app under uvicorn: where it may listen, and with which token.

A server that anyone on the network can reach hands out the contents of every
snapshot to whoever holds the token, so it must not send that token in clear:
binding to anything but loopback needs TLS, unless the operator says
``--insecure`` (e.g. behind a TLS-terminating proxy on the same host).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from docksnap.errors import InvalidArgumentError
from docksnap.http.app import ServeConfig, create_app

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8077
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def check_listen(listen: Listen) -> None:
    """Refuse a bind that would expose the API without TLS (see the module's docstring)."""
    if (listen.tls_cert is None) != (listen.tls_key is None):
        raise InvalidArgumentError("--tls-cert and --tls-key go together")
    if not is_loopback(listen.host) and not listen.tls and not listen.insecure:
        raise InvalidArgumentError(
            f"refusing to listen on {listen.host!r} without TLS: the token and every "
            "snapshot would cross the network in clear; give --tls-cert and --tls-key, "
            "or --insecure if a TLS proxy on this host fronts the server"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A host name: loopback only if every address it resolves to is.
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def serve(config: ServeConfig, listen: Listen) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    check_listen(listen)
    uvicorn.run(
        create_app(config),
        host=listen.host,
        port=listen.port,
        ssl_certfile=str(listen.tls_cert) if listen.tls_cert else None,
        ssl_keyfile=str(listen.tls_key) if listen.tls_key else None,
        log_level="info",
        access_log=True,
        # The client's real address matters in the log; no proxy headers are trusted.
        proxy_headers=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )

"""A TCP proxy on 127.0.0.1 that can make a server "die" in the middle of a stream.

A real server cannot be killed on demand at byte N of an upload, and the shared
test server must not be stopped; a proxy in front of it can. ``FaultProxy``
forwards connections to ``upstream`` until it is cut, then resets every open
connection and refuses new ones, as a crashed server process would. It can cut
itself once ``cut_after_up`` bytes went to the server or ``cut_after_down`` came
back. :meth:`FaultProxy.stall` instead swallows everything, as a vanished host does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

_BUFFER = 64 * 1024


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream`` until :meth:`cut`. Threads, no asyncio."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        cut_after_up: int | None = None,
        cut_after_down: int | None = None,
    ) -> None:
        self._upstream = upstream
        self._limits = {"up": cut_after_up, "down": cut_after_down}
        self._counts = {"up": 0, "down": 0}
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._cut = threading.Event()
        self._stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def bytes_passed(self, direction: str) -> int:
        with self._lock:
            return self._counts[direction]

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stall(self) -> None:
        """Hang: keep every connection open but forward nothing more, either way (a
        host that vanished without a reset, or a server wedged mid-request)."""
        self._stalled.set()

    def cut(self) -> None:
        """Die: reset every connection and stop accepting (new ones are refused)."""
        self._cut.set()
        _reset(self._listener)  # shutdown wakes the thread blocked in accept()
        with self._lock:
            doomed = list(self._sockets)
            self._sockets.clear()
        for sock in doomed:
            _reset(sock)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cut()
        self._thread.join(timeout=5)

    # --- internals ---------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed by cut()
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for src, dst, direction in ((client, server, "up"), (server, client, "down")):
                pump = threading.Thread(target=self._pump, args=(src, dst, direction), daemon=True)
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while not self._cut.is_set():
                data = src.recv(_BUFFER)
                if not data:
                    break
                if self._count(direction, len(data)):
                    self.cut()
                    return
                if not self._stalled.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _count(self, direction: str, size: int) -> bool:
        """Add ``size`` bytes; True when that crosses the direction's cut-off."""
        with self._lock:
            self._counts[direction] += size
            limit = self._limits[direction]
            return limit is not None and self._counts[direction] >= limit


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0), as a dead peer's kernel would answer.

    ``shutdown`` first: on Linux, ``close`` alone does not wake a thread blocked
    in ``recv`` on the socket, and the connection would stay up.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()

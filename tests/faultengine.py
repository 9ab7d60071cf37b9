"""A fake Docker engine on a unix socket that proxies to the real one and injects faults.

A real engine cannot be made to answer 500 to one chosen call, to cut an archive
at byte N, to stall mid-stream or to drop a connection without a word; the
shared engine must not be stopped either. :class:`FaultEngine` listens on a unix
socket of its own and forwards every request to the real engine, except those
matching a :class:`Fault`, which it answers with the fault instead. Tests point
``docksnap.Client(docker_host=engine.url)`` (or ``DOCKER_HOST``) at it.

One request per connection: the proxy forwards every request with
``Connection: close``, so the engine closes after its answer and each connection
carries exactly one call, which keeps matching and counting simple.

Threads, no asyncio, so that it runs beside any event loop (tests only).
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_BUFFER = 64 * 1024
_HEAD_LIMIT = 64 * 1024
_UPSTREAM = "/var/run/docker.sock"

ACTIONS = (
    "500",
    "close",
    "stall",
    "cut",
    "stall_after",
    "cut_upload",
    "stall_upload",
    "slow",
    "lose_answer",
)
SLOW_TICK = 0.1  # seconds between the pieces of a "slow" answer


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to the ``nth`` request matching ``method`` and the ``path`` regex.

    Actions:

    * ``500``: answer ``500 {"message": "injected fault"}`` without asking the engine;
    * ``close``: close the connection without an answer;
    * ``stall``: keep the connection open and never answer;
    * ``cut``: forward, then close after ``after`` bytes of the answer;
    * ``stall_after``: forward ``after`` bytes of the answer, then nothing more;
    * ``cut_upload``: forward ``after`` bytes of the request, then close both ways;
    * ``stall_upload``: stop reading the request after ``after`` bytes;
    * ``slow``: forward the answer ``after`` bytes per :data:`SLOW_TICK` (slow, never stalled);
    * ``lose_answer``: let the engine carry the request out, then close the connection
      instead of passing its answer on (the change happened; the caller never hears).

    ``nth`` counts matching requests from 1; 0 means every one.
    """

    method: str
    path: str
    action: str
    after: int = 0
    nth: int = 1

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")

    def matches(self, method: str, path: str) -> bool:
        return self.method in (method, "*") and re.fullmatch(self.path, path) is not None


class FaultEngine:
    """Forwards ``unix://<socket>`` to the real engine, injecting :class:`Fault` s."""

    def __init__(self, directory: Path, upstream: str = _UPSTREAM) -> None:
        self.socket_path = str(directory / "engine.sock")
        self._upstream = upstream
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._matched: dict[int, int] = {}
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request seen
        self.fired: list[tuple[Fault, str]] = []  # each fault with the path it fired on
        self._released = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._accept, name="fault-engine", daemon=True)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._matched[len(self._faults)] = 0
            self._faults.append(fault)

    def suspend(self) -> list[Fault]:
        """Take the faults out (without releasing stalls); :meth:`resume` puts them back."""
        with self._lock:
            faults, self._faults = self._faults, []
            self._matched.clear()
        return faults

    def resume(self, faults: list[Fault]) -> None:
        for fault in faults:
            self.inject(fault)

    def clear(self) -> None:
        """Remove every fault and let stalled connections go (they are closed)."""
        with self._lock:
            self._faults.clear()
            self._matched.clear()
        self.release()

    def release(self) -> None:
        """End every stall: stalled connections are closed, both ways."""
        self._released.set()
        with self._lock:
            doomed = list(self._sockets)
        for sock in doomed:
            _close(sock)
        self._released = threading.Event()

    def start(self) -> FaultEngine:
        self._thread.start()
        return self

    def __enter__(self) -> FaultEngine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.clear()
        _close(self._listener)
        self._thread.join(timeout=5)

    # --- internals ---------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.calls.append((method, path))
            for index, fault in enumerate(self._faults):
                if not fault.matches(method, path):
                    continue
                self._matched[index] += 1
                if fault.nth in (0, self._matched[index]):
                    self.fired.append((fault, path))
                    return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
            fault = self._fault_for(method, target.split("?", 1)[0])
            action = fault.action if fault else ""
            if action == "500":
                body = b'{"message":"injected fault"}'
                client.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                return
            if action == "close":
                return
            if action == "stall":
                self._hold(client)
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self._upstream)
            self._track(upstream)
            upstream.sendall(_close_after(head) + rest)
            after = fault.after if fault is not None else 0
            up_limit = after - len(rest) if action in ("cut_upload", "stall_upload") else None
            down_limit = after if action in ("cut", "stall_after") else None
            pump = threading.Thread(
                target=self._pump, args=(client, upstream, up_limit, action, client), daemon=True
            )
            pump.start()
            if action == "slow" and fault is not None:
                self._trickle(upstream, client, fault.after)
            elif action == "lose_answer":
                with contextlib.suppress(OSError):
                    while upstream.recv(_BUFFER):
                        pass  # the engine's whole answer, dropped
                _close(client)
            else:
                self._pump(upstream, client, down_limit, action, client)
            pump.join()
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    _close(sock)
                    with self._lock:
                        self._sockets.discard(sock)

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        limit: int | None,
        action: str,
        client: socket.socket,
    ) -> None:
        """Copy ``src`` to ``dst``; at ``limit`` bytes, cut (close both) or stall.

        The client going away ends everything, as it would on a real connection:
        a stalled engine would otherwise keep the container locked.
        """
        passed = 0
        try:
            while True:
                if limit is not None and passed >= limit:
                    if action.startswith("stall"):
                        self._hold(client)
                    _close(src)
                    _close(dst)
                    return
                data = src.recv(_BUFFER if limit is None else min(_BUFFER, limit - passed))
                if not data:
                    break
                dst.sendall(data)
                passed += len(data)
        except OSError:
            pass
        if src is client:  # the client left: drop the engine's side too
            _close(dst)
        else:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _hold(self, client: socket.socket) -> None:
        """Wait until :meth:`release`, or until the client hangs up."""
        poller = select.poll()
        poller.register(client, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        released = self._released
        while not released.is_set():
            with contextlib.suppress(OSError, ValueError):
                if poller.poll(100):
                    return

    @staticmethod
    def _trickle(src: socket.socket, dst: socket.socket, piece: int) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(piece):
                dst.sendall(data)
                time.sleep(SLOW_TICK)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(_BUFFER)
        if not piece or len(data) > _HEAD_LIMIT:
            return None, b""
        data += piece
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _close_after(head: bytes) -> bytes:
    """The request head with ``Connection: close``: one request per connection."""
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()

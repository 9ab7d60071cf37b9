"""The real obstore transport against a scripted HTTP server on 127.0.0.1.

Proves that what obstore actually raises for each answer is classified as the
store expects (the unit tests of the retry policy use a fake transport). The
server answers the bucket check itself and plays back one scripted status per
object request.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from docksnap.errors import StoreError, StoreUnavailableError
from docksnap.store.objects import ObjectNotFoundError
from docksnap.store.objects.s3 import RetryPolicy, S3Config, S3ObjectStore

_EMPTY_LIST = (
    b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
    b"<Name>bkt</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>"
)


class ScriptedS3(http.server.ThreadingHTTPServer):
    """Answers each object request with the next scripted status (then 200)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple[int, str]] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def next_status(self, request: str) -> tuple[int, str]:
        with self.lock:
            self.requests.append(request)
            return self.script.pop(0) if self.script else (200, "")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedS3

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if "list-type=2" in self.path:
            self._send(200, _EMPTY_LIST)
            return
        status, code = self.server.next_status(f"{self.command} {self.path}")
        body = b"payload" if status < 300 else f"<Error><Code>{code}</Code></Error>".encode()
        self._send(status, body)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        self.send_header("ETag", '"0123456789abcdef"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ScriptedS3]:
    scripted = ScriptedS3()
    thread = threading.Thread(target=scripted.serve_forever, daemon=True)
    thread.start()
    try:
        yield scripted
    finally:
        scripted.shutdown()
        scripted.server_close()


def store_for(server: ScriptedS3, attempts: int = 4) -> S3ObjectStore:
    config = S3Config(
        bucket="bkt",
        endpoint=f"http://127.0.0.1:{server.server_address[1]}",
        access_key_id="access",
        secret_access_key="secret",  # noqa: S106 - a fake server's fake key
        retry=RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.05),
        check_conditional_writes=False,
    )
    return S3ObjectStore(config)


def test_503_503_200(server: ScriptedS3) -> None:
    server.script = [(503, "SlowDown"), (503, "ServiceUnavailable")]
    assert store_for(server).get("chunks/ab/abc") == b"payload"
    assert server.requests == ["GET /bkt/chunks/ab/abc"] * 3


def test_403_fails_at_once(server: ScriptedS3) -> None:
    server.script = [(403, "SignatureDoesNotMatch")]
    with pytest.raises(StoreError, match=r"put chunks/ab/abc: access denied \(403") as caught:
        store_for(server).put("chunks/ab/abc", b"x")
    assert not isinstance(caught.value, StoreUnavailableError)
    assert "check AWS_SECRET_ACCESS_KEY" in str(caught.value)
    assert len(server.requests) == 1


def test_500_until_attempts_run_out(server: ScriptedS3) -> None:
    server.script = [(500, "InternalError")] * 10
    with pytest.raises(StoreUnavailableError, match="after 3 attempts"):
        store_for(server, attempts=3).put("manifests/m", b"x")
    assert len(server.requests) == 3


def test_404_is_not_found(server: ScriptedS3) -> None:
    server.script = [(404, "NoSuchKey"), (404, "")]
    store = store_for(server)
    with pytest.raises(ObjectNotFoundError):
        store.get("manifests/m")
    assert store.exists("manifests/m") is False


def test_412_on_create_is_false_and_409_is_retried(server: ScriptedS3) -> None:
    server.script = [(412, "PreconditionFailed"), (409, "ConditionalRequestConflict")]
    store = store_for(server)
    assert store.put_if_absent("manifests/m", b"x") is False
    assert store.put_if_absent("manifests/n", b"x") is True
    assert len(server.requests) == 3


def test_connection_refused_is_unavailable() -> None:
    config = S3Config(
        bucket="bkt",
        endpoint="http://127.0.0.1:9",  # discard port: nothing listens
        access_key_id="a",
        secret_access_key="b",  # noqa: S106 - nothing listens
        retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02),
    )
    with pytest.raises(StoreUnavailableError, match=r"http://127\.0\.0\.1:9 still failing"):
        S3ObjectStore(config).get("config")

"""S3ObjectStore without a server: retries, error mapping, URL parsing.

A fake transport plays back scripted outcomes, given as the exceptions obstore
raises (status and S3 error code in the message text), so the real
classification runs too. The real-server behaviour is in tests/integration/test_s3.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from obstore.exceptions import AlreadyExistsError, GenericError, PermissionDeniedError

from docksnap.errors import InvalidArgumentError, StoreError, StoreUnavailableError
from docksnap.store.objects import ObjectInfo, ObjectNotFoundError
from docksnap.store.objects.s3 import RetryPolicy, S3Config, S3ObjectStore
from docksnap.store.objects.s3.transport import FailureKind, S3Failure, classify

BUCKET = "unit-bucket"
RETRY = RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.4)


def obstore_error(status: int, code: str = "", cls: type[Exception] = GenericError) -> Exception:
    """An exception shaped like obstore's for an HTTP error answer."""
    body = f"<Error><Code>{code}</Code><Message></Message></Error>" if code else ""
    return cls(
        f"Generic S3 error: Error performing PUT http://127.0.0.1:1/{BUCKET}/k in 1ms - "
        f"Server returned non-2xx status code: {status} Reason: {body}\n\nDebug source:\n..."
    )


RESET = GenericError("Generic S3 error: Error performing GET - HTTP error: error sending request")
Outcome = Exception | Callable[[], Any] | None


class FakeTransport:
    """Plays back one scripted outcome per request (then succeeds); records the calls.

    An outcome is an exception to raise (classified as obstore's would be), a
    callable whose result is returned, or None for plain success.
    """

    def __init__(
        self,
        *script: Outcome,
        objects: dict[str, bytes] | None = None,
        bucket: Exception | None = None,
    ) -> None:
        self.script = list(script)
        self.bucket = bucket  # what the bucket check raises, if anything
        self.calls: list[tuple[str, str]] = []
        self.objects = objects if objects is not None else {}
        self.lock = threading.Lock()

    @property
    def requests(self) -> list[tuple[str, str]]:
        """The calls after the store's one-time bucket check."""
        return [call for call in self.calls if call[0] != "check_bucket"]

    def _next(self, op: str, key: str, *, create: bool = False) -> Any:
        with self.lock:
            self.calls.append((op, key))
            outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, Exception):
            raise classify(outcome, create=create)
        return outcome() if callable(outcome) else None

    def check_bucket(self) -> None:
        with self.lock:
            self.calls.append(("check_bucket", ""))
        if self.bucket is not None:
            raise classify(self.bucket)

    def put(self, key: str, data: bytes | memoryview, *, create: bool) -> None:
        self._next("put", key, create=create)
        if create and key in self.objects:
            raise S3Failure(FailureKind.EXISTS, "412", status=412)
        self.objects[key] = bytes(data)

    def get(self, key: str) -> bytes:
        result = self._next("get", key)
        if result is not None:
            return bytes(result)
        if key not in self.objects:
            raise S3Failure(FailureKind.NOT_FOUND, "404", status=404)
        return self.objects[key]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.get(key)[start : start + length]

    def head(self, key: str) -> ObjectInfo:
        self._next("head", key)
        if key not in self.objects:
            raise S3Failure(FailureKind.NOT_FOUND, "404", status=404)
        return ObjectInfo(key, len(self.objects[key]), 0.0)

    def list(self, directory: str, after: str | None) -> Iterator[list[ObjectInfo]]:
        keys = sorted(k for k in self.objects if after is None or k > after)
        for key in keys:  # one key per page, so a fault can fall between pages
            self._next("list", key)
            yield [ObjectInfo(key, len(self.objects[key]), 0.0)]

    def delete(self, key: str) -> None:
        self._next("delete", key)
        self.objects.pop(key, None)

    def close(self) -> None:
        pass


def make_store(
    transport: FakeTransport, *, prefix: str = "p", **overrides: Any
) -> tuple[S3ObjectStore, list[float]]:
    """A store over ``transport`` whose sleeps are recorded, not slept."""
    settings: dict[str, Any] = {"retry": RETRY, "check_conditional_writes": False, **overrides}
    config = S3Config(bucket=BUCKET, prefix=prefix, **settings)
    sleeps: list[float] = []
    return S3ObjectStore(config, transport=transport, sleep=sleeps.append), sleeps


# --- the three scripted sequences of the brief ----------------------------------------


def test_503_503_200_succeeds_after_two_backed_off_retries() -> None:
    transport = FakeTransport(
        obstore_error(503, "SlowDown"), obstore_error(503), lambda: b"payload"
    )
    store, sleeps = make_store(transport)
    assert store.get("chunks/ab/abc") == b"payload"
    assert transport.requests == [("get", "chunks/ab/abc")] * 3
    assert len(sleeps) == 2
    assert RETRY.ceiling(1) / 2 <= sleeps[0] <= RETRY.ceiling(1)
    assert RETRY.ceiling(2) / 2 <= sleeps[1] <= RETRY.ceiling(2)


def test_403_fails_at_once_naming_bucket_operation_key_and_fix() -> None:
    transport = FakeTransport(
        obstore_error(403, "SignatureDoesNotMatch", cls=PermissionDeniedError)
    )
    store, sleeps = make_store(transport)
    with pytest.raises(StoreError) as caught:
        store.put("chunks/ab/abcdef", b"x")
    assert not isinstance(caught.value, StoreUnavailableError)
    assert transport.requests == [("put", "chunks/ab/abcdef")]
    assert sleeps == []
    message = str(caught.value)
    assert message.startswith(f"s3://{BUCKET}/p: put chunks/ab/abcdef: access denied (403")
    assert "check AWS_SECRET_ACCESS_KEY" in message
    assert caught.value.store == f"s3://{BUCKET}/p"


def test_500_every_time_is_store_unavailable_after_bounded_attempts() -> None:
    transport = FakeTransport(*[obstore_error(500, "InternalError")] * 10)
    store, sleeps = make_store(transport)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        store.get("manifests/x")
    assert time.monotonic() - started < 1  # the sleeps were recorded, not slept
    assert len(transport.requests) == RETRY.attempts
    assert len(sleeps) == RETRY.attempts - 1
    assert all(delay <= RETRY.max_delay for delay in sleeps)
    assert sleeps[-1] >= RETRY.max_delay / 2  # the backoff grew to its cap
    assert "after 5 attempts" in str(caught.value)
    assert "500 InternalError" in str(caught.value)


# --- classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (obstore_error(503, "SlowDown"), FailureKind.TRANSIENT),
        (obstore_error(500), FailureKind.TRANSIENT),
        (obstore_error(429), FailureKind.TRANSIENT),
        (obstore_error(409, "ConditionalRequestConflict"), FailureKind.TRANSIENT),
        (obstore_error(400, "RequestTimeout"), FailureKind.TRANSIENT),
        (RESET, FailureKind.TRANSIENT),
        (obstore_error(403, "AccessDenied", PermissionDeniedError), FailureKind.DENIED),
        (obstore_error(401), FailureKind.DENIED),
        (obstore_error(404, "NoSuchKey", FileNotFoundError), FailureKind.NOT_FOUND),
        (obstore_error(404, "NoSuchBucket", FileNotFoundError), FailureKind.NO_BUCKET),
        (obstore_error(400, "InvalidArgument"), FailureKind.PERMANENT),
        (obstore_error(416, "InvalidRange"), FailureKind.PERMANENT),
        (ValueError("bad argument"), FailureKind.PERMANENT),
    ],
)
def test_classify(error: Exception, kind: FailureKind) -> None:
    assert classify(error).kind is kind


def test_classify_a_conditional_create() -> None:
    # obstore raises AlreadyExistsError for both; only the status tells them apart.
    exists = obstore_error(412, "PreconditionFailed", AlreadyExistsError)
    conflict = obstore_error(409, "ConditionalRequestConflict", AlreadyExistsError)
    assert classify(exists, create=True).kind is FailureKind.EXISTS
    assert classify(conflict, create=True).kind is FailureKind.TRANSIENT


def test_failure_detail_drops_obstore_debug_dump() -> None:
    failure = classify(obstore_error(500))
    assert "Debug source" not in failure.detail
    assert failure.status == 500


# --- operations ----------------------------------------------------------------------------


def test_missing_key_is_object_not_found_without_retry() -> None:
    transport = FakeTransport()
    store, sleeps = make_store(transport)
    with pytest.raises(ObjectNotFoundError) as caught:
        store.get("chunks/zz/absent")
    assert "chunks/zz/absent" in str(caught.value)
    assert store.exists("chunks/zz/absent") is False
    assert sleeps == []


def test_missing_bucket_fails_on_first_use_saying_so() -> None:
    transport = FakeTransport(bucket=obstore_error(404, "NoSuchBucket", FileNotFoundError))
    store, _ = make_store(transport)
    with pytest.raises(StoreError, match=f"bucket '{BUCKET}' does not exist"):
        store.exists("config")
    assert transport.calls == [("check_bucket", "")]


def test_bucket_is_checked_once() -> None:
    transport = FakeTransport()
    store, _ = make_store(transport)
    store.put("a", b"1")
    store.put("b", b"2")
    assert [op for op, _ in transport.calls] == ["check_bucket", "put", "put"]


def test_put_if_absent_412_is_false() -> None:
    transport = FakeTransport(objects={"manifests/m": b"theirs"})
    store, _ = make_store(transport)
    assert store.put_if_absent("manifests/m", b"mine") is False
    assert store.put_if_absent("manifests/n", b"mine") is True
    assert transport.objects["manifests/m"] == b"theirs"


def test_put_if_absent_sees_its_own_earlier_attempt() -> None:
    """A reset after the body reached the server, then 412: the first attempt won."""
    transport = FakeTransport()

    def applied_then_reset() -> None:
        transport.objects["manifests/m"] = b"mine"
        raise classify(RESET)

    transport.script = [applied_then_reset]
    store, _ = make_store(transport)
    assert store.put_if_absent("manifests/m", b"mine") is True


def test_put_if_absent_after_a_fault_still_loses_to_another_writer() -> None:
    transport = FakeTransport(RESET, objects={"manifests/m": b"theirs"})
    store, _ = make_store(transport)
    assert store.put_if_absent("manifests/m", b"mine") is False


def test_conflict_409_on_create_is_retried() -> None:
    conflict = obstore_error(409, "ConditionalRequestConflict", AlreadyExistsError)
    transport = FakeTransport(conflict)
    store, sleeps = make_store(transport)
    assert store.put_if_absent("manifests/m", b"mine") is True
    assert len(sleeps) == 1


def test_server_ignoring_if_none_match_is_refused() -> None:
    class Ignoring(FakeTransport):
        def put(self, key: str, data: bytes | memoryview, *, create: bool) -> None:
            self._next("put", key)
            self.objects[key] = bytes(data)  # a create that always succeeds

    transport = Ignoring()
    store, _ = make_store(transport, check_conditional_writes=True)
    with pytest.raises(StoreError, match="ignores conditional writes"):
        store.put_if_absent("manifests/m", b"x")
    assert "manifests/m" not in transport.objects
    assert transport.objects == {}  # the probe object was removed again


def test_conditional_write_check_runs_once_and_cleans_up() -> None:
    transport = FakeTransport()
    store, _ = make_store(transport, check_conditional_writes=True)
    assert store.put_if_absent("manifests/a", b"1") is True
    assert store.put_if_absent("manifests/b", b"2") is True
    probes = [key for op, key in transport.calls if key.startswith(".docksnap-probe/")]
    assert len(probes) == 3  # create, create again (412), delete
    assert set(transport.objects) == {"manifests/a", "manifests/b"}


def test_list_resumes_after_a_fault_without_repeats_or_gaps() -> None:
    keys = [f"chunks/{n:02d}" for n in range(6)] + ["config"]
    transport = FakeTransport(objects={key: b"x" for key in keys})
    transport.script = [None, None, RESET, RESET, None]  # faults after two pages
    store, sleeps = make_store(transport)
    listed = [info.key for info in store.list("chunks/")]
    assert listed == keys[:-1]
    assert len(sleeps) == 2


def test_list_gives_up_when_faults_persist() -> None:
    transport = FakeTransport(objects={"chunks/a": b"x"})
    transport.script = [RESET] * 10
    store, _ = make_store(transport)
    with pytest.raises(StoreUnavailableError, match="list chunks/"):
        list(store.list("chunks/"))


def test_get_range_short_read_is_an_error() -> None:
    transport = FakeTransport(objects={"k": b"0123456789"})
    store, _ = make_store(transport)
    assert store.get_range("k", 2, 3) == b"234"
    with pytest.raises(StoreError, match="past the object's end"):
        store.get_range("k", 8, 5)
    assert store.get_range("k", 100, 0) == b""


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/./b", "a/../b", ".hidden", "a/.tmp", "a\x00b"]
)
def test_bad_keys_are_refused_before_any_request(key: str) -> None:
    transport = FakeTransport()
    store, _ = make_store(transport)
    with pytest.raises(InvalidArgumentError):
        store.put(key, b"x")
    assert transport.calls == []


def test_requests_in_flight_are_bounded_by_max_connections() -> None:
    in_flight = peak = 0
    lock = threading.Lock()

    def slow() -> bytes:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        return b"x"

    transport = FakeTransport(*[slow] * 32)
    store, _ = make_store(transport, max_connections=3)
    threads = [threading.Thread(target=store.get, args=(f"k{n}",)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 3


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=8, base_delay=0.1, max_delay=1.0)
    assert [policy.ceiling(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    with pytest.raises(InvalidArgumentError):
        RetryPolicy(attempts=0)


# --- configuration from a URL and the environment -------------------------------------------

ENV = {
    "AWS_ACCESS_KEY_ID": "AKID",
    "AWS_SECRET_ACCESS_KEY": "SECRET",
    "AWS_ENDPOINT_URL": "https://s3.example.com",
    "AWS_REGION": "eu-west-1",
}


def test_from_url_takes_the_environment() -> None:
    config = S3Config.from_url("s3://bucket/some/prefix/", ENV)
    assert (config.bucket, config.prefix) == ("bucket", "some/prefix")
    assert config.endpoint == "https://s3.example.com"
    assert config.region == "eu-west-1"
    assert (config.access_key_id, config.secret_access_key) == ("AKID", "SECRET")
    assert config.url == "s3://bucket/some/prefix?endpoint=https://s3.example.com"
    assert S3Config.from_url(config.url, {}).endpoint == config.endpoint  # reopens
    assert "SECRET" not in repr(config)


def test_url_parameters_win_over_the_environment() -> None:
    url = (
        "s3://bkt?endpoint=http://127.0.0.1:7480&region=us-east-1&max_connections=4&max_attempts=2"
    )
    config = S3Config.from_url(url, ENV)
    assert config.endpoint == "http://127.0.0.1:7480"
    assert config.region == "us-east-1"
    assert config.max_connections == 4
    assert config.retry.attempts == 2
    assert config.prefix == ""
    assert config.url == "s3://bkt?endpoint=http://127.0.0.1:7480"


def test_s3_specific_endpoint_variable_wins() -> None:
    env = {**ENV, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"}
    assert S3Config.from_url("s3://bkt", env).endpoint == "http://127.0.0.1:9000"


def test_defaults_without_environment() -> None:
    config = S3Config.from_url("s3://bkt/p", {})
    assert config.url == "s3://bkt/p"
    assert config.endpoint is None
    assert config.region == "us-east-1"
    assert config.access_key_id is None
    assert config.where == "AWS S3 (us-east-1)"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://bkt?secret_access_key=x", "credentials do not belong"),
        ("s3://bkt?endpoint=http://h&bogus=1", "unknown parameter"),
        ("s3://bkt?endpoint=ftp://h", "http:// or https://"),
        ("s3://bkt?endpoint=http://h/path", "scheme://host"),
        ("s3://bkt?max_connections=0", "positive integer"),
        ("s3://bkt/a/../c", "invalid S3 key prefix"),
        ("s3://", "not an S3 store URL"),
        ("file:///x", "not an S3 store URL"),
        ("s3://Bad Bucket", "invalid S3 bucket"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        S3Config.from_url(url, {})


def test_open_store_maps_s3_urls_to_the_chunked_store() -> None:
    """No Docker client is needed, or made, for an object-store URL."""
    from docksnap.store import open_store
    from docksnap.store.chunked import ChunkedStore

    store = open_store("s3://bucket/prefix?endpoint=http://127.0.0.1:1")
    assert isinstance(store, ChunkedStore)
    assert store.url == "s3://bucket/prefix?endpoint=http://127.0.0.1:1"
    assert isinstance(store.objects, S3ObjectStore)


def test_replace_keeps_validation() -> None:
    config = S3Config(bucket="bkt")
    with pytest.raises(InvalidArgumentError):
        replace(config, max_connections=0)


def test_open_store_needs_an_engine_only_for_docker_volumes() -> None:
    from docksnap.store import open_store

    with pytest.raises(InvalidArgumentError, match="needs a Docker engine"):
        open_store("docker-volume:")

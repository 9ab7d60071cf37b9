"""Pure logic of docksnap serve: tokens, sessions, problems, bind rules, reading members."""

from __future__ import annotations

import hmac
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docksnap.cli.exits import EXIT_CODES, ExitCode
from docksnap.errors import (
    InvalidArgumentError,
    InvalidPathError,
    SnapshotNotFoundError,
    UnsafeArchiveError,
)
from docksnap.http import auth
from docksnap.http.auth import Authenticator, load_token
from docksnap.http.files import member_bytes, member_path
from docksnap.http.problems import problem_for, type_uri
from docksnap.http.server import Listen, check_listen, is_loopback
from docksnap.tarstream import TarIndexer

TOKEN = "a-test-token-that-is-long-enough"  # noqa: S105


# -- problems ---------------------------------------------------------------------------


def test_every_error_class_of_the_cli_table_has_a_problem_type_and_status() -> None:
    for cls, code in EXIT_CODES.items():
        if not issubclass(cls, Exception) or code in (ExitCode.BROKEN_PIPE,):
            continue
        status, document = problem_for(_instance(cls))
        assert document["type"] == type_uri(code)
        assert document["exit_code"] == int(code)
        assert 400 <= status < 600


def _instance(cls: type[BaseException]) -> BaseException:
    try:
        return cls("x")
    except (TypeError, AttributeError):  # constructors that take a report or conflicts
        return cls.__new__(cls)


def test_problem_types_are_stable_names_of_the_exit_codes() -> None:
    assert type_uri(ExitCode.SNAPSHOT_NOT_FOUND) == "urn:docksnap:problem:snapshot-not-found"
    status, document = problem_for(SnapshotNotFoundError("0"))
    assert (status, document["exit_code"], document["error"]) == (404, 6, "SnapshotNotFoundError")
    status, document = problem_for(UnsafeArchiveError("../x", "climbs out"))
    assert (status, document["type"]) == (400, "urn:docksnap:problem:archive-refused")


def test_an_unexpected_error_hides_its_message() -> None:
    status, document = problem_for(RuntimeError("secret at /root/.config"))
    assert status == 500
    assert "secret" not in document["detail"]
    assert document["type"] == "urn:docksnap:problem:unexpected"


# -- tokens and sessions ------------------------------------------------------------------


def test_a_wrong_token_is_refused_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    # auth calls hmac.compare_digest through the module, so patching the module is seen.
    monkeypatch.setattr(hmac, "compare_digest", spy)
    checker = Authenticator(TOKEN)
    wrong = "b" + TOKEN[1:]
    assert not checker.check_bearer(f"Bearer {wrong}")
    assert calls == [(wrong.encode(), TOKEN.encode())]
    assert checker.check_bearer(f"bearer {TOKEN}")
    assert not checker.check_bearer(f"Basic {TOKEN}")
    assert not checker.check_bearer(None)


def test_sessions_expire_resist_tampering_and_die_with_the_token() -> None:
    checker = Authenticator(TOKEN)
    session = checker.new_session(now=1000.0)
    assert checker.check_session(session, now=1001.0)
    assert not checker.check_session(session, now=1000.0 + auth.SESSION_SECONDS + 1)
    expiry, nonce, mac = session.split(".")
    assert not checker.check_session(f"{int(expiry) + 9999}.{nonce}.{mac}", now=1001.0)
    flipped = "1" if session.endswith("0") else "0"  # a real change, whatever the mac
    assert not checker.check_session(session[:-1] + flipped, now=1001.0)
    assert not Authenticator(TOKEN + "x").check_session(session, now=1001.0)
    assert not checker.check_session(TOKEN)
    assert not checker.check_session(None)


def test_csrf_tokens_are_per_session_and_are_not_sessions() -> None:
    checker = Authenticator(TOKEN)
    one, two = checker.new_session(), checker.new_session()
    assert checker.check_csrf(one, checker.csrf_token(one))
    assert not checker.check_csrf(two, checker.csrf_token(one))
    assert not checker.check_csrf(one, None)
    assert not checker.check_session(checker.csrf_token(one))


def test_the_token_file_is_created_private_once_and_then_read(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "api-token"
    made = load_token(path, env={})
    assert made.created
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_token(path, env={})
    assert (again.token, again.created) == (made.token, False)
    assert load_token(path, env={auth.TOKEN_ENV: TOKEN}).token == TOKEN


def test_a_token_file_others_can_read_or_a_short_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text(TOKEN)
    os.chmod(path, 0o644)
    with pytest.raises(InvalidArgumentError, match="chmod 600"):
        load_token(path, env={})
    with pytest.raises(InvalidArgumentError, match="shorter"):
        load_token(path, env={auth.TOKEN_ENV: "short"})


# -- where the server may listen ---------------------------------------------------------


def test_only_loopback_may_listen_without_tls(tmp_path: Path) -> None:
    check_listen(Listen("127.0.0.1"))
    check_listen(Listen("::1"))
    check_listen(Listen("localhost"))
    with pytest.raises(InvalidArgumentError, match="without TLS"):
        check_listen(Listen("0.0.0.0"))  # noqa: S104
    with pytest.raises(InvalidArgumentError, match="without TLS"):
        check_listen(Listen("192.0.2.1"))
    check_listen(Listen("0.0.0.0", insecure=True))  # noqa: S104
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    check_listen(Listen("0.0.0.0", tls_cert=cert, tls_key=key))  # noqa: S104
    with pytest.raises(InvalidArgumentError, match="go together"):
        check_listen(Listen("127.0.0.1", tls_cert=cert))
    assert not is_loopback("192.0.2.1")
    assert is_loopback("127.0.0.2")


# -- paths and members ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["..", "../x", "a/../../b", "a/..", "x\0y"])
def test_member_paths_refuse_dot_dot_and_nul(bad: str) -> None:
    with pytest.raises(InvalidPathError):
        member_path(bad)


def test_member_paths_are_index_paths() -> None:
    assert member_path("/a//b/./c/") == "a/b/c"
    assert member_path("") == member_path("/") == member_path("./") == "."


class _Reader:
    def __init__(self, data: bytes, piece: int) -> None:
        self._data = data
        self._piece = piece

    @property
    def size(self) -> int:
        return len(self._data)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._data), self._piece):
            yield self._data[i : i + self._piece]


def _archive(tar_format: int) -> tuple[bytes, dict[str, bytes]]:
    files = {
        "a.txt": b"hello",
        "empty": b"",
        "d/" + "long-name-" * 20: os.urandom(3000),
        "d/after": os.urandom(513),
        "last": os.urandom(1024),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        tar.addfile(tarfile.TarInfo("d"), None)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), files


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("piece", [1, 7, 512, 1000, 1 << 20])
async def test_member_bytes_reads_exactly_one_member(tar_format: int, piece: int) -> None:
    archive, files = _archive(tar_format)
    indexer = TarIndexer()
    indexer.feed(archive)
    entries = {e.path: e for e in indexer.finish()}
    for name, data in files.items():
        pieces = [p async for p in member_bytes(_Reader(archive, piece), entries[name])]
        assert b"".join(pieces) == data, name


def test_other_commands_never_import_the_asgi_stack() -> None:
    script = (
        "import sys; from docksnap.cli.main import cli; "
        "names = cli.list_commands(None); "
        "assert 'serve' in names, names; "
        "assert not {'fastapi', 'uvicorn', 'starlette', 'docksnap.http'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    shown = subprocess.run(
        [sys.executable, "-m", "docksnap", "serve", "--help"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "--tls-cert" in shown

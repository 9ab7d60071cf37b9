"""The /v1 API of a real ``docksnap serve`` over loopback, on the real engine."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from docksnap.cli.exits import ExitCode
from docksnap.http.problems import type_uri
from tests.conftest import TEST_IMAGE, unique_name
from tests.http.conftest import EXE, TOKEN, Server, free_port, start_server
from tests.tarcraft import member, tar_of

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
COMMITTED_OPENAPI = REPO / "docs" / "openapi.json"
DATA = (
    "mkdir -p /w/sub && printf hello > /w/a.txt && echo one > /w/sub/b.txt"
    " && ln -s a.txt /w/link && head -c 3000000 /dev/urandom > /w/sub/big.bin"
)


def assert_problem(response: httpx.Response, status: int, code: ExitCode | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    if code is not None:
        assert problem["type"] == type_uri(code)
        assert problem["exit_code"] == int(code)
    return problem


def members(archive: bytes) -> list[tuple[str, int, bytes]]:
    found = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m) if m.isfile() else None
            content = data.read() if data is not None else b""
            found.append((m.name.removeprefix("./"), m.mode & 0o7777, content))
    return found


def tar_member(archive: bytes, path: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        extracted = tar.extractfile("./" + path)  # Docker names members ./path
        assert extracted is not None
        return extracted.read()


# -- authentication ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/snapshots"), ("GET", "/v1/openapi.json"), ("POST", "/v1/snapshots/import")],
)
def test_no_token_is_401(server: Server, method: str, path: str) -> None:
    response = httpx.request(method, server.base_url + path, content=b"x" * 10)
    problem = assert_problem(response, 401, None)
    assert problem["type"] == "urn:docksnap:problem:unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer " + "x" * len(TOKEN),  # same length: only a constant-time compare refuses it
        "Bearer " + TOKEN[:-1],
        "Bearer " + TOKEN + "x",
        "Basic " + TOKEN,
        TOKEN,
    ],
)
def test_wrong_token_is_401(server: Server, header: str) -> None:
    response = httpx.get(server.base_url + "/v1/snapshots", headers={"Authorization": header})
    assert_problem(response, 401, None)


def test_a_dashboard_page_without_a_session_redirects_to_the_login_form(server: Server) -> None:
    response = httpx.get(server.base_url + "/store")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"


# -- the main flow ------------------------------------------------------------------------


def test_snapshot_restore_files_download_diff(server: Server) -> None:
    api = server.api
    box = server.start_box(DATA)
    record = server.snapshot(box, "/w/", name="first")
    assert set(record) >= {"id", "size", "dir", "name", "digest", "created_at"}
    assert (record["dir"], record["name"]) == ("/w", "first")

    info = api.get(f"/v1/snapshots/{record['id']}").json()
    # paused_s and capture describe the snapshot request, not the stored record.
    assert record.pop("paused_s") >= 0
    assert record.pop("capture") == "host"  # the test engine is local, docksnap is root
    assert info["snapshot"] == record
    assert info["source"]["container"] == box
    # What the save added: at least the incompressible 3 MB file, compressed or not.
    assert info["stored_size"] > 3_000_000

    # Restore into a new container at another mount point, change it, snapshot it again.
    other = server.start_box(
        "printf ' more' >> /data/a.txt && rm /data/sub/b.txt && echo new > /data/new.txt",
        snapshots=[{"id": record["id"], "mount_point": "/data"}],
    )
    assert api.get(f"/v1/containers/{other}").json() == {"name": other, "running": True}
    second = server.snapshot(other, "/data", name="second")

    tree = api.get(f"/v1/snapshots/{record['id']}/files", params={"prefix": "sub"}).json()
    assert [e["path"] for e in tree["items"]] == ["sub", "sub/b.txt", "sub/big.bin"]

    archive = api.get(f"/v1/snapshots/{record['id']}/export").content
    for path in ("a.txt", "sub/big.bin"):
        response = api.get(f"/v1/snapshots/{record['id']}/files/{path}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.content == tar_member(archive, path)
    downloaded = api.get(f"/v1/snapshots/{second['id']}/files/a.txt").content
    assert downloaded == b"hello more"

    diff = api.get(f"/v1/snapshots/{record['id']}/diff/{second['id']}").json()
    assert [e["path"] for e in diff["added"]] == ["new.txt"]
    assert [e["path"] for e in diff["removed"]] == ["sub/b.txt"]
    changed = {c["path"]: c["fields"] for c in diff["changed"]}
    assert "size" in changed["a.txt"]


def test_list_filters_search_and_paging(server: Server) -> None:
    box = server.start_box("mkdir -p /p && echo x > /p/f")
    label = unique_name("paged")
    made = [server.snapshot(box, "/p", name=label)["id"] for _ in range(3)]
    api = server.api
    by_name = api.get("/v1/snapshots", params={"name": label}).json()
    assert [i["snapshot"]["id"] for i in by_name["items"]] == made[::-1]  # newest first
    assert api.get("/v1/snapshots", params={"container": box}).json()["total"] == 3
    assert api.get("/v1/snapshots", params={"q": label.upper()}).json()["total"] == 3
    first = api.get("/v1/snapshots", params={"name": label, "limit": 2}).json()
    assert (len(first["items"]), first["next_offset"]) == (2, 2)
    rest = api.get("/v1/snapshots", params={"name": label, "limit": 2, "offset": 2}).json()
    assert [i["snapshot"]["id"] for i in rest["items"]] == [made[0]]
    assert rest["next_offset"] is None

    assert api.delete(f"/v1/snapshots/{made[0]}").status_code == 204
    assert_problem(api.get(f"/v1/snapshots/{made[0]}"), 404, ExitCode.SNAPSHOT_NOT_FOUND)


@pytest.mark.parametrize(
    "path",
    [
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "sub/%2E%2E/%2E%2E/etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "link",  # a symlink in the snapshot: never followed
        "sub",  # a directory
        "missing.txt",
    ],
)
def test_a_download_cannot_leave_the_snapshot(server: Server, path: str) -> None:
    box = server.start_box("mkdir -p /w/sub && echo in > /w/a.txt && ln -s /etc/passwd /w/link")
    snapshot_id = server.snapshot(box, "/w")["id"]
    # A raw request: httpx would otherwise resolve dot segments before sending.
    url = httpx.URL(server.base_url).copy_with(
        raw_path=f"/v1/snapshots/{snapshot_id}/files/{path}".encode()
    )
    response = server.api.get(url)
    assert response.status_code in (400, 404), response.text
    assert b"root:" not in response.content
    assert response.headers["content-type"] == "application/problem+json"


# -- import and export ----------------------------------------------------------------------


def test_export_then_import_round_trips_byte_for_byte(server: Server) -> None:
    box = server.start_box(DATA)
    record = server.snapshot(box, "/w")
    exported = server.api.get(f"/v1/snapshots/{record['id']}/export")
    assert int(exported.headers["content-length"]) == record["size"] == len(exported.content)

    response = server.api.post(
        "/v1/snapshots/import",
        params={"dir": "/restored", "name": "imported"},
        content=iter(
            [exported.content[i : i + 65536] for i in range(0, len(exported.content), 65536)]
        ),
        headers={"content-type": "application/x-tar"},
    )
    assert response.status_code == 201, response.text
    info = response.json()
    assert (info["snapshot"]["dir"], info["source"]["container"]) == ("/restored", "")
    again = server.api.get(f"/v1/snapshots/{info['snapshot']['id']}/export").content
    # Imports are re-encoded canonically, so compare members, not bytes.
    assert members(again) == members(exported.content)


HOSTILE = {
    "/etc/evil": [(member("/etc/evil"), b"x")],
    "../escape": [(member("../escape"), b"x")],
    "a/../../escape": [(member("a", tarfile.DIRTYPE), b""), (member("a/../../escape"), b"x")],
    "link/evil": [
        (member("link", tarfile.SYMTYPE, linkname="/etc"), b""),
        (member("link/evil"), b"x"),
    ],
    "dev": [(member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), b"")],
}


@pytest.mark.parametrize("bad_member", sorted(HOSTILE))
def test_a_hostile_import_is_refused_and_nothing_is_stored(server: Server, bad_member: str) -> None:
    before = server.snapshot_ids()
    archive = tar_of([(member("fine.txt"), b"fine"), *HOSTILE[bad_member]])
    response = server.api.post("/v1/snapshots/import", params={"dir": "/d"}, content=archive)
    problem = assert_problem(response, 400, ExitCode.ARCHIVE_REFUSED)
    assert repr(bad_member) in problem["detail"]
    assert server.snapshot_ids() == before


def test_a_truncated_import_is_refused_and_nothing_is_stored(server: Server) -> None:
    before = server.snapshot_ids()
    truncated = tar_of([(member("f"), os.urandom(5000))])[:3000]
    response = server.api.post("/v1/snapshots/import", params={"dir": "/d"}, content=truncated)
    assert_problem(response, 400, ExitCode.ARCHIVE_REFUSED)
    assert server.snapshot_ids() == before


def test_request_bodies_have_a_size_limit_but_imports_do_not(server: Server) -> None:
    box = server.start_box("mkdir -p /w")
    huge = {"dir": "/w", "name": "n" * (2 << 20)}
    response = server.api.post(f"/v1/containers/{box}/snapshots", json=huge)
    assert_problem(response, 413, None)
    big = tar_of([(member("big.bin"), os.urandom(3 << 20))])
    assert (
        server.api.post("/v1/snapshots/import", params={"dir": "/d"}, content=big).status_code
        == 201
    )


# -- concurrency, progress, errors -----------------------------------------------------------


async def test_concurrent_snapshots_of_different_containers_all_succeed(server: Server) -> None:
    boxes = [server.start_box(f"mkdir -p /w && echo {i} > /w/which") for i in range(4)]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=120) as api:
        responses = await asyncio.gather(
            *(api.post(f"/v1/containers/{box}/snapshots", json={"dir": "/w"}) for box in boxes)
        )
        assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
        ids = [r.json()["id"] for r in responses]
        assert len(set(ids)) == 4
        for i, snapshot_id in enumerate(ids):
            content = await api.get(f"/v1/snapshots/{snapshot_id}/files/which")
            assert content.content == f"{i}\n".encode()


def read_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_long_operations_stream_progress_as_server_sent_events(server: Server) -> None:
    box = server.start_box("mkdir -p /w && head -c 20000000 /dev/urandom > /w/big")
    response = server.api.post(
        f"/v1/containers/{box}/snapshots",
        json={"dir": "/w"},
        headers={"accept": "text/event-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response)
    names = [name for name, _ in events]
    assert names[-1] == "result", names
    assert set(names[:-1]) == {"progress"}, names
    assert all(data["operation"] == "snapshot" for name, data in events[:-1])
    record = events[-1][1]
    assert record["size"] > 20_000_000
    # The library's progress hook counted the bytes, and routed them to this request.
    last = events[-2][1]
    assert (last["stage"], last["snapshot_id"], last["done"]) == (
        "snapshot",
        record["id"],
        record["size"],
    )

    restored = unique_name("ds-http")
    server.containers.append(restored)
    start = server.api.post(
        f"/v1/containers/{restored}",
        json={
            "image": TEST_IMAGE,
            "entrypoint": ["sleep", "1000"],
            "snapshots": [{"id": record["id"]}],
        },
        headers={"accept": "text/event-stream"},
    )
    events = read_events(start)
    assert events[-1][0] == "result"
    assert events[-1][1]["restores"][0]["id"] == record["id"]
    stages = {(data["stage"], data["done"]) for name, data in events if name == "progress"}
    assert ("restore", record["size"]) in stages

    verify = server.api.post(
        "/v1/store/verify", json={"read_data": True}, headers={"accept": "text/event-stream"}
    )
    final_name, final = read_events(verify)[-1]
    assert (final_name, final["ok"]) == ("result", True)

    missing = server.api.post(
        f"/v1/containers/{box}/snapshots",
        json={"dir": "/nowhere"},
        headers={"accept": "text/event-stream"},
    )
    name, problem = read_events(missing)[-1]
    assert (name, problem["type"]) == ("problem", type_uri(ExitCode.DIRECTORY_NOT_FOUND))


def _start_with_events(server: Server, snapshot_id: str) -> tuple[str, list[tuple[str, Any]]]:
    name = unique_name("ds-http")
    server.containers.append(name)
    body = {
        "image": TEST_IMAGE,
        "entrypoint": ["sleep", "1000"],
        "snapshots": [{"id": snapshot_id}],
    }
    response = server.api.post(
        f"/v1/containers/{name}", json=body, headers={"accept": "text/event-stream"}
    )
    return name, read_events(response)


def test_the_restore_cache_over_http(server: Server) -> None:
    """List, remove and prune the restore cache as `docksnap cache` does, with the
    same errors; a warm restore (served from the cache) reports its progress as the
    cold one (which filled the cache) did."""
    box = server.start_box("mkdir -p /w && head -c 2000000 /dev/urandom > /w/f")
    record = server.snapshot(box, "/w")
    restored = []
    for _ in ("cold", "warm"):
        name, events = _start_with_events(server, record["id"])
        assert events[-1][0] == "result", events
        progress = [data for kind, data in events if kind == "progress"]
        assert progress, events
        last = progress[-1]
        assert (last["stage"], last["snapshot_id"]) == ("restore", record["id"])
        assert (last["done"], last["total"]) == (record["size"], record["size"])
        restored.append(name)

    listing = server.api.get("/v1/cache")
    assert listing.status_code == 200, listing.text
    document = listing.json()
    (entry,) = [e for e in document["items"] if e["snapshot_id"] == record["id"]]
    assert (entry["complete"], entry["in_use"], entry["references"]) == (True, True, 4)
    assert entry["size"] == record["size"]
    assert entry["name"].startswith("docksnap-cache-")
    assert document["size_limit"] > 0
    assert document["size"] >= entry["size"]

    busy = server.api.delete(f"/v1/cache/{record['id']}")
    assert entry["name"] in assert_problem(busy, 409, ExitCode.CONTAINER)["detail"]
    pruned = server.api.post("/v1/cache/prune")
    assert pruned.status_code == 200, pruned.text
    assert entry["name"] not in pruned.json()["removed"]

    for name in restored:
        assert server.api.delete(f"/v1/containers/{name}").status_code == 204
    removed = server.api.delete(f"/v1/cache/{entry['name']}")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"removed": [entry["name"]]}
    again = server.api.delete(f"/v1/cache/{record['id']}")
    assert record["id"] in assert_problem(again, 404, ExitCode.SNAPSHOT_NOT_FOUND)["detail"]
    for bad in ("nothing-like-an-entry", "docksnap-cache-" + "g" * 32):
        assert_problem(server.api.delete(f"/v1/cache/{bad}"), 400, None)


def test_an_import_streams_progress_as_server_sent_events(server: Server) -> None:
    """The import is evented too: its events stream while the handler still reads the body."""
    archive = tar_of([(member("big.bin"), os.urandom(12_000_000)), (member("a"), b"a")])
    response = server.api.post(
        "/v1/snapshots/import",
        params={"dir": "/imported"},
        content=archive,  # a Content-Length: the events' total
        headers={"accept": "text/event-stream", "content-type": "application/x-tar"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response)
    names = [name for name, _ in events]
    assert names[-1] == "result", names
    assert set(names[:-1]) == {"progress"}, names
    info = events[-1][1]
    assert info["snapshot"]["dir"] == "/imported"
    assert info["snapshot"]["id"] in server.snapshot_ids()
    last = events[-2][1]
    assert (last["operation"], last["stage"], last["snapshot_id"]) == (
        "import",
        "import",
        info["snapshot"]["id"],
    )
    assert last["done"] == last["total"] == len(archive)

    # Refused mid-stream (the body in pieces, no length): a problem event, nothing stored.
    before = server.snapshot_ids()
    hostile = tar_of([(member("fine.bin"), os.urandom(3_000_000)), (member("../escape"), b"x")])
    refused = server.api.post(
        "/v1/snapshots/import",
        params={"dir": "/d"},
        content=iter([hostile[i : i + 65536] for i in range(0, len(hostile), 65536)]),
        headers={"accept": "text/event-stream"},
    )
    assert refused.status_code == 200
    name, problem = read_events(refused)[-1]
    assert (name, problem["type"]) == ("problem", type_uri(ExitCode.ARCHIVE_REFUSED))
    assert "'../escape'" in problem["detail"]
    assert server.snapshot_ids() == before


def test_errors_carry_the_cli_exit_code_and_its_type(server: Server) -> None:
    api = server.api
    unknown = "3f2a9c1e-0b7d-4c55-9a57-1f0e4d2b8a61"
    assert_problem(api.get(f"/v1/snapshots/{unknown}"), 404, ExitCode.SNAPSHOT_NOT_FOUND)
    box = server.start_box("true")
    assert_problem(
        api.post(f"/v1/containers/{box}/snapshots", json={"dir": "/nowhere"}),
        404,
        ExitCode.DIRECTORY_NOT_FOUND,
    )
    assert_problem(
        api.post(f"/v1/containers/{box}/snapshots", json={"dir": "relative"}),
        400,
        ExitCode.USAGE,
    )
    start = {"image": "docksnap-test:latest", "snapshots": [{"id": unknown}]}
    name = unique_name("ds-http")
    assert_problem(api.post(f"/v1/containers/{name}", json=start), 404, ExitCode.SNAPSHOT_NOT_FOUND)
    missing_image = {"image": "docksnap-no-such-image:never"}
    server.containers.append(name)
    assert_problem(api.post(f"/v1/containers/{name}", json=missing_image), 422, ExitCode.DOCKER)
    assert_problem(
        api.post(f"/v1/containers/{box}", json={"image": "docksnap-test:latest"}),
        409,
        ExitCode.CONTAINER,
    )
    invalid = assert_problem(
        api.post(f"/v1/containers/{box}/signal", json={"signal": 99}), 400, None
    )
    assert invalid["type"] == "urn:docksnap:problem:bad-request"
    assert_problem(api.get("/v1/nothing-here"), 404, None)


def test_signal_and_destroy(server: Server) -> None:
    box = server.start_box("trap 'exit 0' TERM; touch /tmp/ds-ready; while :; do sleep 0.1; done")
    assert server.api.post(f"/v1/containers/{box}/signal", json={"signal": 15}).status_code == 200
    for _ in range(100):
        if not server.api.get(f"/v1/containers/{box}").json()["running"]:
            break
    assert server.api.get(f"/v1/containers/{box}").json()["running"] is False
    assert_problem(
        server.api.post(f"/v1/containers/{box}/signal", json={"signal": 15}),
        409,
        ExitCode.CONTAINER,
    )
    assert server.api.delete(f"/v1/containers/{box}").status_code == 204
    assert server.api.delete(f"/v1/containers/{box}").status_code == 204  # idempotent


def test_gc_stats_and_history(server: Server) -> None:
    gc = server.api.post("/v1/store/gc", json={"grace": 0})
    assert gc.status_code == 200
    assert set(gc.json()) == {
        "expired",
        "objects_deleted",
        "bytes_deleted",
        "objects_kept_young",
        "orphans",
    }
    stats = server.api.get("/v1/store/stats").json()
    assert stats["store"] == server.store
    # Samples are taken in the background after each change: wait for the last one.
    for _ in range(100):
        samples = server.api.get("/v1/store/history").json()["samples"]
        if samples and samples[-1]["logical_bytes"] == stats["logical_bytes"]:
            break
        time.sleep(0.1)
    assert samples
    assert samples[-1]["logical_bytes"] == stats["logical_bytes"]


# -- the dashboard, without a browser -------------------------------------------------------


def test_dashboard_pages_escape_what_snapshots_contain(server: Server) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    archive = tar_of([(member(hostile), b"x")])
    response = server.api.post(
        "/v1/snapshots/import", params={"dir": "/xss", "name": hostile}, content=archive
    )
    assert response.status_code == 201, response.text
    snapshot_id = response.json()["snapshot"]["id"]
    with httpx.Client(base_url=server.base_url) as browser:
        login = browser.post("/login", data={"token": TOKEN})
        assert login.status_code == 303
        assert "docksnap_session" in browser.cookies
        for page in ("/?q=onerror", f"/snapshots/{snapshot_id}"):
            text = browser.get(page).text
            assert hostile not in text
            assert "&lt;img src=x onerror=" in text
        # The cookie alone does not change state: the CSRF header is missing.
        assert_problem(browser.post("/v1/store/gc", json={}), 403, None)
        assert browser.delete(f"/v1/snapshots/{snapshot_id}").status_code == 403


# -- the OpenAPI document --------------------------------------------------------------------


def test_the_openapi_document_matches_the_committed_copy(server: Server) -> None:
    live = server.api.get("/v1/openapi.json").json()
    assert live["openapi"].startswith("3.1")
    if os.environ.get("DOCKSNAP_UPDATE_OPENAPI"):
        COMMITTED_OPENAPI.write_text(json.dumps(live, indent=2, ensure_ascii=False) + "\n")
    committed = json.loads(COMMITTED_OPENAPI.read_text())
    assert live == committed, (
        "the API changed: if on purpose, regenerate docs/openapi.json with "
        "DOCKSNAP_UPDATE_OPENAPI=1 scripts/test tests/http/test_api.py -k openapi"
    )


# -- starting the server ----------------------------------------------------------------------


PUBLIC = "0.0.0.0"  # noqa: S104 (refused before anything binds)


def test_serve_refuses_a_public_address_without_tls(tmp_path: Path) -> None:
    assert EXE is not None
    env = {**os.environ, "DOCKSNAP_API_TOKEN": TOKEN}
    proc = subprocess.run(
        [EXE, "serve", "--host", PUBLIC, "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == int(ExitCode.USAGE)
    assert b"without TLS" in proc.stderr


def test_serve_over_tls_with_secure_cookies(docker_engine: None, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run([*openssl, *subject], check=True, capture_output=True)
    server = start_server(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https")
    try:
        assert server.api.get("/v1/snapshots").status_code == 200
        login = server.api.post("/login", data={"token": TOKEN})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        for attribute in ("secure", "httponly", "samesite=strict"):
            assert attribute in cookie
    finally:
        server.stop()


def test_the_token_file_is_created_0600_and_printed_once(
    docker_engine: None, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    first = start_server(tmp_path, "--token-file", str(token_file), token=None)
    first.stop()
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert token in first.log.read_text()
    second = start_server(tmp_path, "--token-file", str(token_file), token=None)
    try:
        authorized = {"Authorization": f"Bearer {token}"}
        assert httpx.get(second.base_url + "/v1/snapshots", headers=authorized).status_code == 200
    finally:
        second.stop()
    assert token not in second.log.read_text()

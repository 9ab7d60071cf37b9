"""A real ``docksnap serve`` process on loopback, against the real engine and a fresh store.

The server runs as the installed console script, in its own process, exactly as
a user starts it; tests talk to it over loopback with httpx (or a browser).
Everything it creates on the engine carries this session's label through
``DOCKSNAP_LABELS``, so the session's leak check covers it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SESSION_ID, SESSION_LABEL, TEST_IMAGE, unique_name

EXE = shutil.which("docksnap", path=str(Path(sys.executable).parent))
READY = "/tmp/ds-ready"
TOKEN = "test-token-" + "0123456789abcdef" * 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A running ``docksnap serve``; ``api`` is an httpx client with the bearer token."""

    process: subprocess.Popen[bytes]
    base_url: str
    store: str
    log: Path
    api: httpx.Client
    containers: list[str] = field(default_factory=list)

    def start_box(self, script: str, name: str | None = None, **extra: Any) -> str:
        """Start a container running ``script`` then sleeping; destroyed at teardown.

        Returns once the script has run (it touches a marker file when done).
        """
        name = name or unique_name("ds-http")
        self.containers.append(name)
        command = f"{script}\ntouch {READY}\nexec sleep 1000"
        body = {"image": TEST_IMAGE, "entrypoint": ["sh", "-c", command]}
        response = self.api.post(f"/v1/containers/{name}", json={**body, **extra})
        assert response.status_code == 201, response.text
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "exec", name, "test", "-e", READY], check=False).returncode:
            assert time.monotonic() < deadline, f"the script of {name} did not finish"
            time.sleep(0.1)
        return name

    def snapshot(self, container: str, dir: str, name: str | None = None) -> dict[str, Any]:
        response = self.api.post(
            f"/v1/containers/{container}/snapshots", json={"dir": dir, "name": name}
        )
        assert response.status_code == 201, response.text
        record: dict[str, Any] = response.json()
        return record

    def snapshot_ids(self) -> set[str]:
        page = self.api.get("/v1/snapshots", params={"limit": 1000}).json()
        return {item["snapshot"]["id"] for item in page["items"]}

    def stop(self) -> None:
        for name in self.containers:
            self.api.delete(f"/v1/containers/{name}")
        self.api.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    root: Path,
    *extra_args: str,
    store: str | None = None,
    token: str | None = TOKEN,
    scheme: str = "http",
) -> Server:
    """Start ``docksnap serve``; with ``token=None`` it makes its own token file."""
    assert EXE is not None, "the docksnap console script is not installed in this venv"
    port = free_port()
    store = store or (root / "store").as_uri()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.pop("DOCKSNAP_API_TOKEN", None)
    if token is not None:
        env["DOCKSNAP_API_TOKEN"] = token
    env |= {
        "DOCKSNAP_STORE": store,
        "DOCKSNAP_LABELS": f"{SESSION_LABEL}={SESSION_ID}",
        "XDG_CONFIG_HOME": str(root / "config"),
    }
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [EXE, "serve", "--port", str(port), "--state-dir", str(root / "state"), *extra_args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base_url = f"{scheme}://127.0.0.1:{port}"
    api = httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
        verify=False,  # noqa: S501 (the TLS test's certificate is self-signed)
    )
    server = Server(process, base_url, store, log, api)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"docksnap serve exited: {log.read_text()}")
        try:
            # The login page needs no token: it answers once the app has started.
            if api.get("/login").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"docksnap serve did not answer in 60 s: {log.read_text()}")


@pytest.fixture(scope="module")
def server(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per test module, with a store of its own."""
    running = start_server(tmp_path_factory.mktemp("serve"))
    try:
        yield running
    finally:
        running.stop()

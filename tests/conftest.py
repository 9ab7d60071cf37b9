"""Shared fixtures: a real Docker engine, per-session labels, and a leak check.

Tests of Docker behaviour need a real engine; `scripts/test` brings one up.
Without one they fail rather than skip, so that CI can never pass by testing
nothing (set DOCKSNAP_ALLOW_SKIP=1 to skip them on a laptop without Docker).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import docksnap
from docksnap.docker import DockerClient
from docksnap.errors import DockerError, DockerUnavailableError
from tests.s3support import S3Server, session_bucket

TEST_IMAGE = "docksnap-test:latest"
ALT_IMAGE = "docksnap-test-alt:latest"
SESSION_LABEL = "docksnap-test.session"
SESSION_ID = uuid.uuid4().hex[:12]
SESSION_LABELS = {SESSION_LABEL: SESSION_ID}


def _engine_answers() -> str | None:
    async def ping() -> None:
        docker = DockerClient()
        try:
            await docker.ping()
        finally:
            await docker.aclose()

    try:
        # In a thread of its own: this may be first asked for inside a running loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, ping()).result()
    except DockerUnavailableError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A real Docker engine answers at DOCKER_HOST (or the default socket)."""
    problem = _engine_answers()
    if problem is None:
        return
    if os.environ.get("DOCKSNAP_ALLOW_SKIP"):
        pytest.skip(problem)
    pytest.fail(f"{problem}; run the tests with scripts/test, which starts an engine")


@pytest.fixture(scope="session", autouse=True)
def no_leaks() -> Iterator[None]:
    """After the whole session, nothing this session created is left on the engine
    (containers, volumes, and the images whole-container restores make)."""
    yield
    if _engine_answers() is not None:
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _prune_restore_cache()).result()
    label = f"label={SESSION_LABEL}={SESSION_ID}"
    leftovers = docker("ps", "-aq", "--filter", label).split()
    volumes = docker("volume", "ls", "-q", "--filter", label).split()
    images = docker("images", "-q", "--filter", label).split()
    networks = docker("network", "ls", "-q", "--filter", label).split()
    assert not leftovers, f"containers leaked by the tests: {leftovers}"
    assert not images, f"images leaked by the tests: {images}"
    assert not volumes, f"volumes leaked by the tests: {volumes}"
    assert not networks, f"networks leaked by the tests: {networks}"


async def _prune_restore_cache() -> None:
    """Restore cache entries outlive their restores by design; the session's go now,
    on the test engine and on the second one (``DOCKSNAP_TEST_DOCKER_HOST_B``).

    Only entries no container reads are pruned: one still in use, and every view
    and upper volume (role restore), is left for the checks below to report.
    """
    hosts = [None, os.environ.get("DOCKSNAP_TEST_DOCKER_HOST_B") or None]
    for host in dict.fromkeys(hosts):
        with contextlib.suppress(DockerUnavailableError):
            async with docksnap.Client(
                docker_host=host, store="file:///nonexistent", labels=SESSION_LABELS
            ) as client:
                await client.cache.prune(grace=0)


def cache_at_rest(docker_host: str | None = None) -> set[str]:
    """This session's restore cache entries that are complete and that no volume
    references: the cache doing its job, not a leak (the session prunes them at its
    end). An incomplete entry, a view or an upper volume is a leak."""
    env = {**os.environ, "DOCKER_HOST": docker_host} if docker_host else None

    def docker(*args: str) -> list[str]:
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, check=True, env=env
        ).stdout.split()

    session = f"label={SESSION_LABEL}={SESSION_ID}"
    entries = docker(
        "volume", "ls", "-q", "--filter", session, "--filter", "label=io.docksnap.role=cache"
    )
    referenced = set()
    for view in docker("volume", "ls", "-q", "--filter", "label=io.docksnap.cache-entry"):
        referenced |= set(
            docker(
                "volume", "inspect", view, "--format", '{{index .Labels "io.docksnap.cache-entry"}}'
            )
        )
    at_rest = set()
    for entry in entries:
        [mountpoint] = docker("volume", "inspect", entry, "--format", "{{.Mountpoint}}")
        if entry not in referenced and Path(mountpoint, "complete.json").exists():
            at_rest.add(entry)
    return at_rest


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The real S3 server `scripts/test` started, with a bucket for this session.

    Fails without one (skips with DOCKSNAP_ALLOW_SKIP=1), like `docker_engine`.
    """
    with session_bucket() as server:
        yield server


@pytest.fixture
def s3_prefix(s3_server: S3Server) -> Iterator[str]:
    """A fresh key prefix in the session bucket, emptied after the test."""
    with s3_server.scratch() as prefix:
        yield prefix


def unique_name(prefix: str = "ds-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def docker(*args: str) -> str:
    """``docker ARGS`` (the CLI, as a user would type it); its stdout, stripped."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def network() -> Iterator[str]:
    """A user-defined bridge network with this session's label, removed afterwards."""
    name = unique_name("ds-net")
    session = f"{SESSION_LABEL}={SESSION_ID}"
    docker("network", "create", "--label", session, "--label", "io.docksnap.managed=true", name)
    yield name
    # Requested before the containers' fixtures, so it is torn down after them: a
    # network still in use cannot be removed (and the session leak check says so).
    subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)


@pytest.fixture(params=["chunked", "volume"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store docksnap ships, on this engine: the default and the seed's."""
    return (tmp_path / "store").as_uri() if request.param == "chunked" else "docker-volume:"


@pytest.fixture
async def client(docker_engine: None, store_url: str) -> AsyncIterator[docksnap.Client]:
    """A client on the real engine whose every resource carries this session's label."""
    async with session_client(store_url) as client:
        yield client


@contextlib.asynccontextmanager
async def session_client(store_url: str) -> AsyncIterator[docksnap.Client]:
    """A client with this session's labels on ``store_url``.

    Snapshots the test made are deleted afterwards (the volume store keeps them
    in Docker volumes, which would otherwise outlive the test).
    """
    async with docksnap.Client(store=store_url, labels=SESSION_LABELS) as client:
        try:
            yield client
        finally:
            if store_url == "docker-volume:":
                for snapshot_id in await session_volume_snapshots(client.docker):
                    await client.snapshots.delete(snapshot_id)
            # A chunked store lives in the test's own tmp_path and goes with it.


async def session_volume_snapshots(docker: DockerClient) -> list[str]:
    """Ids of the volume-store snapshots this session made (never another session's)."""
    volumes = await docker.list_volumes({SESSION_LABEL: SESSION_ID, "io.docksnap.meta": "true"})
    return [volume["Labels"]["io.docksnap.snapshot-id"] for volume in volumes]


@pytest.fixture
async def containers(client: docksnap.Client) -> AsyncIterator[list[docksnap.Container]]:
    """Append containers here; each is destroyed after the test."""
    made: list[docksnap.Container] = []
    yield made
    for box in made:
        await box.destroy()


async def root_of(client: docksnap.Client, box: docksnap.Container) -> Path:
    """The container's root as this host sees it (test set-up only: the code under
    test never walks a string path below it)."""
    info = await client.docker.inspect_container(box.name)
    return Path(f"/proc/{info['State']['Pid']}/root")


async def exported(client: docksnap.Client, snapshot_id: str) -> bytes:
    """A snapshot's tar stream, whole (small snapshots only)."""
    async with client.snapshots.export(snapshot_id) as reader:
        return b"".join([piece async for piece in reader])


async def read_file(client: docksnap.Client, container: str, path: str) -> bytes | None:
    """A file's bytes from a container (running or not), or None if it does not exist."""
    try:
        async with client.docker.get_archive(container, path) as archive:
            data = b"".join([piece async for piece in archive.chunks])
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        return member.read() if member else None


def sleeper(script: str = "") -> list[str]:
    """An entrypoint that runs ``script`` and then stays up."""
    return ["sh", "-c", f"{script}\nexec sleep 1000"] if script else ["sleep", "1000"]


async def running(
    client: docksnap.Client, boxes: list[docksnap.Container], script: str = "", **kwargs: object
) -> docksnap.Container:
    """Start a container (appended to ``boxes``, for the test to destroy) running
    ``script`` then sleeping; return once the script is done."""
    box = client.container(unique_name())
    boxes.append(box)
    await box.start(TEST_IMAGE, entrypoint=sleeper(script + "\ntouch /tmp/.ready"), **kwargs)  # type: ignore[arg-type]
    for _ in range(200):
        if await read_file(client, box.name, "/tmp/.ready") is not None:
            return box
        await asyncio.sleep(0.05)
    raise AssertionError("container script did not finish")

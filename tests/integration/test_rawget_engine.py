"""The archive GET read off the engine's unix socket (docker/rawget.py), on the real engine."""

from __future__ import annotations

import asyncio

import pytest

import docksnap
from tests.conftest import read_file, running
from tests.integration.test_core import Boxes, restored

pytestmark = pytest.mark.docker

ODD = "/tmp/d i&r#%+ü?=;x"  # every character the query string must escape


async def test_a_directory_name_that_needs_escaping_round_trips(
    client: docksnap.Client, containers: Boxes
) -> None:
    box = await running(client, containers, f"mkdir -p '{ODD}' && echo -n odd > '{ODD}/f'")
    snap = await box.snapshot_directory(ODD, capture="archive")
    assert snap.dir == ODD
    again = await restored(client, containers, [snap])
    assert await read_file(client, again.name, f"{ODD}/f") == b"odd"


async def test_a_missing_directory_is_the_engine_s_404(
    client: docksnap.Client, containers: Boxes
) -> None:
    box = await running(client, containers)
    with pytest.raises(docksnap.DirectoryNotFoundError):
        await box.snapshot_directory("/no/such/dir", capture="archive")


async def test_the_stream_is_the_engine_s_bytes(client: docksnap.Client, containers: Boxes) -> None:
    """Large enough for many chunked frames and socket reads; compared with the file
    as ``docker exec cat`` gives it (not through the archive API)."""
    box = await running(client, containers, "mkdir /d && head -c 3000000 /dev/urandom > /d/f")
    async with client.docker.get_archive(box.name, "/d/f") as archive:
        tar = b"".join([piece async for piece in archive.chunks])
    cat = await asyncio.create_subprocess_exec(
        "docker", "exec", box.name, "cat", "/d/f", stdout=asyncio.subprocess.PIPE
    )
    content, _ = await cat.communicate()
    assert len(content) == 3_000_000
    assert tar[512 : 512 + 3_000_000] == content
    assert len(tar) % 512 == 0
    assert tar[-1024:] == bytes(1024)

"""The server streams: a 1 GiB import and export through it keep its memory small.

Peak RSS is read from the kernel (``VmHWM``), reset before each phase by
writing 5 to ``/proc/PID/clear_refs``, so each figure belongs to one phase.
The archive is generated and checked on the fly on the test's side too, so
neither end ever holds it whole.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http.conftest import Server

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SIZE = int(os.environ.get("DOCKSNAP_TEST_SERVE_BYTES", 1 << 30))
PIECE = 1 << 20
RSS_LIMIT = 256 << 20  # the server idles near 70 MiB; a buffered GiB could not fit


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def big_tar(digest: hashlib._Hash) -> Iterator[bytes]:
    """A tar of one ``SIZE``-byte file of seeded random data, in 1 MiB pieces.

    ``digest`` sees the file's content only: imports are re-encoded canonically,
    so the export's headers may differ from these.
    """
    header = tarfile.TarInfo("big.bin")
    header.size = SIZE
    header.mode = 0o644
    rng = random.Random(1234)
    yield header.tobuf(format=tarfile.PAX_FORMAT)
    for _ in range(SIZE // PIECE):
        piece = rng.randbytes(PIECE)
        digest.update(piece)
        yield piece
    yield b"\0" * 1024


class _Pieces(io.RawIOBase):
    """A readable file over an iterator of byte pieces (for tarfile's stream mode)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            self._rest = next(self._pieces, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def test_a_1_gib_import_and_export_stream_in_bounded_memory(
    server: Server, record_property: Callable[[str, object], None]
) -> None:
    pid = server.process.pid
    reset_peak(pid)
    sent = hashlib.sha256()
    response = server.api.post(
        "/v1/snapshots/import",
        params={"dir": "/big", "name": "one-gib"},
        content=big_tar(sent),
        headers={"content-type": "application/x-tar"},
    )
    assert response.status_code == 201, response.text
    import_peak = peak_rss(pid)
    snapshot_id = response.json()["snapshot"]["id"]

    reset_peak(pid)
    received = hashlib.sha256()
    total = 0
    with server.api.stream("GET", f"/v1/snapshots/{snapshot_id}/export") as exported:
        assert exported.status_code == 200
        with tarfile.open(fileobj=_Pieces(exported.iter_bytes()), mode="r|") as tar:
            for member in tar:
                source = tar.extractfile(member)
                assert source is not None
                while piece := source.read(PIECE):
                    received.update(piece)
                    total += len(piece)
    export_peak = peak_rss(pid)

    assert total == SIZE
    assert received.hexdigest() == sent.hexdigest()
    record_property("import_peak_rss_mib", round(import_peak / 2**20, 1))
    record_property("export_peak_rss_mib", round(export_peak / 2**20, 1))
    print(
        f"peak RSS of docksnap serve: import {import_peak / 2**20:.1f} MiB, "
        f"export {export_peak / 2**20:.1f} MiB ({SIZE / 2**30:g} GiB each way)"
    )
    assert import_peak < RSS_LIMIT
    assert export_peak < RSS_LIMIT
    assert server.api.delete(f"/v1/snapshots/{snapshot_id}").status_code == 204

"""``bench/run.py --profile`` at a tiny size, on the real engine.

The profile path wraps docksnap's internals by name (``bench/_stages.py``), so a
refactor in ``src/`` breaks it without any other test noticing: it once failed
with ``'ArchiveStream' object has no attribute 'stat'``. This runs it end to end
(a profiled snapshot and restore in worker processes) on a 2 MB data set.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

from docksnap.docker import DockerClient
from tests.conftest import SESSION_ID, SESSION_LABEL

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _cases
import _data
import _engine
import run

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MB = 1_000_000


async def test_profile_of_a_tiny_set_names_every_stage(
    docker_engine: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bench's containers then also carry this session's label: the leak check sees them.
    monkeypatch.setitem(_engine.BENCH_LABELS, SESSION_LABEL, SESSION_ID)
    layout = _data.blob_layout(2 * MB, [("a.bin", "random", 0.5), ("b.log", "text", 0.5)])
    spec = _data.DatasetSpec("tiny", layout, ("snapshot", "restore"), "2 MB smoke test")
    docker = DockerClient()
    engine = _engine.Engine(docker, uuid.uuid4().hex[:8])
    work = tmp_path / "bench"
    work.mkdir()
    bench = None
    try:
        bench = _cases.Bench(
            docker, engine, await run.start_source(engine), work, (work / "stores").as_uri()
        )
        data = await _cases.prepare(bench, spec, _data.Content(1), set(spec.cases))
        written = await run.profile_dataset(bench, data, tmp_path / "profiles")
        texts = {op: await asyncio.to_thread(Path(path).read_text) for op, path in written.items()}
    finally:
        leaked = await run._teardown(bench, engine, docker, work)
    assert leaked == 0
    assert set(texts) == {"snapshot", "restore"}
    assert "(not timed, no longer in docksnap" not in texts["snapshot"]
    # Stages of each direction were timed, not just listed.
    assert "docker: get_archive (whole stream)" in texts["snapshot"]
    assert "cpu: BLAKE3 per chunk" in texts["snapshot"]
    assert "docker: put_archive (whole stream)" in texts["restore"]
    assert "pyinstrument, event-loop thread only" in texts["restore"]

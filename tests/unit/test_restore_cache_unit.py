"""The restore cache's local pieces that need no engine: locks, the upper layer, markers."""

from __future__ import annotations

import os
from pathlib import Path

from docksnap.service import restore_cache as rc


async def test_an_entry_being_marked_in_use_cannot_be_evicted(tmp_path: Path) -> None:
    """The evictor's exclusive lock never waits: a restore holding it shared wins."""
    async with rc._shared_lock(str(tmp_path)) as held:
        assert held is True
        with rc._locked(str(tmp_path)) as evictor:
            assert evictor is False
    with rc._locked(str(tmp_path)) as evictor:
        assert evictor is True


async def test_a_removed_entry_is_seen_as_gone(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")
    async with rc._shared_lock(missing) as held:
        assert held is False
    with rc._locked(missing) as evictor:
        assert evictor is None


def test_the_upper_layer_takes_the_trees_root_attributes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    os.chmod(tree, 0o700)
    os.utime(tree, ns=(1_000_000_123, 2_000_000_456))
    options = rc._prepare_upper(str(tree), str(tmp_path / "scratch"))
    upper = tmp_path / "scratch" / "upper"
    assert options == (f"lowerdir={tree},upperdir={upper},workdir={tmp_path / 'scratch' / 'work'}")
    assert upper.stat().st_mode & 0o7777 == 0o700
    assert upper.stat().st_mtime_ns == 2_000_000_456


def test_complete_is_written_last_and_read_back(tmp_path: Path) -> None:
    entry = rc._Located("docksnap-cache-x", str(tmp_path))
    assert rc._read_complete(str(tmp_path)) is None
    rc._mark_complete(entry, "snap", 1234)
    record = rc._read_complete(str(tmp_path))
    assert record is not None
    assert record["size"] == 1234
    assert not (tmp_path / "complete.json.tmp").exists()
    assert rc._last_used(str(tmp_path)) > 0
    (tmp_path / "complete.json").write_text("{torn")
    assert rc._read_complete(str(tmp_path)) is None  # a torn marker is not complete

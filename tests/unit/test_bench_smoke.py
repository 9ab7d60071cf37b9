"""The benchmark's pure parts: deterministic data, valid tars, targets. No Docker."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _data
import _report
from _cases import Sample

MB = 1_000_000


def tiny_tar(seed: int) -> bytes:
    layout = _data.venv_layout(seed, n_files=40, total=400_000)
    return b"".join(_data.tar_pieces("data/x", layout.dirs, layout.files, _data.Content(seed)))


def test_data_is_deterministic_and_a_valid_tar() -> None:
    first, again, other = tiny_tar(7), tiny_tar(7), tiny_tar(8)
    assert first == again
    assert first != other
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        assert len(files) == 40
        assert sum(m.size for m in files) == _data.venv_layout(7, 40, 400_000).data_bytes


def test_quick_sets_have_the_documented_scale() -> None:
    sets = _data.datasets(1, quick=True)
    assert "huge" not in sets
    small = sets["small-files"].layout
    assert len(small.files) == 3_000
    assert 55e6 < small.data_bytes < 65e6
    mutation = sets["incremental"].mutation
    assert mutation is not None
    assert any(f.path == mutation.append_to for f in small.files)


def test_targets_pass_and_fail_on_ratios() -> None:
    nbytes = 100_000_000
    snapshot = Sample(1.1, extra={"pause_s": 1.4, "cpu_s": 0.3})
    results = {
        "small-files": {
            "raw_get": _report.summarize([Sample(1.0), Sample(1.2), Sample(0.8)], nbytes),
            "snapshot": _report.summarize([snapshot], nbytes),
            "resnapshot_unchanged": _report.summarize(
                [Sample(0.5, new_bytes_stored=2 * MB)], nbytes
            ),
            "restic_backup": _report.summarize([Sample(1.0)], nbytes),
        },
        "large-files": {
            "raw_get": _report.summarize([Sample(1.0)], nbytes),
            "snapshot": _report.summarize([snapshot], nbytes),
        },
    }
    targets = {(t.name, t.dataset): t for t in _report.evaluate(results)}
    snap = targets[("snapshot >= 0.6 x raw_get", "small-files")]
    assert snap.passed is True
    assert round(snap.measured or 0, 3) == round(1.0 / 1.1, 3)
    assert targets[("resnapshot_unchanged new bytes < 1%", "small-files")].passed is False
    assert targets[("restore >= 0.9 x raw_put", "small-files")].passed is None
    assert targets[("snapshot faster than restic_backup", "small-files")].passed is False
    assert targets[("pause_s <= 1.3 x raw_get time", "small-files")].passed is False  # 1.4 s / 1.0
    cpu = targets[("snapshot CPU <= 4 ns per tar byte", "large-files")]
    assert cpu.measured == pytest.approx(3.0)
    assert cpu.passed is True
    assert not [name for name, _ in targets if name.startswith("S3:")]
    on_s3 = {(t.name, t.dataset): t for t in _report.evaluate(results, s3=True)}
    assert on_s3[("S3: snapshot >= 0.5 x raw_get", "small-files")].passed is True  # 0.91
    assert on_s3[("S3: restore >= 0.7 x raw_put", "large-files")].passed is None  # not run

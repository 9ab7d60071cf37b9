"""The public surface is exactly what __all__ says, and every error has one root."""

from __future__ import annotations

import pickle

import pytest

import docksnap


def test_all_is_sorted_and_complete() -> None:
    """__all__ lists every public name once, sorted, and each one exists."""
    assert docksnap.__all__ == sorted(set(docksnap.__all__))
    for name in docksnap.__all__:
        assert hasattr(docksnap, name), name


@pytest.mark.parametrize(
    "name", [n for n in docksnap.__all__ if n.endswith("Error") and n != "DocksnapError"]
)
def test_every_error_derives_from_the_root(name: str) -> None:
    """Catching DocksnapError catches every error docksnap raises on purpose."""
    assert issubclass(getattr(docksnap, name), docksnap.DocksnapError)


def test_invalid_arguments_are_value_errors() -> None:
    """Errors about bad input are also ValueErrors, as callers expect."""
    for cls in (
        docksnap.InvalidPathError,
        docksnap.InvalidSnapshotError,
        docksnap.UnsafeArchiveError,
        docksnap.TarFormatError,
    ):
        assert issubclass(cls, ValueError)


@pytest.mark.parametrize(
    "error",
    [
        docksnap.UnsafeArchiveError("../x", "climbs out"),
        docksnap.DockerError(409, "conflict", operation="create container"),
        docksnap.SnapshotCorruptError("id", "chunk ab12 hash mismatch"),
        docksnap.ContainerNotRunningError("box", "box is not running"),
        docksnap.TarFormatError(512, "bad checksum"),
    ],
)
def test_errors_pickle_with_their_fields(error: docksnap.DocksnapError) -> None:
    """Errors cross process boundaries with their message and fields intact."""
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__

"""The public surface is exactly what __all__ says, and every error has one root."""

from __future__ import annotations

import dataclasses
import pickle
import typing

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


def _docksnap_types(hint: object) -> set[type]:
    """The docksnap classes a type hint mentions, through unions and generics."""
    found: set[type] = set()
    if isinstance(hint, type) and hint.__module__.startswith("docksnap."):
        found.add(hint)
    for arg in typing.get_args(hint):
        # A Callable's parameters come as a list: Callable[[Event], None].
        for part in arg if isinstance(arg, list) else [arg]:
            found |= _docksnap_types(part)
    return found


def _hints(obj: object) -> list[object]:
    try:
        return list(typing.get_type_hints(obj).values())
    except TypeError:  # not a function or class with annotations
        return []


def _reachable_types() -> set[type]:
    """Every docksnap type the public API accepts or returns, transitively.

    Starting from the public classes, each method's parameters and result, each
    property's result, and each dataclass field are followed.
    """
    seen: set[type] = set()
    todo = [getattr(docksnap, name) for name in ("Client", "Container", "Catalogue")]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints = _hints(cls) if dataclasses.is_dataclass(cls) else []
        for attr, member in vars(cls).items():
            if attr.startswith("_") and attr != "__init__":
                continue
            target = member.fget if isinstance(member, property) else member
            if callable(target):
                hints += _hints(target)
        for hint in hints:
            todo.extend(_docksnap_types(hint) - seen)
    return seen


def test_every_type_of_the_public_api_is_exported() -> None:
    """A caller can name every type it passes or gets back as ``docksnap.X``."""
    missing = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _reachable_types()
        if getattr(docksnap, cls.__name__, None) is not cls
    )
    assert missing == []


def test_the_walk_finds_nested_types() -> None:
    """The completeness test follows fields and results, not just signatures."""
    found = {cls.__name__ for cls in _reachable_types()}
    assert {"SnapshotSource", "Problem", "FileChange", "TarEntry", "ProgressEvent"} <= found


@pytest.mark.parametrize(
    ("async_cls", "sync_cls"),
    [
        (docksnap.Client, docksnap.SyncClient),
        (docksnap.Container, docksnap.sync.SyncContainer),
        (docksnap.Catalogue, docksnap.sync.SyncCatalogue),
        (docksnap.RestoreCache, docksnap.sync.SyncCache),
    ],
)
def test_sync_client_has_every_public_method(async_cls: type, sync_cls: type) -> None:
    """SyncClient mirrors the async API: a method added there must be added here too."""
    public = {n for n in dir(async_cls) if not n.startswith("_")}
    assert public - {"docker", "store", "size_limit", "extra_labels"} <= set(dir(sync_cls))

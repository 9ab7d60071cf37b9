"""DirectorySnapshot and SnapshotRestore: validation of every field, and round trips."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docksnap import (
    DirectorySnapshot,
    InvalidPathError,
    InvalidSnapshotError,
    SnapshotRestore,
)
from docksnap.model import new_snapshot_id, normalize_path

GOOD_ID = "0f8c3c1e-2d4b-4a6f-9b1c-3e5d7f9a1b2c"


def record(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": GOOD_ID, "size": 10, "dir": "/app/data", "name": None}
    data.update(overrides)
    return data


class TestFromDict:
    def test_seed_fields_only(self) -> None:
        """A record with just the seed's fields is accepted; name defaults to None."""
        snap = DirectorySnapshot.from_dict({"id": GOOD_ID, "size": 0, "dir": "/x"})
        assert (snap.id, snap.size, snap.dir, snap.name) == (GOOD_ID, 0, "/x", None)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("id", "not-a-uuid"),
            ("id", GOOD_ID.upper()),  # ids are lowercase, as the seed makes them
            ("id", "0f8c3c1e-2d4b-1a6f-9b1c-3e5d7f9a1b2c"),  # version 1, not 4
            ("id", 12345),
            ("id", GOOD_ID + "/../x"),
            ("size", -1),
            ("size", 1.5),
            ("size", 2.0),
            ("size", "10"),
            ("size", True),
            ("size", None),
            ("dir", "relative/path"),
            ("dir", ""),
            ("dir", "/app/\0data"),
            ("dir", "/../etc"),
            ("dir", "/app/../../etc"),
            ("dir", 7),
            ("name", 3),
            ("digest", "sha256:abc"),
            ("created_at", "yesterday"),
        ],
    )
    def test_bad_field_is_refused_naming_it(self, field: str, value: object) -> None:
        """Each malformed field raises InvalidSnapshotError (a ValueError) naming the field."""
        with pytest.raises(InvalidSnapshotError) as info:
            DirectorySnapshot.from_dict(record(**{field: value}))
        assert isinstance(info.value, ValueError)
        assert info.value.field == field
        assert field in str(info.value)

    @pytest.mark.parametrize("data", [None, [], "x", 3])
    def test_not_a_mapping(self, data: object) -> None:
        """Non-mapping input is refused."""
        with pytest.raises(InvalidSnapshotError, match="mapping"):
            DirectorySnapshot.from_dict(data)

    def test_missing_and_unknown_keys(self) -> None:
        """Missing required keys and unknown keys are refused by name."""
        with pytest.raises(InvalidSnapshotError, match="size"):
            DirectorySnapshot.from_dict({"id": GOOD_ID, "dir": "/x"})
        with pytest.raises(InvalidSnapshotError, match="sise"):
            DirectorySnapshot.from_dict(record(sise=3))

    @pytest.mark.parametrize("data", [{1: 0, "x": 0}, {None: 1, 2.5: 2, (1,): 3}])
    def test_unknown_keys_of_any_type_are_a_value_error(self, data: dict[Any, Any]) -> None:
        """Keys that do not even compare with each other are named, not a TypeError."""
        with pytest.raises(InvalidSnapshotError, match="unknown fields") as caught:
            DirectorySnapshot.from_dict(data)
        assert isinstance(caught.value, ValueError)
        assert all(repr(key) in str(caught.value) for key in data if not isinstance(key, str))

    def test_dir_is_canonicalized_and_empty_name_is_none(self) -> None:
        """Trailing slashes go, '..' inside the root resolves, '' as name means no name."""
        snap = DirectorySnapshot.from_dict(record(dir="/app/x/../data///", name=""))
        assert snap.dir == "/app/data"
        assert snap.name is None


class TestRoundTrips:
    @given(
        size=st.integers(min_value=0, max_value=2**63),
        name=st.none() | st.text(min_size=1),
        parts=st.lists(st.text(st.characters(blacklist_characters="/\0."), min_size=1), max_size=4),
    )
    def test_json_and_pickle(self, size: int, name: str | None, parts: list[str]) -> None:
        """Any valid snapshot survives to_dict → JSON → from_dict, and pickle, unchanged."""
        snap = DirectorySnapshot(
            id=new_snapshot_id(), size=size, dir="/" + "/".join(parts), name=name
        )
        assert DirectorySnapshot.from_dict(json.loads(json.dumps(snap.to_dict()))) == snap
        assert pickle.loads(pickle.dumps(snap)) == snap  # noqa: S301 -- our own bytes

    def test_frozen(self) -> None:
        """Snapshots are immutable."""
        snap = DirectorySnapshot.from_dict(record())
        with pytest.raises(AttributeError):
            snap.size = 3  # type: ignore[misc]


class TestPaths:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [("/", "/"), ("///", "/"), ("/app/data/", "/app/data"), ("//a//b/./c/..", "/a/b")],
    )
    def test_normalize(self, raw: str, expected: str) -> None:
        """Slashes, '.' and '..' within the root are resolved."""
        assert normalize_path(raw) == expected

    @pytest.mark.parametrize("raw", ["", "a/b", "/a/\0", "/..", "/a/../..", "/a/../../b"])
    def test_refused(self, raw: str) -> None:
        """Relative, NUL and climbing paths are InvalidPathError naming the path."""
        with pytest.raises(InvalidPathError) as info:
            normalize_path(raw)
        assert repr(raw) in str(info.value)


class TestSnapshotRestore:
    def test_target_defaults_to_snapshot_dir(self) -> None:
        """Without a mount point the snapshot goes back where it came from."""
        snap = DirectorySnapshot.from_dict(record())
        assert SnapshotRestore(snap).target == "/app/data"
        assert SnapshotRestore(snap, mount_point="/other/").target == "/other"

    def test_root_needs_merge(self) -> None:
        """Restoring to / is refused unless merging; a snapshot of / too."""
        snap = DirectorySnapshot.from_dict(record())
        with pytest.raises(InvalidPathError, match="root"):
            SnapshotRestore(snap, mount_point="/")
        assert SnapshotRestore(snap, mount_point="/", merge=True).target == "/"
        of_root = DirectorySnapshot.from_dict(record(dir="/"))
        with pytest.raises(InvalidPathError):
            SnapshotRestore(of_root)

    def test_bad_mount_point_and_snapshot(self) -> None:
        """A relative mount point or a non-snapshot is refused."""
        snap = DirectorySnapshot.from_dict(record())
        with pytest.raises(InvalidPathError, match="mount point"):
            SnapshotRestore(snap, mount_point="rel")
        with pytest.raises(InvalidSnapshotError):
            SnapshotRestore({"id": GOOD_ID})  # type: ignore[arg-type]


class TestArgumentChecksBeforeAnyIO:
    """Bad arguments are refused before docksnap talks to Docker or the store."""

    @pytest.mark.parametrize(
        ("kwargs", "needle"),
        [
            ({"size_limit": 0}, "size_limit"),
            ({"size_limit": -5}, "size_limit"),
            ({"size_limit": True}, "size_limit"),
            ({"ttl": -1}, "ttl"),
            ({"ttl": "1d"}, "ttl"),
            ({"name": 3}, "name"),
        ],
    )
    async def test_snapshot_arguments(self, kwargs: dict[str, object], needle: str) -> None:
        """snapshot_directory() names the bad argument (no engine needed to refuse it)."""
        from docksnap import Client, InvalidArgumentError

        client = Client(docker_host="unix:///nonexistent.sock", store="docker-volume:")
        try:
            with pytest.raises(InvalidArgumentError, match=needle):
                await client.container("x").snapshot_directory("/data", **kwargs)  # type: ignore[arg-type]
            with pytest.raises(InvalidPathError, match="relative"):
                await client.container("x").snapshot_directory("relative")
        finally:
            await client.close()

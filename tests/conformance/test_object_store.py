"""The ObjectStore contract, run against every backend in conftest.OBJECT_STORES.

The chunked store's crash safety rests on these promises (docs/FORMAT.md, "Write
order"): atomic put, race-free put_if_absent, exact ranges, exhaustive listing.
"""

from __future__ import annotations

import mmap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from docksnap.errors import StoreError
from docksnap.store.objects import ObjectNotFoundError, ObjectStore


def test_put_then_get_returns_the_same_bytes(object_store: ObjectStore) -> None:
    data = bytes(range(256)) * 1000
    object_store.put("chunks/ab/round-trip", data)
    assert object_store.get("chunks/ab/round-trip") == data


def test_put_accepts_a_memoryview(object_store: ObjectStore) -> None:
    buffer = bytearray(b"0123456789")
    object_store.put("views/slice", memoryview(buffer)[2:6])
    assert object_store.get("views/slice") == b"2345"


def test_put_if_absent_accepts_a_read_only_view_of_a_mapping(object_store: ObjectStore) -> None:
    """Packs are handed over as such a view of their builder's buffer (no copy)."""
    buffer = mmap.mmap(-1, 1 << 20)
    buffer[:10] = b"0123456789"
    with memoryview(buffer)[2:6].toreadonly() as view:
        assert object_store.put_if_absent("views/mapped", view) is True
        assert object_store.put_if_absent("views/mapped", view) is False
    assert object_store.get("views/mapped") == b"2345"
    buffer.close()  # raises BufferError if the store kept an export of it


def test_empty_objects_exist(object_store: ObjectStore) -> None:
    object_store.put("empty", b"")
    assert object_store.exists("empty")
    assert object_store.get("empty") == b""


def test_put_overwrites(object_store: ObjectStore) -> None:
    object_store.put("config", b"old")
    object_store.put("config", b"new, and longer than before")
    assert object_store.get("config") == b"new, and longer than before"


def test_put_if_absent_creates_once(object_store: ObjectStore) -> None:
    assert object_store.put_if_absent("manifests/x", b"first") is True
    assert object_store.put_if_absent("manifests/x", b"second") is False
    assert object_store.get("manifests/x") == b"first"


def test_put_if_absent_race_has_exactly_one_winner(object_store: ObjectStore) -> None:
    writers = 16
    start = threading.Barrier(writers)

    def attempt(n: int) -> tuple[int, bool]:
        payload = f"writer {n} ".encode() * 1000
        start.wait()
        return n, object_store.put_if_absent("race/one-key", payload)

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(attempt, range(writers)))
    winners = [n for n, created in results if created]
    assert len(winners) == 1
    assert object_store.get("race/one-key") == f"writer {winners[0]} ".encode() * 1000


def test_get_range(object_store: ObjectStore) -> None:
    data = bytes(range(256)) * 4
    object_store.put("ranged", data)
    assert object_store.get_range("ranged", 0, 10) == data[:10]
    assert object_store.get_range("ranged", 1000, 24) == data[1000:]
    assert object_store.get_range("ranged", 17, 0) == b""


def test_a_range_past_the_end_is_an_error_not_a_short_read(object_store: ObjectStore) -> None:
    object_store.put("short", b"0123456789")
    with pytest.raises(StoreError):
        object_store.get_range("short", 5, 10)
    with pytest.raises(StoreError):
        object_store.get_range("short", 11, 1)


def test_missing_keys(object_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        object_store.get("nowhere/to/be/found")
    with pytest.raises(ObjectNotFoundError):
        object_store.get_range("nowhere", 0, 1)
    assert object_store.exists("nowhere") is False


def test_missing_key_error_names_the_store_and_key(object_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError) as caught:
        object_store.get("chunks/zz/absent")
    assert caught.value.store == object_store.url
    assert "chunks/zz/absent" in str(caught.value)


def test_list_by_prefix_yields_each_object_exactly_once(object_store: ObjectStore) -> None:
    keys = [f"chunks/{n % 5:02x}/{n:064x}" for n in range(40)]
    keys += ["chunksx/other", "manifests/a", "manifests/b", "config"]
    for key in keys:
        object_store.put(key, key.encode())
    listed = [info.key for info in object_store.list("chunks/")]
    assert sorted(listed) == sorted(k for k in keys if k.startswith("chunks/"))
    assert len(listed) == len(set(listed))
    sizes = {info.key: info.size for info in object_store.list("manifests/")}
    assert sizes == {"manifests/a": len(b"manifests/a"), "manifests/b": len(b"manifests/b")}
    everything = [info.key for info in object_store.list("")]
    assert sorted(everything) == sorted(keys)


def test_list_prefix_need_not_end_at_a_slash(object_store: ObjectStore) -> None:
    for key in ("chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac01"):
        object_store.put(key, b"x")
    assert sorted(i.key for i in object_store.list("chunks/ab/ab0")) == [
        "chunks/ab/ab01",
        "chunks/ab/ab02",
    ]
    assert list(object_store.list("nothing-here/")) == []


def test_listed_mtimes_are_recent(object_store: ObjectStore) -> None:
    object_store.put("timed", b"x")
    (info,) = list(object_store.list("timed"))
    assert abs(info.mtime - time.time()) < 300


def test_delete_is_idempotent(object_store: ObjectStore) -> None:
    object_store.put("doomed", b"x")
    object_store.delete("doomed")
    assert object_store.exists("doomed") is False
    object_store.delete("doomed")
    object_store.delete("never/existed")


def test_exists(object_store: ObjectStore) -> None:
    assert object_store.exists("a/b") is False
    object_store.put("a/b", b"x")
    assert object_store.exists("a/b") is True
    assert object_store.exists("a") is False  # a prefix is not an object


def test_close_is_idempotent(object_store: ObjectStore) -> None:
    object_store.close()
    object_store.close()

"""Options are checked once, at the service's boundary, with one error type."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import docksnap
from docksnap.service import options
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects.local import LocalObjectStore
from tests.conformance.streams import build_tar


async def one_tar() -> AsyncIterator[bytes]:
    yield build_tar({"f": b"data"})


@pytest.fixture
async def catalogue(tmp_path: Path) -> AsyncIterator[docksnap.Catalogue]:
    store = ChunkedStore(LocalObjectStore(tmp_path / "store", fsync=False))
    yield docksnap.Catalogue(store)
    await store.close()


@pytest.mark.parametrize("ttl", [-5, -0.5, math.nan, math.inf, "1d", True])
async def test_import_refuses_a_bad_ttl_and_stores_nothing(
    catalogue: docksnap.Catalogue, ttl: object
) -> None:
    """import_tar(ttl=-5) used to store a snapshot that expire() deleted at once."""
    with pytest.raises(docksnap.InvalidArgumentError, match="ttl") as caught:
        await catalogue.import_tar(one_tar(), dir="/d", ttl=ttl)  # type: ignore[arg-type]
    assert repr(ttl) in str(caught.value)
    assert [info async for info in catalogue.list()] == []


async def test_a_zero_ttl_is_expired_from_the_start(catalogue: docksnap.Catalogue) -> None:
    snap = await catalogue.import_tar(one_tar(), dir="/d", ttl=0)
    assert await catalogue.expire() == [snap.id]


@pytest.mark.parametrize(
    ("call", "value", "option"),
    [
        (options.size_limit, 0, "size_limit"),
        (options.size_limit, True, "size_limit"),
        (options.size_limit, 1.5, "size_limit"),
        (options.grace, -1, "grace"),
        (options.grace, math.nan, "grace"),
        (options.keep_last, -1, "keep_last"),
        (options.keep_last, 2.0, "keep_last"),
        (options.snapshot_name, 7, "name"),
        (options.signal_number, 0, "signal"),
        (options.signal_number, 65, "signal"),
        (options.helper_image, "", "helper_image"),
    ],
)
def test_each_option_names_itself_and_the_bad_value(
    call: object, value: object, option: str
) -> None:
    with pytest.raises(docksnap.InvalidArgumentError, match=option) as caught:
        call(value)  # type: ignore[operator]
    assert repr(value) in str(caught.value)


def test_labels_are_strings_outside_docksnaps_prefix() -> None:
    assert options.labels({"team": "a"}, "io.docksnap.") == {"team": "a"}
    with pytest.raises(docksnap.InvalidArgumentError, match="reserved"):
        options.labels({"io.docksnap.role": "x"}, "io.docksnap.")
    with pytest.raises(docksnap.InvalidArgumentError, match="strings"):
        options.labels({"team": 1}, "io.docksnap.")


async def test_gc_and_prune_check_before_touching_the_store(
    catalogue: docksnap.Catalogue,
) -> None:
    with pytest.raises(docksnap.InvalidArgumentError, match="grace"):
        await catalogue.gc(grace=-1)
    with pytest.raises(docksnap.InvalidArgumentError, match="keep_last"):
        await catalogue.prune(keep_last=-1)


def test_client_checks_its_options(tmp_path: Path) -> None:
    store = tmp_path.as_uri()
    with pytest.raises(docksnap.InvalidArgumentError, match="size_limit"):
        docksnap.Client(store=store, size_limit=0)
    with pytest.raises(docksnap.InvalidArgumentError, match="helper_image"):
        docksnap.Client(store=store, helper_image="")
    with pytest.raises(docksnap.InvalidArgumentError, match="progress"):
        docksnap.Client(store=store, progress=42)  # type: ignore[arg-type]


def test_restore_cache_options_name_the_bad_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path.as_uri()
    with pytest.raises(docksnap.InvalidArgumentError, match=r"restore_cache.*'on'"):
        docksnap.Client(store=store, restore_cache="on")
    with pytest.raises(docksnap.InvalidArgumentError, match=r"cache_size.*0"):
        docksnap.Client(store=store, cache_size=0)
    monkeypatch.setenv("DOCKSNAP_CACHE_SIZE", "lots")
    with pytest.raises(docksnap.InvalidArgumentError, match=r"DOCKSNAP_CACHE_SIZE.*'lots'"):
        docksnap.Client(store=store)
    monkeypatch.setenv("DOCKSNAP_RESTORE_CACHE", "sometimes")
    with pytest.raises(docksnap.InvalidArgumentError, match="'sometimes'"):
        docksnap.Client(store=store, cache_size=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1048576", 1 << 20), ("512M", 512 << 20), ("20GiB", 20 << 30), (" 3 t ", 3 << 40)],
)
def test_cache_size_is_bytes_or_a_binary_unit(text: str, expected: int) -> None:
    assert options.cache_size(text) == expected
    assert options.cache_size(expected) == expected


def test_the_cache_size_comes_from_the_environment_else_10_gib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKSNAP_CACHE_SIZE", raising=False)
    assert docksnap.Client(store=tmp_path.as_uri()).cache.size_limit == 10 << 30
    monkeypatch.setenv("DOCKSNAP_CACHE_SIZE", "2GiB")
    assert docksnap.Client(store=tmp_path.as_uri()).cache.size_limit == 2 << 30
    assert docksnap.Client(store=tmp_path.as_uri(), cache_size=5).cache.size_limit == 5

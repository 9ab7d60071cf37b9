"""Fixtures of the chunked store's unit tests (a module may define its own instead)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docksnap.store.chunked import ChunkedStore
from tests.chunkedsupport import new_store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where the store of :func:`store` keeps its objects."""
    return tmp_path / "store"


@pytest.fixture
async def store(root: Path) -> AsyncIterator[ChunkedStore]:
    """A chunked store in :func:`root`, in the default format; closed after the test."""
    store = new_store(root)
    yield store
    await store.close()

"""Fixtures several unit test modules share: a started store in the test's own directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.store import Budget, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A started store under tmp_path/data, no free-space floor, closed after the test.

    A module wanting other options defines its own `store` (it takes precedence)."""
    s = Store(tmp_path / "data", budget=Budget(min_free_bytes=0))
    s.start()
    yield s
    s.close()

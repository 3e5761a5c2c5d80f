"""The storage contract runs against every backend (SQLite here; Redis joins later)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.storage import SqliteStorage


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    backend = SqliteStorage(tmp_path / request.param)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()

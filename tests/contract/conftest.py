"""The storage contract runs against every backend: SQLite and Redis.

``store`` is one open backend; ``open_store`` opens another handle on the same
data (SQLite: the same file; Redis: the same key prefix, as another replica).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.storage import RedisStorage, SqliteStorage, Storage
from tests.redis_support import delete_prefix, redis_url  # noqa: F401 - a fixture

OpenStore = Callable[[], Awaitable[Storage]]


@pytest.fixture(params=["sqlite", "redis"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    opened: list[Storage] = []
    url = prefix = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"test:{secrets.token_hex(6)}:"

    def make() -> Storage:
        if request.param == "redis":
            return RedisStorage(url, key_prefix=prefix)
        return SqliteStorage(tmp_path / "sqlite")

    async def open_one() -> Storage:
        store = make()
        await store.open()
        opened.append(store)
        return store

    try:
        yield open_one
    finally:
        for store in opened:
            await store.close()
        if prefix:
            await delete_prefix(url, prefix)


@pytest.fixture
async def store(open_store: OpenStore) -> Storage:
    return await open_store()

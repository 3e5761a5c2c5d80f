"""The storage contract runs against every backend: SQLite, Redis, and Redis in cluster
mode (a real three-master Redis Cluster); modules that set ``ALSO_ON_SENTINEL = True``
run on a Sentinel-managed Redis too.

``store`` is one open backend; ``open_store`` opens another handle on the same
data (SQLite: the same file; Redis: the same key prefix, as another replica).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.storage import SqliteStorage, Storage
from sidecar.storage.redis import RedisStorage
from sidecar.storage.redis_endpoint import cluster_prefix
from tests.redis_support import (  # noqa: F401 - fixtures
    SENTINEL_MASTER,
    RedisSentinelSetup,
    delete_prefix,
    redis_cluster_url,
    redis_sentinel,
    redis_url,
)

OpenStore = Callable[[], Awaitable[Storage]]
BACKENDS = ["sqlite", "redis", "redis-cluster"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "open_store" in metafunc.fixturenames:
        # A module may name its own backends (what only shared backends have).
        backends = list(getattr(metafunc.module, "BACKENDS", BACKENDS))
        if getattr(metafunc.module, "ALSO_ON_SENTINEL", False):
            backends.append("redis-sentinel")
        metafunc.parametrize("open_store", backends, indirect=True)


@pytest.fixture
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    opened: list[Storage] = []
    backend: str = request.param
    prefix = f"test:{secrets.token_hex(6)}:"
    data_url = ""  # where the keys are deleted afterwards
    if backend == "redis":
        data_url = request.getfixturevalue("redis_url")
    elif backend == "redis-cluster":
        data_url = request.getfixturevalue("redis_cluster_url")
    elif backend == "redis-sentinel":
        sentinel: RedisSentinelSetup = request.getfixturevalue("redis_sentinel")
        data_url = sentinel.master_url()

    def make() -> Storage:
        if backend == "redis":
            return RedisStorage(data_url, key_prefix=prefix)
        if backend == "redis-cluster":
            return RedisStorage(data_url, key_prefix=prefix, mode="cluster")
        if backend == "redis-sentinel":
            return RedisStorage(sentinel.url, key_prefix=prefix, mode="sentinel",
                                master_name=SENTINEL_MASTER)
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
        if data_url:
            # In cluster mode the prefix gained a hash tag.
            await delete_prefix(data_url, cluster_prefix(prefix)
                                if backend == "redis-cluster" else prefix)


@pytest.fixture
async def store(open_store: OpenStore) -> Storage:
    return await open_store()

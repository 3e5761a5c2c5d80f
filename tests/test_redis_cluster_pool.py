"""On a Redis Cluster, a burst of storage calls beyond the connection limit waits for a
connection, as on one Redis, instead of failing (redis-py's cluster pools do not wait)."""

from __future__ import annotations

import asyncio
import secrets

from sidecar.core.events.models import NewEvent
from sidecar.storage.redis import RedisStorage
from sidecar.storage.redis_endpoint import cluster_prefix
from tests.redis_support import delete_prefix, redis_cluster_url  # noqa: F401 - a fixture

CONNECTIONS = 4
BURST = 200


async def test_a_burst_beyond_the_connections_waits_instead_of_failing(
        redis_cluster_url: str) -> None:  # noqa: F811
    prefix = f"test:{secrets.token_hex(6)}:"
    store = RedisStorage(redis_cluster_url, key_prefix=prefix, mode="cluster",
                         max_connections=CONNECTIONS)
    await store.open()
    try:
        stored = await asyncio.gather(*(
            store.append_event(NewEvent(f"evt_{i}", "orders"), now=1.0) for i in range(BURST)))
        assert sorted(e.offset for e in stored) == list(range(1, BURST + 1))
    finally:
        await store.close()
        await delete_prefix(redis_cluster_url, cluster_prefix(prefix))

"""Two real sidecar processes with ``storage.redis.mode: cluster`` on a real three-master
Redis Cluster: both start and report ready, and an event published on one reaches a
subscriber on the other (so the follower's blocking reads work on a cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from integration_sidecar.v1 import sidecar_pb2 as pb

from sidecar.storage import RedisStorage
from sidecar.storage.redis_endpoint import cluster_prefix
from tests.redis_support import redis_cluster_url  # noqa: F401 - a fixture
from tests.replica_support import WAIT, Cluster, get_json, subscribed

pytestmark = pytest.mark.slow


@pytest.fixture
async def replicas(tmp_path: Path, redis_cluster_url: str  # noqa: F811
                   ) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, redis_cluster_url)
    # The prefix as the sidecar uses it in cluster mode, so the cleanup finds its keys.
    c.prefix = cluster_prefix(c.prefix)
    try:
        yield c
    finally:
        await c.close()


async def test_replicas_on_a_cluster_start_ready_and_share_events(replicas: Cluster) -> None:
    a, b = await replicas.start(extra={"storage": {"redis": {"mode": "cluster"}}})
    async with aiohttp.ClientSession() as session:
        for replica in (a, b):
            status, body = await get_json(session, f"http://{replica.admin}/readyz")
            assert status == 200, body
    async with subscribed(b, pb.SubscribeRequest(topics=["orders", "user:alice"],
                                                 start=pb.START_POSITION_EARLIEST)) as stream:
        published = await a.stub.Publish(pb.PublishRequest(
            topic="user:alice", type="order.shipped", data=b'{"order": 42}'), timeout=WAIT)
        got = await stream.next()
        assert (got.id, got.topic, got.offset, got.data) == (
            published.event_id, "user:alice", published.offset, b'{"order": 42}')
        # The second topic on the same blocking read: one slot, so one node serves both.
        other = await a.stub.Publish(pb.PublishRequest(topic="orders", type="x"), timeout=WAIT)
        assert (await stream.next()).id == other.event_id
    # Stored on the cluster, under the tagged prefix.
    store = RedisStorage(replicas.redis_url, key_prefix=replicas.prefix, mode="cluster")
    await store.open()
    try:
        assert await store.topic_bounds("user:alice") == (1, 1)
        assert await store.topic_bounds("orders") == (1, 1)
    finally:
        await store.close()

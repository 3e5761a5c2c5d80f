"""A rate limit shared by two replicas on one Redis (or one Redis Cluster) holds across
both."""

from __future__ import annotations

import secrets

import pytest

from sidecar.clock import SystemClock
from sidecar.core.resilience.rate_limit import RateLimitedError, RateLimitPolicy
from sidecar.errors import StorageUnavailable
from sidecar.storage.redis import RedisStorage
from tests.contract.conftest import OpenStore
from tests.redis_support import delete_prefix, redis_url  # noqa: F401 - a fixture

#: Only the shared backends have shared buckets.
BACKENDS = ["redis", "redis-cluster"]


async def test_two_replicas_draw_from_one_bucket(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    assert isinstance(a, RedisStorage) and isinstance(b, RedisStorage)
    policy = RateLimitPolicy(rate=5, burst=10, on_limit="reject")
    bucket_a = a.rate_limiter("pay", policy, SystemClock())
    bucket_b = b.rate_limiter("pay", policy, SystemClock())
    taken = 0
    for i in range(10):
        taken += (await (bucket_a if i % 2 else bucket_b).acquire(1.0)) == 0.0
    assert taken == 10
    with pytest.raises(RateLimitedError) as info:
        await bucket_a.acquire(1.0)
    assert 0 < (info.value.retry_after or 0) <= 0.25
    with pytest.raises(RateLimitedError):
        await bucket_b.acquire(1.0)
    # another integration has a bucket of its own
    assert await a.rate_limiter("mail", policy, SystemClock()).acquire(1.0) == 0.0
    # an upstream 429 seen by one replica pauses the other
    other = RateLimitPolicy(rate=100, burst=100, on_limit="reject")
    await a.rate_limiter("sms", other, SystemClock()).pause_for(30)
    with pytest.raises(RateLimitedError) as info:
        await b.rate_limiter("sms", other, SystemClock()).acquire(1.0)
    assert (info.value.retry_after or 0) > 29


async def test_waiting_bucket_reserves_slots(open_store: OpenStore) -> None:
    store = await open_store()
    assert isinstance(store, RedisStorage)
    bucket = store.rate_limiter("pay", RateLimitPolicy(rate=20, burst=1, on_limit="wait"),
                                SystemClock())
    assert await bucket.acquire(1.0) == 0.0
    waited = await bucket.acquire(1.0)
    assert 0.02 < waited <= 0.06
    with pytest.raises(RateLimitedError):
        await bucket.acquire(0.0)


async def test_unreachable_redis_is_storage_unavailable(redis_url: str) -> None:  # noqa: F811
    prefix = f"t{secrets.token_hex(4)}:"
    store = RedisStorage(redis_url, key_prefix=prefix)
    await store.open()
    bucket = store.rate_limiter("pay", RateLimitPolicy(rate=1, burst=1), SystemClock())
    await store.close()
    with pytest.raises(StorageUnavailable):
        await bucket.acquire(1.0)

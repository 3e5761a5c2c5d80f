"""Sentinel mode follows a failover: what was written before is there after it, and the
same open storage writes to the new master without being reopened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sidecar.core.events.models import GroupPolicy, NewEvent, new_event_id
from sidecar.errors import StorageUnavailable
from sidecar.storage import ClaimStatus, RedisStorage
from tests.redis_support import FORM_TIMEOUT, SENTINEL_MASTER, RedisSentinelSetup, running

POLICY = GroupPolicy(ack_timeout=30.0, max_attempts=3)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[RedisSentinelSetup]:
    """A setup of its own: the failover changes which server is the master."""
    with running(RedisSentinelSetup(tmp_path / "sentinel", sentinel_password="s-pass")) as s:
        yield s


async def test_storage_follows_a_sentinel_failover(setup: RedisSentinelSetup) -> None:
    store = RedisStorage(setup.url, mode="sentinel", master_name=SENTINEL_MASTER,
                         sentinel_password="s-pass", socket_timeout=1.0)
    await store.open()
    try:
        before = await store.append_event(NewEvent(new_event_id(), "orders", "created"),
                                          now=time.time())
        claim = await store.idempotency_claim("pay", "k1", "fp", now=time.time(), lease=60)
        assert claim.status is ClaimStatus.CLAIMED
        old_master = setup.master.port
        # The replica has everything before the failover (as a synchronous write would).
        assert await store.redis.execute_command("WAIT", 1, 5000) == 1

        new_master = await asyncio.to_thread(setup.failover)
        assert new_master == setup.replica.port != old_master

        # The same storage, not reopened, writes again once its client has found the
        # new master (bounded: connections to the demoted master fail meanwhile).
        deadline = time.monotonic() + FORM_TIMEOUT
        while True:
            try:
                after = await store.append_event(NewEvent(new_event_id(), "orders", "paid"),
                                                 now=time.time())
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline, "no write succeeded after the failover"
        assert after.offset == before.offset + 1  # the counter came over with the data
        assert [e.id for e in await store.read_events("orders", after=0, limit=10)] == [
            before.id, after.id]
        again = await store.idempotency_claim("pay", "k1", "fp", now=time.time(), lease=60)
        assert again.status is ClaimStatus.IN_FLIGHT
        deliveries = await store.claim("g", ["orders"], "c1", now=time.time(), policy=POLICY,
                                       limit=10)
        assert [d.event.id for d in deliveries] == [before.id, after.id]

        # It really went to the server the sentinel promoted.
        promoted = redis.Redis(host="127.0.0.1", port=new_master)
        try:
            assert promoted.info("replication")["role"] == "master"
            assert promoted.exists("sidecar:log:orders") == 1
        finally:
            promoted.close()
    finally:
        await store.close()

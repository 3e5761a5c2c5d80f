"""What only the Redis backend has: replicas sharing one Redis, key prefixes,
outages and credentials; and a random workload checked against SQLite."""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from sidecar.core.events.models import (
    AckOutcome,
    DeliveryStatus,
    GroupPolicy,
    NewEvent,
    new_event_id,
)
from sidecar.errors import StorageUnavailable
from sidecar.storage import ClaimStatus, RedisStorage, SqliteStorage
from sidecar.storage.migrations import SchemaTooNew
from sidecar.storage.redis import SCHEMA_VERSION
from tests.certs import make_pki, openssl_available
from tests.contract.test_event_store import POLICY, ev, no_delay
from tests.redis_support import RedisServer, delete_prefix, free_port

PASSWORD = "s3cret-Pa55word-for-tests"


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    value = f"test:{secrets.token_hex(6)}:"
    try:
        yield value
    finally:
        await delete_prefix(redis_url, value)


@pytest.fixture
async def replicas(redis_url: str, prefix: str) -> AsyncIterator[list[RedisStorage]]:
    """Two sidecar replicas' storages on one Redis and one prefix."""
    stores = [RedisStorage(redis_url, key_prefix=prefix) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


# ---------------------------------------------------------------------- connections


async def test_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    store = RedisStorage(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", socket_timeout=0.5)
    with pytest.raises(StorageUnavailable) as info:
        await store.open()
    message = info.value.message
    assert f"redis://127.0.0.1:{port}/0 is unreachable" in message
    assert info.value.reason == "STORAGE_UNAVAILABLE"
    for text in (message, str(info.value), repr(info.value), str(info.value.__cause__)):
        assert PASSWORD not in text
    with pytest.raises(StorageUnavailable, match="closed"):
        await store.check()


async def test_outage_is_unavailable_and_service_returns_by_itself(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    store = RedisStorage(server.url, key_prefix="app:", socket_timeout=0.5)
    try:
        await store.open()
        await store.append_event(ev(), now=1.0)
        server.stop()
        with pytest.raises(StorageUnavailable, match="is unreachable"):
            await store.check()
        with pytest.raises(StorageUnavailable, match="is unreachable"):
            await store.append_event(ev(), now=2.0)
        with pytest.raises(StorageUnavailable):
            await store.claim("g", ["t"], "m", now=2.0, policy=POLICY, limit=1)
        with pytest.raises(StorageUnavailable):
            await store.idempotency_claim("s", "k", "fp", now=2.0, lease=1.0)
        server.start()  # same port; this Redis keeps nothing on disk
        await store.check()  # no reopen: the pool reconnects
        assert (await store.append_event(ev(), now=3.0)).offset == 1
        assert (await store.claim("g", ["t"], "m", now=3.0, policy=POLICY, limit=1))[0].attempt == 1
    finally:
        await store.close()
        server.stop()


async def test_password_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", extra=["--requirepass", PASSWORD])
    server.start()
    good = RedisStorage(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
    bad = RedisStorage(f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0")
    anonymous = RedisStorage(f"redis://127.0.0.1:{server.port}/0")
    try:
        await good.open()
        await good.check()
        for store in (bad, anonymous):
            with pytest.raises(StorageUnavailable) as info:
                await store.open()
            assert f"127.0.0.1:{server.port}" in info.value.message
            assert PASSWORD not in info.value.message
    finally:
        await good.close()
        server.stop()


async def test_a_newer_key_layout_is_refused(redis_url: str, prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    await client.set(f"{prefix}schema", SCHEMA_VERSION + 1)
    await client.aclose()
    store = RedisStorage(redis_url, key_prefix=prefix)
    with pytest.raises(SchemaTooNew, match="another key prefix"):
        await store.open()


def test_url_checks_never_echo_the_url() -> None:
    with pytest.raises(ValueError, match="redis://") as info:
        RedisStorage(f"http://:{PASSWORD}@127.0.0.1/0")
    assert PASSWORD not in str(info.value)
    with pytest.raises(ValueError, match="prefix"):
        RedisStorage("redis://127.0.0.1/0", key_prefix="")


# ---------------------------------------------------------------------- replicas


async def test_two_replicas_share_dedup_idempotency_and_groups(
        replicas: list[RedisStorage]) -> None:
    a, b = replicas
    # a webhook landing on both replicas is stored once
    first = await a.ingest_webhook(ev("webhooks.s", data=b"p"), source="s", dedup_key="e1",
                                   audit_headers={}, now=1.0, dedup_ttl=60.0)
    dup = await b.ingest_webhook(ev("webhooks.s", data=b"p"), source="s", dedup_key="e1",
                                 audit_headers={}, now=2.0, dedup_ttl=60.0)
    assert dup.duplicate and dup.event == first.event
    # an idempotency key used on one is honoured on the other
    assert (await a.idempotency_claim("pay", "k", "fp", now=1.0, lease=30.0)).status is (
        ClaimStatus.CLAIMED)
    assert (await b.idempotency_claim("pay", "k", "fp", now=2.0, lease=30.0)).status is (
        ClaimStatus.IN_FLIGHT)
    await a.idempotency_complete("pay", "k", b"answer", now=3.0, ttl=60.0)
    replay = await b.idempotency_claim("pay", "k", "fp", now=4.0, lease=30.0)
    assert (replay.status, replay.response) == (ClaimStatus.COMPLETED, b"answer")
    # one log: offsets continue across replicas and both read the same events
    e2 = await b.append_event(ev("t"), now=5.0)
    e1 = await a.append_event(ev("t"), now=4.0)
    assert (e2.offset, e1.offset) == (1, 2)
    assert await a.read_events("t", after=0, limit=5) == await b.read_events("t", after=0,
                                                                             limit=5)
    # one group: a claim on one replica excludes the event from the other
    got_a = await a.claim("g", ["t"], "member-a", now=6.0, policy=POLICY, limit=1)
    got_b = await b.claim("g", ["t"], "member-b", now=6.0, policy=POLICY, limit=5)
    assert [d.event.id for d in got_a] == [e2.id] and [d.event.id for d in got_b] == [e1.id]
    assert await a.claim("g", ["t"], "member-a", now=6.0, policy=POLICY, limit=5) == []
    assert await b.settle("g", [e1.id], AckOutcome.SUCCESS, error="", now=7.0,
                          policy=POLICY, retry_delay=no_delay) == (1, [])
    # the member on replica a dies: after the ack timeout its event goes to b
    later = 6.0 + POLICY.ack_timeout
    (redo,) = await b.claim("g", ["t"], "member-b", now=later, policy=POLICY, limit=5)
    assert (redo.event.id, redo.attempt) == (e2.id, 2)
    assert await b.settle("g", [e2.id], AckOutcome.SUCCESS, error="", now=later,
                          policy=POLICY, retry_delay=no_delay) == (1, [])
    assert await a.count_deliveries() == {("g", "t", "completed"): 2, ("g", "t", "pending"): 0}
    assert await a.group_exists("g")


async def test_open_does_not_reset_other_replicas_deliveries(
        replicas: list[RedisStorage], redis_url: str, prefix: str) -> None:
    a, _ = replicas
    await a.append_event(ev("t"), now=1.0)
    await a.claim("g", ["t"], "m", now=2.0, policy=POLICY, limit=1)
    third = RedisStorage(redis_url, key_prefix=prefix)
    await third.open()
    try:
        assert await third.claim("g", ["t"], "n", now=3.0, policy=POLICY, limit=1) == []
        assert await third.next_due("g", ["t"]) == 2.0 + POLICY.ack_timeout
    finally:
        await third.close()


async def test_a_retried_append_is_stored_once(replicas: list[RedisStorage]) -> None:
    a, b = replicas
    event = ev("t")
    first = await a.append_event(event, now=1.0)
    # the same event sent again (as redis-py's retry does after a lost reply)
    assert (await b.append_event(event, now=1.0)).offset == first.offset
    assert await a.topic_bounds("t") == (1, 1)


async def test_key_prefix_isolates_apps(redis_url: str) -> None:
    token = secrets.token_hex(6)
    prefixes = [f"app1-{token}:", f"app2-{token}:"]
    one, two = (RedisStorage(redis_url, key_prefix=p) for p in prefixes)
    await one.open()
    await two.open()
    try:
        await one.append_event(ev("t"), now=1.0)
        await one.idempotency_claim("s", "k", "fp", now=1.0, lease=30.0)
        await one.ingest_webhook(ev("webhooks.s"), source="s", dedup_key="d", audit_headers={},
                                 now=1.0, dedup_ttl=60.0)
        await one.claim("g", ["t"], "m", now=1.0, policy=POLICY, limit=1)
        assert await two.topic_bounds("t") == (1, 0)
        assert (await two.idempotency_claim("s", "k", "other", now=1.0, lease=30.0)
                ).status is ClaimStatus.CLAIMED
        assert not (await two.ingest_webhook(ev("webhooks.s"), source="s", dedup_key="d",
                                             audit_headers={}, now=1.0, dedup_ttl=60.0)
                    ).duplicate
        assert not await two.group_exists("g") and await two.count_deliveries() == {}
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            keys = [k.decode() async for k in client.scan_iter(match=f"*{token}*")]
        finally:
            await client.aclose()
        assert keys and all(k.startswith(tuple(prefixes)) for k in keys)
    finally:
        await one.close()
        await two.close()
        for p in prefixes:
            await delete_prefix(redis_url, p)


# ---------------------------------------------------------------------- same as SQLite


async def test_a_random_workload_behaves_as_on_sqlite(tmp_path: Path, redis_url: str,
                                                      prefix: str) -> None:
    """Every answer of a seeded random mix of calls is the same on both backends."""
    rng = random.Random(6)
    sqlite, red = SqliteStorage(tmp_path), RedisStorage(redis_url, key_prefix=prefix)
    await sqlite.open()
    await red.open()
    topics = ["a", "user:1", "webhooks.s"]
    ids: list[str] = []
    claimed: list[str] = []
    now = 1.0

    async def both(step: int, name: str, *args: Any, unordered: bool = False,
                   **kw: Any) -> Any:
        want = await getattr(sqlite, name)(*args, **kw)
        got = await getattr(red, name)(*args, **kw)
        if unordered:  # SQLite leaves ties between groups in any order
            want, got = sorted(want, key=repr), sorted(got, key=repr)
        assert got == want, f"step {step}: {name}{args}{kw}"
        return want

    try:
        for step in range(1000):
            now += rng.choice([0.0, 0.5, 1.0, 5.0, 31.0])
            group = rng.choice(["g1", "g2"])
            policy = GroupPolicy(ack_timeout=30.0, max_attempts=3,
                                 start=rng.choice(["earliest", "latest"]))
            op = rng.randrange(14)
            if op <= 2:
                event = NewEvent(new_event_id(now), rng.choice(topics), f"ty{step}",
                                 rng.randbytes(rng.randrange(4)), "application/x",
                                 {"k": str(step)})
                ids.append((await both(step, "append_event", event, now=now)).id)
            elif op == 3:
                event = NewEvent(new_event_id(now), "webhooks.s", "hook", b"{}")
                result = await both(step, "ingest_webhook", event, source="s",
                                    dedup_key=f"d{rng.randrange(5)}", audit_headers={"x": "1"},
                                    now=now, dedup_ttl=40.0)
                ids.append(result.event.id)
            elif op <= 6:
                got = await both(step, "claim", group, rng.sample(topics, rng.randrange(1, 4)),
                                 rng.choice(["m1", "m2"]), now=now, policy=policy,
                                 limit=rng.randrange(1, 5))
                claimed += [d.event.id for d in got]
            elif op == 7 and ids:
                pool = claimed[-6:] if claimed and rng.random() < 0.8 else ids
                chosen = [*rng.sample(pool, min(len(pool), rng.randrange(1, 4))), "evt_unknown"]
                await both(step, "settle", group, chosen, rng.choice(list(AckOutcome)),
                           error=rng.choice(["", "boom"]), now=now, policy=policy,
                           retry_delay=lambda n: 7.0 * n)
            elif op == 8:
                await both(step, "release_consumer", group, rng.choice(["m1", "m2"]), now=now)
            elif op == 9 and ids:
                statuses = rng.sample([DeliveryStatus.DEAD, DeliveryStatus.FAILED,
                                       DeliveryStatus.COMPLETED], rng.randrange(0, 3))
                picked = rng.sample(ids, min(len(ids), 2)) if rng.random() < 0.5 else []
                await both(step, "requeue", group, event_ids=picked, statuses=statuses, now=now)
            elif op == 10:
                await both(step, "prune", now=now,
                           events_before=rng.choice([None, now - 60.0]),
                           durable_topics=rng.choice([None, {"webhooks.s": now - 100.0}]),
                           max_per_topic=rng.choice([None, 4, 8]))
            elif op == 11:
                scope, key = rng.choice(["s1", "publish:a"]), f"k{rng.randrange(3)}"
                action = rng.randrange(3)
                if action == 0:
                    await both(step, "idempotency_claim", scope, key,
                               rng.choice(["fp1", "fp2"]), now=now, lease=20.0)
                elif action == 1:
                    await both(step, "idempotency_complete", scope, key, b"r%d" % step, now=now,
                               ttl=50.0)
                else:
                    await both(step, "idempotency_release", scope, key)
            else:
                topic = rng.choice([*topics, None])
                status = rng.choice([None, *DeliveryStatus])
                await both(step, "list_deliveries", group=group, topic=topic, status=status,
                           limit=rng.randrange(1, 6))
                await both(step, "list_deliveries", topic=topic, status=status, limit=1000,
                           unordered=True)
                await both(step, "count_deliveries")
                await both(step, "next_due", group, rng.sample(topics, 2))
                await both(step, "group_exists", group)
                for t in topics:
                    await both(step, "topic_bounds", t)
                    await both(step, "read_events", t, after=rng.randrange(0, 6),
                               limit=rng.randrange(1, 5))
    finally:
        await sqlite.close()
        await red.close()


async def test_tls_with_a_rediss_url(tmp_path: Path) -> None:
    if not openssl_available():
        pytest.skip("needs the openssl CLI to make test certificates")
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    server = RedisServer(tmp_path / "redis", port=port, extra=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key), "--tls-ca-cert-file", str(pki.ca_cert),
        "--tls-auth-clients", "no"])
    server.start()
    trusted = RedisStorage(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki.ca_cert}")
    untrusted = RedisStorage(f"rediss://127.0.0.1:{port}/0", socket_timeout=1.0)
    plain = RedisStorage(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
    try:
        await trusted.open()
        assert (await trusted.append_event(ev(), now=1.0)).offset == 1
        for store in (untrusted, plain):  # unknown CA; no TLS at all
            with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{port}"):
                await store.open()
    finally:
        await trusted.close()
        server.stop()

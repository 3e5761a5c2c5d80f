"""Two real sidecar processes on one Redis behave as one system (issue 6).

Every test starts two ``python -m sidecar serve`` children with ``storage.backend:
redis`` on one Redis under a per-test key prefix; nothing in-process is shared,
so whatever crosses from one replica to the other went through Redis. Every wait
is bounded; every child is killed and every key deleted afterwards (``cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from integration_sidecar.v1 import sidecar_pb2 as pb

from sidecar.storage import RedisStorage
from tests.call_support import call
from tests.redis_support import RedisServer, redis_url, require  # noqa: F401 - a fixture
from tests.replica_support import (
    WAIT,
    WEBHOOK_TOPIC,
    WS_SECRET,
    Cluster,
    EventStream,
    Replica,
    ack,
    get_json,
    group_registered,
    group_request,
    post_webhook,
    subscribed,
    subscribes_started,
)
from tests.rpc_support import rich_error
from tests.upstream import Upstream, reply
from tests.webhook_support import stripe_event, stripe_headers

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster(tmp_path: Path, redis_url: str) -> AsyncIterator[Cluster]:  # noqa: F811
    c = Cluster(tmp_path, redis_url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(default=reply(201, b'{"charge": "ch_1"}')).start()
    try:
        yield up
    finally:
        await up.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def stored_bounds(url: str, prefix: str, topic: str) -> tuple[int, int]:
    """(first, last) offset of ``topic`` as the shared log holds it."""
    store = RedisStorage(url, key_prefix=prefix)
    await store.open()
    try:
        first, last = await store.topic_bounds(topic)
        return int(first), int(last)
    finally:
        await store.close()


# ---------------------------------------------------------------------- 1. de-duplication


async def test_same_webhook_on_both_replicas_is_stored_once(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    a, b = await cluster.start()
    ids = []
    for i in range(5):
        # One delivery attempt that a load balancer (or a provider retry) sent to both.
        body = stripe_event(f"evt_dup{i}")
        headers = stripe_headers(body)
        answers = await asyncio.gather(
            post_webhook(session, a, "", body=body, headers=headers),
            post_webhook(session, b, "", body=body, headers=headers))
        assert [status for status, _ in answers] == [200, 200], answers
        assert sorted(p["status"] for _, p in answers) == ["accepted", "duplicate"], answers
        assert answers[0][1]["event_id"] == answers[1][1]["event_id"], answers
        ids.append(answers[0][1]["event_id"])
    assert len(set(ids)) == 5
    assert await stored_bounds(cluster.redis_url, cluster.prefix, WEBHOOK_TOPIC) == (1, 5)


# ---------------------------------------------------------------------- 2. live fan-out


class WsReader:
    """Event frames of one WebSocket, read in the background into a queue."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if "control" not in frame:
                self.queue.put_nowait(frame)
        self.queue.put_nowait(None)

    async def next(self, timeout: float = WAIT) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.queue.get(), timeout)
        assert frame is not None, "the WebSocket closed"
        return frame

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_event_published_on_a_reaches_websocket_and_grpc_on_b(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    a, b = await cluster.start()
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, WS_SECRET,
                       algorithm="HS256")
    ws = WsReader(await asyncio.wait_for(
        session.ws_connect(f"http://{b.edge}/ws?token={token}"), WAIT))
    try:
        async with subscribed(b, pb.SubscribeRequest(
                topics=["user:alice"], start=pb.START_POSITION_LATEST)) as grpc_sub:
            # Neither subscription confirms it is in place; probes published on A
            # until one reaches each of them make sure both are live (and already
            # exercise the cross-replica path). Both start at LATEST, so a probe
            # sent too early is simply never seen.
            await probe_until_live(a, ws, grpc_sub)
            published = await a.stub.Publish(pb.PublishRequest(
                topic="user:alice", type="order.shipped", data=b'{"order": 42}',
                content_type="application/json"), timeout=WAIT)
            assert not published.replayed

            got = await next_not_probe_grpc(grpc_sub)
            assert (got.id, got.offset, got.topic, got.type, got.data) == (
                published.event_id, published.offset, "user:alice", "order.shipped",
                b'{"order": 42}')
            frame = await next_not_probe_ws(ws)
            assert (frame["id"], frame["offset"], frame["topic"], frame["type"],
                    frame["data"]) == (published.event_id, published.offset, "user:alice",
                                       "order.shipped", {"order": 42})
    finally:
        await ws.close()


async def probe_until_live(publisher: Replica, ws: WsReader, grpc_sub: EventStream) -> None:
    ws_live = grpc_live = False
    deadline = time.monotonic() + WAIT
    while not (ws_live and grpc_live):
        assert time.monotonic() < deadline, "subscriptions on B never saw a probe from A"
        await publisher.stub.Publish(pb.PublishRequest(topic="user:alice", type="probe"),
                                     timeout=WAIT)
        with contextlib.suppress(TimeoutError):
            if not grpc_live:
                assert (await grpc_sub.next(0.3)).type == "probe"
                grpc_live = True
        with contextlib.suppress(TimeoutError):
            if not ws_live:
                assert (await ws.next(0.3))["type"] == "probe"
                ws_live = True


async def next_not_probe_grpc(stream: EventStream) -> pb.Event:
    while (event := await stream.next()).type == "probe":
        pass
    return event


async def next_not_probe_ws(ws: WsReader) -> dict[str, Any]:
    while (frame := await ws.next())["type"] == "probe":
        pass
    return frame


# ---------------------------------------------------------------------- 3. consumer group

HOLD = 0.15  # seconds a member keeps an event before acking it (ack timeout: 2 s)
ACK_TIMEOUT = 2.0


async def test_group_spans_replicas_and_a_killed_members_event_moves_over(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    a, b = await cluster.start()
    posted: set[str] = set()
    acked: dict[str, list[str]] = {}  # event id -> members that acked it
    holding: dict[str, str] = {}  # event id -> member holding it right now

    async def post(provider_id: str) -> str:
        status, payload = await post_webhook(session, a, provider_id)
        assert (status, payload["status"]) == (200, "accepted"), payload
        posted.add(payload["event_id"])
        return str(payload["event_id"])

    async with subscribed(a, group_request("member-a")) as on_a, \
            subscribed(b, group_request("member-b")) as on_b:
        # Both members are connected before the first webhook, so both get a share.
        await asyncio.gather(subscribes_started(session, a, 1), subscribes_started(session, b, 1))
        # Phase 1: both members work through the same events, one at a time each.
        got: dict[str, list[str]] = {"member-a": [], "member-b": []}
        done = asyncio.Event()
        first_batch = 8

        async def work(name: str, replica: Replica, stream: EventStream) -> None:
            while not done.is_set():
                event = await stream.next()
                assert event.delivery_attempt == 1, event
                other = holding.get(event.id)
                assert other is None, f"{event.id} given to {name} while {other} holds it"
                assert name not in holding.values(), f"{name} got a 2nd event (max_in_flight 1)"
                holding[event.id] = name
                got[name].append(event.id)
                await asyncio.sleep(HOLD)
                assert (await ack(replica, [event.id])).settled == 1
                acked.setdefault(event.id, []).append(name)
                del holding[event.id]
                if len(acked) == first_batch:
                    done.set()

        workers = [asyncio.create_task(work("member-a", a, on_a)),
                   asyncio.create_task(work("member-b", b, on_b))]
        try:
            for i in range(first_batch):
                await post(f"evt_share{i}")
            await asyncio.wait_for(done.wait(), WAIT)
        finally:
            for task in workers:
                task.cancel()
            results = await asyncio.gather(*workers, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError):
                raise AssertionError(f"a member failed: {result!r}") from result
        assert set(acked) == posted and all(len(v) == 1 for v in acked.values()), acked
        assert got["member-a"] and got["member-b"], f"not shared: {got}"

        # Phase 2: each member holds one event (max_in_flight 1 forces the split).
        await post("evt_kill1")
        await post("evt_kill2")
        held_a, held_b = await asyncio.gather(on_a.next(), on_b.next())
        delivered_to_a = time.monotonic()
        assert {held_a.id, held_b.id} == posted - set(acked)
        assert (held_a.delivery_attempt, held_b.delivery_attempt) == (1, 1)

        await a.sigkill()  # member-a never acks, never releases
        assert (await ack(b, [held_b.id])).settled == 1
        acked.setdefault(held_b.id, []).append("member-b")

        again = await on_b.next(WAIT)
        waited = time.monotonic() - delivered_to_a
        assert (again.id, again.delivery_attempt, again.data) == (held_a.id, 2, held_a.data)
        # It had to wait for member-a's ack timeout: A cannot hand it over when killed.
        assert waited >= ACK_TIMEOUT - 0.5, waited
        assert (await ack(b, [again.id])).settled == 1
        acked.setdefault(again.id, []).append("member-b")

    assert set(acked) == posted, (posted, acked)


async def test_group_member_is_woken_for_an_event_right_after_it_subscribes(
        cluster: Cluster) -> None:
    """A member on B whose first claim found nothing is woken by an event that A
    appends right after. (Regression: before 0487a50 the member's replica started
    following the topic only on the follower's next round, at the then-current end,
    so such an event woke nobody until the heartbeat, here 1 h.)"""
    a, b = await cluster.start()
    await asyncio.gather(a.connect(), b.connect())
    for i in range(5):  # a fresh topic each time: each is a new start of following
        topic = f"orders.{i}"
        async with subscribed(b, pb.SubscribeRequest(topics=[topic], group=f"g{i}",
                                                     consumer="worker")) as member:
            # The member's first (empty) claim has run: it now waits to be woken.
            await group_registered(cluster.redis_url, cluster.prefix, f"g{i}")
            published = await a.stub.Publish(pb.PublishRequest(topic=topic, type="x"),
                                             timeout=WAIT)
            # A newly followed topic joins the follower's blocking read within
            # ``follow.BLOCK`` (0.25 s); 2 s is that plus slack for a loaded machine.
            event = await member.next(2.0)
            assert (event.id, event.offset, event.delivery_attempt) == (
                published.event_id, published.offset, 1)


# ---------------------------------------------------------------------- 4. idempotency


def charges_integration(url: str, **extra: Any) -> dict[str, Any]:
    return {"integrations": {"svc": {"base_url": url, "allow_insecure_http": True,
                                     "retry": {"max_attempts": 1}, **extra}}}


async def test_idempotency_key_used_on_a_is_replayed_on_b(
        cluster: Cluster, upstream: Upstream) -> None:
    a, b = await cluster.start(extra=charges_integration(upstream.url))
    request = call("svc", "POST", "/charges", body=b'{"amount": 100}',
                   idempotency_key="order-42-charge")

    first = await a.stub.Call(request, timeout=WAIT)
    assert (first.status, first.body, first.replayed) == (201, b'{"charge": "ch_1"}', False)
    second = await b.stub.Call(request, timeout=WAIT)
    assert (second.status, second.body, second.replayed) == (201, b'{"charge": "ch_1"}', True)

    assert len(upstream.seen) == 1
    assert upstream.seen[0].headers.get("Idempotency-Key") == "order-42-charge"
    # The same key with another request is refused on B too: the record is shared.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await b.stub.Call(call("svc", "POST", "/charges", body=b'{"amount": 999}',
                               idempotency_key="order-42-charge"), timeout=WAIT)
    assert (info.value.code(), rich_error(info.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    assert len(upstream.seen) == 1


# ---------------------------------------------------------------------- 5. rate limit


async def test_rate_limit_is_shared_by_both_replicas(
        cluster: Cluster, upstream: Upstream) -> None:
    rate = {"rate": 5, "burst": 5, "on_limit": "reject"}
    replicas = await cluster.start(extra=charges_integration(upstream.url, rate_limit=rate))
    await asyncio.gather(*(r.connect() for r in replicas))  # no channel set-up in the burst

    async def one(replica: Replica) -> str:
        try:
            resp = await replica.stub.Call(call("svc", "GET", "/quota"), timeout=WAIT)
        except grpc.aio.AioRpcError as exc:
            err = rich_error(exc)
            return f"{err.code.name}/{err.reason}"
        return f"HTTP {resp.status}"

    started = time.monotonic()
    outcomes = await asyncio.gather(*(one(replicas[i % 2]) for i in range(20)))
    elapsed = time.monotonic() - started
    assert elapsed < 0.8, f"the burst took {elapsed:.2f}s: the bound below assumes < 1 s"

    ok = outcomes.count("HTTP 200") + outcomes.count("HTTP 201")
    limited = outcomes.count("RESOURCE_EXHAUSTED/RATE_LIMITED")
    assert ok + limited == 20, outcomes
    # A bucket per replica would let 10 through; one shared bucket lets its burst
    # (5) through, plus at most one token refilled (5/s) while the burst ran.
    assert 5 <= ok <= 6, outcomes
    assert len(upstream.seen) == ok
    # Both replicas drew from it and both were limited by it.
    by_replica = [outcomes[i::2] for i in range(2)]
    assert all("RESOURCE_EXHAUSTED/RATE_LIMITED" in o for o in by_replica), by_replica


# ---------------------------------------------------------------------- 6. Redis restart

#: The readiness check runs on a timer inside each sidecar process
#: (``sidecar.app.READINESS_INTERVAL`` = 5 s), so ``/readyz`` changes up to one
#: interval after Redis does; polling for twice that is the bound.
READY_WITHIN = 10.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis for this test alone (it gets stopped), persisting with AOF fsynced
    on every write so an acknowledged webhook survives the restart."""
    if shutil.which("redis-server") is None:
        require("restarting Redis needs a redis-server binary on PATH (REDIS_URL is not "
                "enough: the test must stop and start the server itself)")
    server = RedisServer(tmp_path / "private-redis",
                         extra=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def poll_readyz(session: aiohttp.ClientSession, replica: Replica, want: int) -> float:
    """Seconds until ``/readyz`` answers ``want``; fails after ``READY_WITHIN``."""
    started = time.monotonic()
    while True:
        status, body = await get_json(session, f"http://{replica.admin}/readyz")
        if status == want:
            assert body["status"] == ("ready" if want == 200 else "not_ready"), body
            return time.monotonic() - started
        assert time.monotonic() - started < READY_WITHIN, (
            f"{replica.name} /readyz still {status} {body} after {READY_WITHIN}s")
        await asyncio.sleep(0.2)


async def test_replicas_recover_from_a_redis_restart_without_losing_webhooks(
        private_redis: RedisServer, cluster: Cluster, session: aiohttp.ClientSession) -> None:
    # ``private_redis`` is set up before ``cluster``, so the children die first.
    a, b = await cluster.start(redis_url=private_redis.url)
    # A live subscriber on B that stays connected through the outage: B's follower
    # of the shared log must resume by itself for later webhooks to reach it.
    async with subscribed(b, pb.SubscribeRequest(topics=[WEBHOOK_TOPIC],
                                                 start=pb.START_POSITION_EARLIEST)) as live:
        await outage_and_recovery(session, private_redis, a, b, live)


async def outage_and_recovery(session: aiohttp.ClientSession, private_redis: RedisServer,
                              a: Replica, b: Replica, live: EventStream) -> None:
    accepted: list[str] = []

    async def accept(replica: Replica, provider_id: str) -> None:
        status, payload = await post_webhook(session, replica, provider_id)
        assert (status, payload.get("status")) == (200, "accepted"), (status, payload)
        accepted.append(payload["event_id"])

    n = 6
    for i in range(n):
        await accept((a, b)[i % 2], f"evt_before{i}")
    # The live subscriber is tailing (its replay is over) before Redis goes away.
    assert [(await live.next()).id for _ in range(n)] == accepted
    for replica in (a, b):
        await poll_readyz(session, replica, 200)

    await asyncio.to_thread(private_redis.stop)  # SIGTERM, waits for the exit
    status, payload = await post_webhook(session, a, "evt_during")
    assert status == 503, payload  # not acknowledged: the provider will retry it
    assert payload["error"]["reason"] == "UNAVAILABLE", payload
    for replica in (a, b):
        await poll_readyz(session, replica, 503)

    # Same port, same directory: the AOF is replayed.
    await asyncio.to_thread(private_redis.start)
    # The provider's retry of the refused webhook; the sidecars reconnect by themselves.
    deadline = time.monotonic() + 10.0
    while True:
        status, payload = await post_webhook(session, a, "evt_during")
        if status == 200:
            break
        assert status == 503, payload
        assert time.monotonic() < deadline, "webhooks still refused 10 s after Redis is back"
        await asyncio.sleep(0.2)
    assert payload["status"] == "accepted", payload
    accepted.append(payload["event_id"])
    for replica in (a, b):
        await poll_readyz(session, replica, 200)
    for i in range(4):
        await accept((b, a)[i % 2], f"evt_after{i}")
    assert len(set(accepted)) == n + 5

    # Every acknowledged webhook, before and after the restart, reaches the group.
    received: set[str] = set()
    async with subscribed(b, group_request("after-restart", max_in_flight=100)) as stream:
        while received != set(accepted):
            event = await stream.next()
            assert event.id in accepted and event.id not in received, event
            received.add(event.id)
        assert (await ack(b, sorted(received))).settled == len(received)
    # ... and, in log order, the live subscriber that stayed connected throughout.
    assert [(await live.next()).id for _ in accepted[n:]] == accepted[n:]
    status, again = await post_webhook(session, b, "evt_before0")
    assert (status, again["status"]) == (200, "duplicate"), again  # dedup records survived

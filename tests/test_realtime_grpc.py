"""Publish and live Subscribe over real gRPC with a real SQLite event log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.clock import FakeClock
from tests.conftest import make_config
from tests.rpc_support import rich_error


class Env:
    def __init__(self, sc: Sidecar, stub: pb_grpc.SidecarServiceStub) -> None:
        self.sc, self.stub = sc, stub

    async def publish(self, topic: str = "orders", data: bytes = b"{}", **kw: Any
                      ) -> pb.PublishResponse:
        published: pb.PublishResponse = await self.stub.Publish(
            pb.PublishRequest(topic=topic, data=data, **kw), timeout=5)
        return published

    def subscribe(self, *topics: str, **kw: Any) -> Any:
        return self.stub.Subscribe(pb.SubscribeRequest(topics=list(topics) or ["orders"], **kw))


async def started(sc: Sidecar, topic: str, count: int = 1) -> None:
    """Wait until ``count`` live subscribers are registered on ``topic``."""
    for _ in range(500):
        if sc.live.subscriber_count(topic) >= count:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("subscriber never registered")


async def read(stream: Any, n: int) -> list[pb.SubscribeResponse]:
    """The next ``n`` events and gaps (heartbeats and the opening Subscribed skipped)."""
    out: list[pb.SubscribeResponse] = []
    while len(out) < n:
        msg = await asyncio.wait_for(stream.read(), 5)
        if msg.HasField("event") or msg.HasField("gap"):
            out.append(msg)
    return out


async def opened(stream: Any) -> dict[str, int]:
    """The stream's first message, which must be Subscribed: its offsets. The sidecar
    sends it once the subscription is on the live bus."""
    msg = await asyncio.wait_for(stream.read(), 5)
    assert msg.WhichOneof("message") == "subscribed", msg
    return dict(msg.subscribed.offsets)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with running(tmp_path) as e:
        yield e


class running:
    def __init__(self, tmp_path: Path, realtime: dict[str, Any] | None = None,
                 clock: Any = None) -> None:
        self.config = make_config(tmp_path, {"realtime": realtime or {}})
        self.clock = clock

    async def __aenter__(self) -> Env:
        self.sc = Sidecar(self.config, clock=self.clock)
        await self.sc.start()
        self.channel = grpc.aio.insecure_channel(self.sc.grpc.address)
        return Env(self.sc, pb_grpc.SidecarServiceStub(self.channel))

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.sc.stop()


async def test_publish_assigns_ids_and_per_topic_offsets(env: Env) -> None:
    a1, a2 = await env.publish("a"), await env.publish("a")
    b1 = await env.publish("b")
    assert (a1.offset, a2.offset, b1.offset) == (1, 2, 1)
    assert len({a1.event_id, a2.event_id, b1.event_id}) == 3
    text = env.sc.metrics.exposition().decode()
    assert 'sidecar_events_published_total{topic_class="other"} 3.0' in text


async def test_publish_validation(env: Env) -> None:
    for request, field in [(pb.PublishRequest(topic="bad\ntopic"), "topic"),
                           (pb.PublishRequest(topic="t", data=b"x" * (1024 * 1024 + 1)),
                            "data"),
                           (pb.PublishRequest(topic="t", type="x" * 201), "type")]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.stub.Publish(request, timeout=5)
        err = rich_error(info.value)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.violations[0][0] == field


async def test_publish_idempotency(env: Env) -> None:
    first = await env.publish(idempotency_key="once")
    again = await env.publish(idempotency_key="once")
    assert (again.event_id, again.offset, again.replayed) == (first.event_id, 1, True)
    assert (await env.publish()).offset == 2  # nothing was published by the repeat


async def test_latest_gets_only_new_events_with_all_fields(env: Env) -> None:
    await env.publish(data=b"old")
    stream = env.subscribe()
    await started(env.sc, "orders")
    published = await env.publish(data=b'{"n": 1}', type="order.created",
                                  content_type="application/json",
                                  attributes={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16
                                              + "-01", "k": "v"})
    (msg,) = await read(stream, 1)
    e = msg.event
    assert (e.id, e.offset, e.data, e.type, e.content_type, e.attributes["k"]) == (
        published.event_id, 2, b'{"n": 1}', "order.created", "application/json", "v")
    assert e.attributes["traceparent"].startswith("00-aaaa") and e.time.seconds > 0
    stream.cancel()


async def test_replay_then_live_without_gap_or_duplicate(env: Env) -> None:
    for i in range(50):
        await env.publish(data=str(i).encode())
    stream = env.subscribe(start=pb.START_POSITION_EARLIEST)
    # publish concurrently with the replay so the seam is exercised
    more = asyncio.gather(*(env.publish(data=str(i).encode()) for i in range(50, 80)))
    msgs = await read(stream, 80)
    await more
    assert [m.event.offset for m in msgs] == list(range(1, 81))
    stream.cancel()


async def test_resume_after_offset_delivers_exactly_the_missed_events(env: Env) -> None:
    for i in range(6):
        await env.publish(data=str(i).encode())
    stream = env.subscribe(start=pb.START_POSITION_AFTER_OFFSET, after_offsets={"orders": 4})
    msgs = await read(stream, 2)
    assert [m.event.data for m in msgs] == [b"4", b"5"]
    stream.cancel()


async def test_resume_after_event_id(env: Env) -> None:
    ids = [(await env.publish(data=str(i).encode())).event_id for i in range(4)]
    stream = env.subscribe(start=pb.START_POSITION_AFTER_EVENT_ID, after_event_id=ids[1])
    assert [m.event.id for m in await read(stream, 2)] == ids[2:]
    stream.cancel()


async def test_resume_past_retention_reports_a_gap(tmp_path: Path) -> None:
    async with running(tmp_path, {"max_events_per_topic": 5}) as env:
        for i in range(10):
            await env.publish(data=str(i).encode())
        await env.sc.prune_once()
        stream = env.subscribe(start=pb.START_POSITION_AFTER_OFFSET,
                               after_offsets={"orders": 1})
        msgs = await read(stream, 6)
        gap = msgs[0].gap
        assert (gap.topic, gap.reason, gap.from_offset, gap.to_offset) == (
            "orders", pb.GAP_REASON_RETENTION, 2, 5)
        assert [m.event.offset for m in msgs[1:]] == [6, 7, 8, 9, 10]
        stream.cancel()


async def test_slow_consumer_is_disconnected_fast_one_gets_everything(tmp_path: Path) -> None:
    async with running(tmp_path, {"queue_size": 8}) as env:
        slow = env.subscribe()
        fast = env.subscribe()
        await started(env.sc, "orders", 2)
        big = b"x" * 200_000  # fills HTTP/2 windows quickly, so the slow queue backs up
        received: list[int] = []

        async def drain() -> None:
            while len(received) < 40:
                msg = await asyncio.wait_for(fast.read(), 10)
                if msg.HasField("event"):
                    received.append(msg.event.offset)

        reader = asyncio.ensure_future(drain())
        for _ in range(40):
            await env.publish(data=big)
        await reader
        assert received == list(range(1, 41))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in slow:
                pass
        err = rich_error(info.value)
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "SLOW_CONSUMER"
        text = env.sc.metrics.exposition().decode()
        assert ('sidecar_slow_consumer_events_total{policy="disconnect",transport="grpc"} 1.0'
                in text)


async def test_heartbeat_on_idle_stream(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running(tmp_path, {"heartbeat": "10s"}, clock=clock) as env:
        stream = env.subscribe()
        await started(env.sc, "orders")
        for _ in range(200):
            if clock.sleepers:
                break
            await asyncio.sleep(0.002)
        clock.advance(10)
        await opened(stream)
        msg = await asyncio.wait_for(stream.read(), 5)
        assert msg.HasField("heartbeat")
        stream.cancel()


async def test_subscribe_validation(env: Env) -> None:
    stream = env.stub.Subscribe(pb.SubscribeRequest(topics=[]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert rich_error(info.value).violations[0][0] == "topics"


async def test_shutdown_ends_streams_promptly(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        stream = env.subscribe()
        await opened(stream)
        await env.sc.stop()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(stream.read(), 5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------ Subscribed: where it starts


async def test_subscribed_names_where_each_start_position_continues(env: Env) -> None:
    ids = [(await env.publish(data=str(i).encode())).event_id for i in range(3)]
    topics = ["orders", "quiet"]  # "quiet" has never had an event
    cases: list[tuple[dict[str, Any], dict[str, int]]] = [
        ({}, {"orders": 3, "quiet": 0}),
        ({"start": pb.START_POSITION_LATEST}, {"orders": 3, "quiet": 0}),
        ({"start": pb.START_POSITION_EARLIEST}, {"orders": 0, "quiet": 0}),
        ({"start": pb.START_POSITION_AFTER_OFFSET, "after_offsets": {"orders": 1}},
         {"orders": 1, "quiet": 0}),
        ({"start": pb.START_POSITION_AFTER_OFFSET, "after_offsets": {"quiet": 7}},
         {"orders": 3, "quiet": 7}),
        ({"start": pb.START_POSITION_AFTER_EVENT_ID, "after_event_id": ids[1]},
         {"orders": 2, "quiet": 0}),
    ]
    for request, expected in cases:
        stream = env.subscribe(*topics, **request)
        assert await opened(stream) == expected, request
        stream.cancel()
    # Replays follow the announcement: after offset 1, events 2 and 3.
    stream = env.subscribe("orders", start=pb.START_POSITION_AFTER_OFFSET,
                           after_offsets={"orders": 1})
    assert await opened(stream) == {"orders": 1}
    assert [m.event.offset for m in await read(stream, 2)] == [2, 3]
    stream.cancel()


async def test_durable_groups_send_no_subscribed_message(env: Env) -> None:
    published = await env.publish()
    stream = env.subscribe("orders", group="g")
    msg = await asyncio.wait_for(stream.read(), 5)
    assert msg.WhichOneof("message") == "event" and msg.event.id == published.event_id
    stream.cancel()


async def test_latest_announces_an_exact_seam_while_publishes_race_the_join(env: Env) -> None:
    """Publishes in flight while the subscription joins: every event after the announced
    offset arrives once, in order, and none at or before it."""
    for _ in range(5):
        await env.publish()
    racing = asyncio.gather(*(env.publish() for _ in range(40)))
    stream = env.subscribe("orders")
    start = (await opened(stream))["orders"]
    await racing
    last = (await env.publish()).offset
    got = [m.event.offset for m in await read(stream, last - start)]
    assert got == list(range(start + 1, last + 1))
    stream.cancel()


async def test_resuming_with_the_announced_offsets_delivers_what_the_outage_missed(
        tmp_path: Path) -> None:
    """LATEST on a topic with nothing delivered yet, the sidecar restarts before any event
    arrives, events are published before the client comes back: resuming after the
    announced offsets delivers exactly those events, in order."""
    async with running(tmp_path) as env:
        await env.publish("quiet", b"before")  # before the subscription: not wanted
        stream = env.subscribe("quiet", "orders")
        announced = await opened(stream)
        assert announced == {"quiet": 1, "orders": 0}
        await env.sc.stop()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read(stream, 1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    async with running(tmp_path) as env:  # the same data directory: a restart
        missed = [await env.publish("quiet", str(i).encode()) for i in range(3)]
        missed.append(await env.publish("orders", b"o"))
        stream = env.subscribe("quiet", "orders", start=pb.START_POSITION_AFTER_OFFSET,
                               after_offsets=announced)
        assert await opened(stream) == announced
        got = await read(stream, 4)
        assert [m.event.id for m in got] == [p.event_id for p in missed]
        assert [(m.event.topic, m.event.offset) for m in got] == [
            ("quiet", 2), ("quiet", 3), ("quiet", 4), ("orders", 1)]
        later = await env.publish("quiet", b"live")
        assert [m.event.id for m in await read(stream, 1)] == [later.event_id]
        stream.cancel()

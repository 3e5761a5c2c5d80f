"""Durable delivery of webhooks: Subscribe with a group, Ack, redelivery, dead letters,
replay, VerifyWebhook. Real gRPC, real edge, real SQLite; a fake clock for timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.clock import FakeClock
from tests.conftest import make_config
from tests.rpc_support import rich_error
from tests.webhook_support import WEBHOOK_ENV, stripe_event, stripe_headers, webhook_sources


class Env:
    def __init__(self, sc: Sidecar, stub: pb_grpc.SidecarServiceStub, clock: FakeClock) -> None:
        self.sc, self.stub, self.clock = sc, stub, clock

    async def send(self, event_id: str) -> str:
        body = stripe_event(event_id)
        async with aiohttp.ClientSession() as session, session.post(
                f"http://{self.sc.edge.address}/webhooks/stripe", data=body,
                headers=stripe_headers(body, ts=int(self.clock.time()))) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["event_id"])

    def subscribe(self, consumer: str = "", max_in_flight: int = 0) -> Any:
        return self.stub.Subscribe(pb.SubscribeRequest(
            topics=["webhooks.stripe"], group="app", consumer=consumer,
            max_in_flight=max_in_flight))

    async def ack(self, ids: list[str], outcome: pb.AckOutcome,
                  error: str = "") -> pb.AckResponse:
        acked: pb.AckResponse = await self.stub.Ack(pb.AckRequest(
            group="app", event_ids=ids, outcome=outcome, error=error), timeout=5)
        return acked


async def next_event(stream: Any) -> pb.Event:
    while True:
        msg = await asyncio.wait_for(stream.read(), 5)
        if msg.HasField("event"):
            event: pb.Event = msg.event
            return event


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = FakeClock()
    config = make_config(tmp_path, {"webhooks": {
        "sources": webhook_sources(),
        "delivery": {"ack_timeout": "10s", "max_attempts": 3, "heartbeat": "1h",
                     "backoff": {"initial": "4s", "multiplier": 1}},
    }}, env=WEBHOOK_ENV)
    sc = Sidecar(config, clock=clock)
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel:
            yield Env(sc, pb_grpc.SidecarServiceStub(channel), clock)
    finally:
        await sc.stop()


async def test_event_is_delivered_then_acked(env: Env) -> None:
    event_id = await env.send("evt_a")
    stream = env.subscribe()
    event = await next_event(stream)
    assert (event.id, event.topic, event.type, event.delivery_attempt) == (
        event_id, "webhooks.stripe", "invoice.paid", 1)
    assert event.attributes["provider_event_id"] == "evt_a"
    assert event.data == stripe_event("evt_a")
    resp = await env.ack([event_id], pb.ACK_OUTCOME_SUCCESS)
    assert (resp.settled, list(resp.unknown_event_ids)) == (1, [])
    again = await env.ack([event_id], pb.ACK_OUTCOME_SUCCESS)
    assert (again.settled, list(again.unknown_event_ids)) == (0, [event_id])
    stream.cancel()


async def test_events_received_while_subscribed_arrive_live(env: Env) -> None:
    stream = env.subscribe()
    await asyncio.sleep(0)
    event_id = await env.send("evt_live")
    assert (await next_event(stream)).id == event_id
    stream.cancel()


async def test_unacked_event_is_redelivered_after_the_ack_timeout(env: Env) -> None:
    event_id = await env.send("evt_timeout")
    stream = env.subscribe()
    assert (await next_event(stream)).delivery_attempt == 1
    env.clock.advance(10.0)
    again = await next_event(stream)
    assert (again.id, again.delivery_attempt) == (event_id, 2)
    stream.cancel()


async def test_retry_ack_redelivers_with_backoff_then_dead_then_replay(env: Env) -> None:
    event_id = await env.send("evt_retry")
    stream = env.subscribe()
    for attempt in (1, 2, 3):
        event = await next_event(stream)
        assert (event.id, event.delivery_attempt) == (event_id, attempt)
        await env.ack([event_id], pb.ACK_OUTCOME_RETRY, error=f"failure {attempt}")
        env.clock.advance(4.0)
    # third retry exhausted max_attempts: dead, and nothing more arrives
    dead = await env.sc.storage.list_deliveries(group="app")
    assert [(r.status.value, r.attempts, r.last_error) for r in dead] == [
        ("dead", 3, "failure 3")]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{env.sc.admin.address}/webhooks/events",
                               params={"group": "app", "status": "dead"}) as resp:
            listed = (await resp.json())["events"]
        assert [e["event_id"] for e in listed] == [event_id]
        async with session.post(f"http://{env.sc.admin.address}/webhooks/replay",
                                json={"group": "app"}) as resp:
            assert (await resp.json()) == {"requeued": 1}
    env.sc.notifier.notify("webhooks.stripe")
    env.clock.advance(0.001)
    back = await next_event(stream)
    assert (back.id, back.delivery_attempt) == (event_id, 1)
    stream.cancel()


async def test_dead_letter_ack(env: Env) -> None:
    event_id = await env.send("evt_poison")
    stream = env.subscribe()
    await next_event(stream)
    await env.ack([event_id], pb.ACK_OUTCOME_DEAD_LETTER, error="cannot parse")
    (rec,) = await env.sc.storage.list_deliveries(group="app")
    assert (rec.status.value, rec.last_error) == ("dead", "cannot parse")
    stream.cancel()


async def test_two_members_share_without_overlap(env: Env) -> None:
    ids = [await env.send(f"evt_{i}") for i in range(4)]
    a = env.subscribe("a", max_in_flight=2)
    b = env.subscribe("b", max_in_flight=2)
    got_a = [(await next_event(a)).id for _ in range(2)]
    got_b = [(await next_event(b)).id for _ in range(2)]
    assert sorted(got_a + got_b) == sorted(ids) and not set(got_a) & set(got_b)
    # a member that disconnects hands its unacked events to the others at once
    a.cancel()
    await env.ack(got_b, pb.ACK_OUTCOME_SUCCESS)
    handed = sorted([(await next_event(b)).id for _ in range(2)])
    assert handed == sorted(got_a)
    b.cancel()


async def test_order_within_a_member(env: Env) -> None:
    ids = [await env.send(f"evt_o{i}") for i in range(5)]
    stream = env.subscribe(max_in_flight=10)
    assert [(await next_event(stream)).id for _ in range(5)] == ids
    stream.cancel()


async def test_ack_errors(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.Ack(pb.AckRequest(group="nope", event_ids=["x"],
                                         outcome=pb.ACK_OUTCOME_SUCCESS), timeout=5)
    assert rich_error(info.value).reason == "CONSUMER_GROUP_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.Ack(pb.AckRequest(group="app", event_ids=[]), timeout=5)
    err = rich_error(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.violations] == ["outcome"]


async def test_subscribe_validates(env: Env) -> None:
    stream = env.stub.Subscribe(pb.SubscribeRequest(topics=["bad\ntopic"], group="app"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert [f for f, _ in rich_error(info.value).violations] == ["topics[0]"]


async def test_verify_webhook_rpc(env: Env) -> None:
    body = stripe_event("evt_rpc")
    headers = [pb.Header(name=k, value=v)
               for k, v in stripe_headers(body, ts=int(env.clock.time())).items()]
    ok = await env.stub.VerifyWebhook(pb.VerifyWebhookRequest(source="stripe", headers=headers,
                                                              body=body), timeout=5)
    assert ok.result == pb.VERIFY_RESULT_VALID
    assert (ok.event_id, ok.event_type, ok.recorded) == ("evt_rpc", "invoice.paid", False)
    assert ok.timestamp.seconds == int(env.clock.time())
    bad = await env.stub.VerifyWebhook(pb.VerifyWebhookRequest(
        source="stripe", headers=headers, body=body + b"x"), timeout=5)
    assert bad.result == pb.VERIFY_RESULT_INVALID_SIGNATURE and bad.reason
    first = await env.stub.VerifyWebhook(pb.VerifyWebhookRequest(
        source="stripe", headers=headers, body=body, record=True), timeout=5)
    second = await env.stub.VerifyWebhook(pb.VerifyWebhookRequest(
        source="stripe", headers=headers, body=body, record=True), timeout=5)
    assert (first.recorded, first.duplicate) == (True, False)
    assert (second.recorded, second.duplicate) == (False, True)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.VerifyWebhook(pb.VerifyWebhookRequest(source="nope"), timeout=5)
    assert rich_error(info.value).reason == "WEBHOOK_SOURCE_NOT_FOUND"


async def test_group_gauges_show_counts_and_oldest_unacked_age(env: Env) -> None:
    await env.send("evt_g1")
    await env.send("evt_g2")
    stream = env.subscribe(max_in_flight=1)
    await next_event(stream)
    env.clock.advance(7.0)
    await env.sc._refresh_readiness()
    text = env.sc.metrics.exposition().decode()
    assert 'sidecar_group_events{group="app",status="delivered",topic="webhooks.stripe"} 1.0' in (
        text)
    assert 'sidecar_group_events{group="app",status="pending",topic="webhooks.stripe"} 1.0' in (
        text)
    assert ('sidecar_group_oldest_unacked_age_seconds{group="app",topic="webhooks.stripe"} 7.0'
            in text)
    stream.cancel()

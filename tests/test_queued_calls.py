"""Queued calls (#16): EnqueueCall over real gRPC, a real SQLite store, real upstreams
that fail on purpose; the long-horizon schedule runs on the fake clock."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from sidecar import cli
from sidecar.app import Sidecar
from sidecar.clock import FakeClock
from sidecar.config import ConfigError, dump_redacted, parse_config
from sidecar.core.calls.queue.models import QueuedCall, QueuedState
from sidecar.core.calls.queue.runner import LEASE
from tests.call_support import call, integration
from tests.clocks import SkippingClock
from tests.conftest import make_config
from tests.fuzzing import examples
from tests.redis_support import delete_prefix, redis_url  # noqa: F401 - a fixture
from tests.rpc_support import rich_error
from tests.upstream import Upstream, hang, reply


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


@dataclass
class Env:
    sc: Sidecar
    stub: pb_grpc.SidecarServiceStub
    clock: FakeClock
    settled: asyncio.Queue[QueuedCall]

    async def enqueue(self, key: str, **kw: Any) -> pb.EnqueueCallResponse:
        request = kw.pop("call", None) or call(method="POST", path="/charges", body=b"{}",
                                               idempotency_key=key)
        answer: pb.EnqueueCallResponse = await self.stub.EnqueueCall(
            pb.EnqueueCallRequest(call=request, **kw), timeout=5)
        return answer

    async def next_settled(self) -> QueuedCall:
        return await asyncio.wait_for(self.settled.get(), 10)

    async def get(self, call_id: str) -> pb.QueuedCall:
        found: pb.QueuedCall = await self.stub.GetQueuedCall(
            pb.GetQueuedCallRequest(id=call_id), timeout=5)
        return found

    async def outcome_events(self, count: int, topic: str = "calls.svc") -> list[pb.Event]:
        stream = self.stub.Subscribe(pb.SubscribeRequest(
            topics=[topic], start=pb.START_POSITION_EARLIEST))
        events: list[pb.Event] = []
        try:
            while len(events) < count:
                msg = await asyncio.wait_for(stream.read(), 5)
                if msg.HasField("event"):
                    events.append(msg.event)
        finally:
            stream.cancel()
        return events


@contextlib.asynccontextmanager
async def _env(tmp_path: Path, upstream: Upstream, clock: Any, backend: str = "sqlite",
               redis: str = "", **overrides: Any) -> AsyncIterator[Env]:
    extra: dict[str, Any] = {"integrations": {"svc": integration(upstream.url, **overrides)}}
    env: dict[str, str] = {}
    prefix = f"test:{secrets.token_hex(6)}:"
    if backend == "redis":
        extra["storage"] = {"backend": "redis", "redis": {"key_prefix": prefix}}
        env["REDIS_URL"] = redis
    sc = Sidecar(make_config(tmp_path, extra, env), clock=clock)
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel:
            assert sc.queue is not None
            yield Env(sc, pb_grpc.SidecarServiceStub(channel), clock, sc.queue.listen())
    finally:
        await sc.stop()
        if backend == "redis":
            await delete_prefix(redis, prefix)


@pytest.fixture(params=["sqlite", "redis"])
async def env(request: pytest.FixtureRequest, tmp_path: Path,
              upstream: Upstream) -> AsyncIterator[Env]:
    redis = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    async with _env(tmp_path, upstream, FakeClock(), request.param, redis) as e:
        yield e


async def test_a_flaky_upstream_succeeds_on_the_third_attempt(
        env: Env, upstream: Upstream) -> None:
    upstream.then(reply(503), reply(503))
    upstream.default = reply(201, b'{"id": "ch_1"}')
    queued = await env.enqueue("order-1")
    first = await env.next_settled()
    assert (first.id, first.state, first.attempts, first.last_status) == (
        queued.id, QueuedState.QUEUED, 1, 503)
    assert first.next_attempt_at is not None
    assert 4.0 <= first.next_attempt_at - env.clock.time() <= 5.0  # 5 s, jittered
    env.clock.advance(5.0)
    second = await env.next_settled()
    assert (second.state, second.attempts) == (QueuedState.QUEUED, 2)
    assert second.next_attempt_at is not None
    assert 240.0 <= second.next_attempt_at - env.clock.time() <= 300.0
    env.clock.advance(300.0)
    done = await env.next_settled()
    assert (done.state, done.attempts) == (QueuedState.SUCCEEDED, 3)
    got = await env.get(queued.id)
    assert got.state == pb.QUEUED_CALL_STATE_SUCCEEDED and got.attempts == 3
    assert (got.response.status, got.response.body) == (201, b'{"id": "ch_1"}')
    assert got.HasField("finished_at") and not got.HasField("next_attempt_at")
    # Every attempt carried the key: the upstream sees one effect.
    assert [s.headers.get("Idempotency-Key") for s in upstream.seen] == ["order-1"] * 3
    [event] = await env.outcome_events(1)
    assert (event.type, event.content_type) == ("call.succeeded", "application/json")
    doc = json.loads(event.data)
    assert (doc["id"], doc["state"], doc["attempts"]) == (
        queued.id, "QUEUED_CALL_STATE_SUCCEEDED", 3)
    assert doc["response"]["status"] == 201


async def test_a_4xx_fails_at_once_and_a_409_is_tried_again(env: Env,
                                                            upstream: Upstream) -> None:
    upstream.then(reply(409), reply(400, b'{"error": "card declined"}'))
    queued = await env.enqueue("order-2")
    assert (await env.next_settled()).state == QueuedState.QUEUED  # 409: later
    env.clock.advance(5.0)
    failed = await env.next_settled()
    assert (failed.state, failed.attempts, failed.last_status) == (QueuedState.FAILED, 2, 400)
    got = await env.get(queued.id)
    assert got.state == pb.QUEUED_CALL_STATE_FAILED
    assert got.response.body == b'{"error": "card declined"}'
    [event] = await env.outcome_events(1)
    assert event.type == "call.failed"


async def test_an_exhausted_schedule_is_dead_and_replay_brings_it_back(
        tmp_path: Path, upstream: Upstream) -> None:
    # No breaker here: eight 503s would open it (see the breaker test for that).
    async with _env(tmp_path, upstream, FakeClock(), circuit_breaker={"enabled": False}) as env:
        await _dead_then_replayed(env, upstream)


async def _dead_then_replayed(env: Env, upstream: Upstream) -> None:
    upstream.default = reply(503)
    queued = await env.enqueue("order-3")
    for _ in range(7):  # the default schedule: seven retries
        step = await env.next_settled()
        assert step.state == QueuedState.QUEUED and step.next_attempt_at is not None
        env.clock.advance(step.next_attempt_at - env.clock.time())
    dead = await env.next_settled()
    assert (dead.state, dead.attempts, dead.last_status) == (QueuedState.DEAD, 8, 503)
    assert len(upstream.seen) == 8
    [event] = await env.outcome_events(1)
    assert event.type == "call.dead"
    upstream.default = reply(200)
    assert env.sc.queue is not None
    again = await env.sc.queue.replay(queued.id)
    assert (again.state, again.attempts) == (QueuedState.QUEUED, 0)
    done = await env.next_settled()
    assert (done.state, done.attempts) == (QueuedState.SUCCEEDED, 1)


async def test_an_open_breaker_spends_no_attempts(tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(503)
    breaker = {"consecutive_failures": 1, "open_duration": "60s"}
    async with _env(tmp_path, upstream, FakeClock(), circuit_breaker=breaker) as env:
        await env.enqueue("a")
        assert (await env.next_settled()).attempts == 1  # 503: the breaker opens
        second = await env.enqueue("b")
        refused = await env.next_settled()
        assert (refused.id, refused.state, refused.attempts, refused.last_error) == (
            second.id, QueuedState.QUEUED, 0, "CIRCUIT_OPEN")
        assert len(upstream.seen) == 1
        upstream.default = reply(200)
        env.clock.advance(60.0)  # half-open: queued calls are the probes
        finished: dict[str, QueuedCall] = {}
        while len(finished) < 2:
            step = await env.next_settled()
            if step.state is QueuedState.QUEUED and step.next_attempt_at is not None:
                env.clock.advance(max(0.0, step.next_attempt_at - env.clock.time()))
            else:
                finished[step.id] = step
        assert {c.state for c in finished.values()} == {QueuedState.SUCCEEDED}
        assert finished[second.id].attempts == 1  # the refusal cost it nothing
        assert len(upstream.seen) == 3


async def test_ordering_keys_keep_order(env: Env, upstream: Upstream) -> None:
    upstream.then(reply(503))
    first = await env.enqueue("k-1", ordering_key="customer-7",
                              call=call(method="POST", path="/first", idempotency_key="k-1"))
    second = await env.enqueue("k-2", ordering_key="customer-7",
                               call=call(method="POST", path="/second", idempotency_key="k-2"))
    held = await env.next_settled()
    assert (held.id, held.state) == (first.id, QueuedState.QUEUED)
    assert [s.path for s in upstream.seen] == ["/first"]  # the follower waits
    env.clock.advance(5.0)
    done = [await env.next_settled(), await env.next_settled()]
    assert [(c.id, c.state) for c in done] == [(first.id, QueuedState.SUCCEEDED),
                                               (second.id, QueuedState.SUCCEEDED)]
    assert [s.path for s in upstream.seen] == ["/first", "/first", "/second"]


async def test_the_rate_limit_is_the_drain_rate(tmp_path: Path, upstream: Upstream) -> None:
    clock = SkippingClock()  # token waits return at once, the clock jumping ahead
    arrivals: list[float] = []
    ok = reply(200)

    async def timed(request: Any) -> Any:
        arrivals.append(clock.monotonic())
        return await ok(request)

    upstream.default = timed
    async with _env(tmp_path, upstream, clock, rate_limit={"rate": 200, "burst": 1}) as env:
        ids = {(await env.enqueue(f"drain-{i}")).id for i in range(500)}
        finished = {(await env.next_settled()).id for _ in range(500)}
        states = {(await env.get(i)).state for i in ids}
    # Every call succeeded: none failed for the limit, the queue waited for tokens ...
    assert finished == ids and states == {pb.QUEUED_CALL_STATE_SUCCEEDED}
    assert len(arrivals) == 500 and sum(clock.sleeps) > 0
    # ... so the upstream got at most 200/s (burst 1) on the sidecar's clock.
    assert arrivals[-1] - arrivals[0] >= 499 / 200 - 0.1


async def test_enqueue_refuses_what_call_would_and_dedupes_by_key(env: Env) -> None:
    async def refused(request: pb.EnqueueCallRequest) -> Any:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.stub.EnqueueCall(request, timeout=5)
        return rich_error(info.value)

    no_key = await refused(pb.EnqueueCallRequest(call=call(method="POST")))
    assert no_key.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "call.idempotency_key" in dict(no_key.violations)
    unknown = await refused(pb.EnqueueCallRequest(call=call("nope", idempotency_key="x")))
    assert unknown.reason == "INTEGRATION_NOT_FOUND"
    escape = await refused(pb.EnqueueCallRequest(
        call=call(path="https://elsewhere.example/x", idempotency_key="x")))
    assert escape.code == grpc.StatusCode.INVALID_ARGUMENT
    bad_topic = await refused(pb.EnqueueCallRequest(
        call=call(idempotency_key="x"), result_topic="bad\x00topic"))
    assert "result_topic" in dict(bad_topic.violations)
    later = timestamp_pb2.Timestamp(seconds=int(env.clock.time()) + 3600)
    first = await env.enqueue("same", not_before=later)
    again = await env.enqueue("same", not_before=later)
    assert (again.id, again.duplicate, first.duplicate) == (first.id, True, False)
    too_late = await refused(pb.EnqueueCallRequest(
        call=call(idempotency_key="late"),
        not_before=timestamp_pb2.Timestamp(seconds=int(env.clock.time()) + 4 * 86400)))
    assert "not_before" in dict(too_late.violations)  # past the 3-day max_age
    reused = await refused(pb.EnqueueCallRequest(
        call=call(method="POST", path="/other", idempotency_key="same"), not_before=later))
    assert reused.reason == "IDEMPOTENCY_KEY_REUSED"
    missing = await refused_get(env, "qc_nope")
    assert missing.reason == "QUEUED_CALL_NOT_FOUND"
    cancelled = await env.stub.CancelQueuedCall(pb.CancelQueuedCallRequest(id=first.id),
                                                timeout=5)
    assert cancelled.state == pb.QUEUED_CALL_STATE_CANCELLED


async def refused_get(env: Env, call_id: str) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.get(call_id)
    return rich_error(info.value)


async def test_operators_see_replay_and_cancel_queued_calls(env: Env, upstream: Upstream,
                                                            tmp_path: Path) -> None:
    upstream.then(reply(400, b"bad"))
    failed = await env.enqueue("ops-1")
    assert (await env.next_settled()).state == QueuedState.FAILED
    later = timestamp_pb2.Timestamp(seconds=int(env.clock.time()) + 3600)
    waiting = await env.enqueue("ops-2", not_before=later)
    admin = f"http://{env.sc.admin.address}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{admin}/calls", params={"state": "failed"}) as resp:
            listed = (await resp.json())["calls"]
        assert [(c["id"], c["state"], c["response"]["status"]) for c in listed] == [
            (failed.id, "QUEUED_CALL_STATE_FAILED", 400)]
        async with http.get(f"{admin}/calls", params={"state": "nonsense"}) as resp:
            assert resp.status == 400
        async with http.get(f"{admin}/calls/qc_missing") as resp:
            assert (resp.status, (await resp.json())["error"]["reason"]) == (
                404, "QUEUED_CALL_NOT_FOUND")
        async with http.post(f"{admin}/calls/{waiting.id}/cancel") as resp:
            assert (await resp.json())["state"] == "QUEUED_CALL_STATE_CANCELLED"
        async with http.post(f"{admin}/calls/{failed.id}/replay") as resp:
            assert (await resp.json())["state"] == "QUEUED_CALL_STATE_QUEUED"
    assert (await env.next_settled()).state == QueuedState.SUCCEEDED
    await env.sc._refresh_readiness()
    text = env.sc.metrics.exposition().decode()
    for line in ('sidecar_queued_call_attempts_total{integration="svc",outcome="4xx"} 1.0',
                 'sidecar_queued_call_attempts_total{integration="svc",outcome="2xx"} 1.0',
                 'sidecar_queued_calls_finished_total{integration="svc",state="failed"} 1.0',
                 'sidecar_queued_calls_finished_total{integration="svc",state="cancelled"} 1.0',
                 'sidecar_queued_calls{integration="svc",state="succeeded"} 1.0',
                 'sidecar_queued_calls{integration="svc",state="cancelled"} 1.0'):
        assert line in text


async def test_the_cli_lists_and_replays_from_the_store(tmp_path: Path, upstream: Upstream,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    upstream.default = reply(422)
    async with _env(tmp_path, upstream, FakeClock()) as env:
        failed = await env.enqueue("cli-1")
        assert (await env.next_settled()).state == QueuedState.FAILED
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"storage: {{data_dir: {tmp_path / 'data'}}}\n")
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, ["calls", "list", "--config", str(config),
                                              "--state", "failed"]) == 0
    out = capsys.readouterr().out
    assert failed.id in out and "failed" in out and "422" in out
    assert await asyncio.to_thread(cli.main, ["calls", "replay", "--config", str(config),
                                              "--json", failed.id]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["state"]) == (failed.id, "QUEUED_CALL_STATE_QUEUED")
    assert await asyncio.to_thread(cli.main, ["calls", "show", "--config", str(config),
                                              "qc_missing"]) == 1


async def test_replicas_on_redis_never_attempt_a_call_twice_and_take_over_a_dead_ones(
        tmp_path: Path, upstream: Upstream, redis_url: str) -> None:  # noqa: F811
    clock = FakeClock()
    prefix = f"test:{secrets.token_hex(6)}:"
    extra = {"integrations": {"svc": integration(upstream.url,
                                                 timeouts={"attempt": "1h", "total": "1h"})},
             "storage": {"backend": "redis", "redis": {"key_prefix": prefix}}}
    replicas = [Sidecar(make_config(tmp_path / name, extra, {"REDIS_URL": redis_url}),
                        clock=clock) for name in ("a", "b")]
    upstream.then(hang())  # the first attempt never ends: its replica holds the call
    try:
        for sc in replicas:
            await sc.start()
        async with grpc.aio.insecure_channel(replicas[0].grpc.address) as channel:
            stub = pb_grpc.SidecarServiceStub(channel)
            queued = await stub.EnqueueCall(pb.EnqueueCallRequest(call=call(
                method="POST", path="/charges", idempotency_key="once")), timeout=5)
        await asyncio.wait_for(upstream.arrived.wait(), 10)
        holder = next(sc for sc in replicas if sc.queue and sc.queue._leased)
        other = next(sc for sc in replicas if sc is not holder)
        assert holder.queue is not None and other.queue is not None
        settled = other.queue.listen()
        # Three leases' worth of time: the holder renews, the other never takes it.
        for _ in range(9):
            clock.advance(LEASE / 3)
            if holder.queue._renewing is not None:
                await holder.queue._renewing
        assert len(upstream.seen) == 1
        # The holder dies mid-attempt (no outcome, no more renewals) ...
        await _crash(holder.queue)
        upstream.default = reply(200)
        clock.advance(LEASE + 1)
        # ... and the other replica takes the call over once the lease runs out.
        done = await asyncio.wait_for(settled.get(), 10)
        assert (done.id, done.state) == (queued.id, QueuedState.SUCCEEDED)
        assert len(upstream.seen) == 2
        assert getattr(other.storage, "takeovers", 0) == 1
        assert "sidecar_queued_call_takeovers_total 1.0" in other.metrics.exposition().decode()
    finally:
        for sc in replicas:
            with contextlib.suppress(Exception):
                await sc.stop()
        await delete_prefix(redis_url, prefix)


async def _crash(queue: Any) -> None:
    """What a SIGKILL leaves of a replica's queue: nothing runs, nothing is settled."""
    queue._renew_timer.cancel()
    tasks = [queue._loop_task, *queue._tasks]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    queue._leased.clear()


async def test_the_queue_settings_of_an_integration_apply(tmp_path: Path,
                                                          upstream: Upstream) -> None:
    upstream.default = reply(503)
    queue = {"schedule": ["1s", "2s"], "jitter": 0, "concurrency": 1,
             "retryable_4xx": [429]}
    async with _env(tmp_path, upstream, FakeClock(), queue=queue,
                    circuit_breaker={"enabled": False}) as env:
        await env.enqueue("cfg-1")
        pauses = []
        step = await env.next_settled()
        while step.state is QueuedState.QUEUED:
            assert step.next_attempt_at is not None
            pauses.append(step.next_attempt_at - env.clock.time())
            env.clock.advance(pauses[-1])
            step = await env.next_settled()
        assert (step.state, step.attempts, pauses) == (QueuedState.DEAD, 3, [1.0, 2.0])
        shown = dump_redacted(env.sc.config)
        assert "schedule: [1s, 2s]" in shown and "retryable_4xx: [429]" in shown


@pytest.mark.parametrize(("queue", "expected"), [
    ({"schedule": "5s"}, "queue.schedule: must be a list of at most 50 durations"),
    ({"schedule": ["0s"]}, "queue.schedule: must be a list of at most 50 durations"),
    ({"schedule": ["1s"] * 51}, "queue.schedule: must be a list of at most 50 durations"),
    ({"retryable_4xx": [503]}, "queue.retryable_4xx: must list 4xx statuses only"),
    ({"concurrency": 0}, "queue.concurrency: must be at least 1"),
    ({"jitter": 2}, "queue.jitter: must be at most 1"),
    ({"max_age": "never"}, "queue.max_age: must be a duration"),
])
def test_hostile_queue_settings_are_refused_by_name(queue: dict[str, Any], expected: str) -> None:
    raw = {"integrations": {"svc": {"base_url": "https://svc.example", "queue": queue}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {})
    assert any(expected in str(p) for p in info.value.problems), info.value.problems


SIGNING_SECRET = "whsec_" + base64.b64encode(b"outbound-signing-key-for-tests-01").decode()
ROTATED_OUT = "whsec_" + base64.b64encode(b"the-previous-outbound-key-000002").decode()


@pytest.mark.parametrize("via", ["queue", "call"])
async def test_signed_requests_verify_with_the_standard_webhooks_library(
        tmp_path: Path, upstream: Upstream, via: str) -> None:
    extra: dict[str, Any] = {"integrations": {"svc": integration(
        upstream.url, signing={"secrets_env": ["OUT_NEW", "OUT_OLD"]})}}
    # The receiver checks webhook-timestamp against its own clock: fake time starts now.
    # A Call's retry sleeps: there the clock skips its waits instead.
    clock: Any = (FakeClock(wall_offset=time.time() - 1_000_000.0) if via == "queue"
                  else SkippingClock())
    sc = Sidecar(make_config(tmp_path, extra, {"OUT_NEW": SIGNING_SECRET,
                                               "OUT_OLD": ROTATED_OUT}), clock=clock)
    upstream.then(reply(503))  # one retry: the id stays, the signature is the attempt's
    await sc.start()
    try:
        assert sc.queue is not None
        settled = sc.queue.listen()
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel:
            stub = pb_grpc.SidecarServiceStub(channel)
            body = b'{"event": "order.paid", "order": 7}'
            request = call(method="POST", path="/hooks", body=body, idempotency_key="sig-1",
                           headers={"content-type": "application/json"})
            if via == "queue":
                queued = await stub.EnqueueCall(pb.EnqueueCallRequest(call=request), timeout=5)
                assert (await asyncio.wait_for(settled.get(), 10)).attempts == 1
                clock.advance(5.0)
                assert (await asyncio.wait_for(settled.get(), 10)).state is QueuedState.SUCCEEDED
            else:
                assert (await stub.Call(request, timeout=5)).attempts == 2
    finally:
        await sc.stop()
    assert len(upstream.seen) == 2
    ids = {seen.headers["webhook-id"] for seen in upstream.seen}
    assert len(ids) == 1  # the same message on every attempt
    if via == "queue":
        assert ids == {queued.id}
    for seen in upstream.seen:
        for secret in (SIGNING_SECRET, ROTATED_OUT):  # either key of a rotation verifies
            payload = Webhook(secret).verify(seen.body, {
                k: seen.headers[k] for k in ("webhook-id", "webhook-timestamp",
                                             "webhook-signature")})
            assert payload == json.loads(seen.body)
    tampered = {k: upstream.seen[0].headers[k] for k in ("webhook-id", "webhook-timestamp",
                                                         "webhook-signature")}
    with pytest.raises(WebhookVerificationError):
        Webhook(SIGNING_SECRET).verify(b'{"event": "order.paid", "order": 8}', tampered)


def test_a_signing_secret_that_is_not_whsec_is_refused_by_name() -> None:
    raw = {"integrations": {"svc": {"base_url": "https://svc.example",
                                    "signing": {"secrets_env": ["OUT"]}}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {"OUT": "plain-password"})
    assert any("integrations.svc.signing.secrets_env[0]: OUT must hold a whsec_ secret"
               in str(p) for p in info.value.problems), info.value.problems
    assert "plain-password" not in str(info.value)


async def test_the_status_page_shows_queued_calls(tmp_path: Path, upstream: Upstream) -> None:
    upstream.then(hang())  # holds the only slot: the next call is due but waits
    async with _env(tmp_path, upstream, FakeClock(), queue={"concurrency": 1},
                    timeouts={"attempt": "1h", "total": "1h"}) as env:
        await env.enqueue("status-1")
        await asyncio.wait_for(upstream.arrived.wait(), 10)
        await env.enqueue("status-2")
        env.clock.advance(600.0)
        admin = f"http://{env.sc.admin.address}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{admin}/status.json") as resp:
                snapshot = await resp.json()
            async with http.get(f"{admin}/status") as resp:
                page = await resp.text()
    [row] = snapshot["queued_calls"]
    assert (row["integration"], row["queued"], row["running"]) == ("svc", 1, 1)
    assert row["oldest_due_seconds"] == 600.0
    assert 'data-queue="svc"' in page and "<h2>Queued calls</h2>" in page


async def test_each_outcome_is_appended_once_without_a_crash(env: Env) -> None:
    # A race once appended 6-21% of outcomes twice (the attempt's own append, and the
    # loop's sweep for unappended outcomes reading the call before its mark).
    ids = {(await env.enqueue(f"once-{i}")).id for i in range(120)}
    while ids:
        ids.discard((await env.next_settled()).id)
    assert env.sc.queue is not None
    await env.sc.queue.drained()
    last = await env.enqueue("once-last")  # one more loop turn after all of them
    assert (await env.next_settled()).id == last.id
    await env.sc.queue.drained()
    first, end = await env.sc.storage.topic_bounds("calls.svc")
    assert end - first + 1 == 121


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(max_size=300), topic=st.text(max_size=320), ordering=st.text(max_size=300),
       path=st.text(max_size=80), seconds=st.integers(-(2 ** 62), 2 ** 62),
       lookup=st.text(max_size=300))
async def test_hostile_enqueue_fields_get_a_documented_answer(
        env: Env, key: str, topic: str, ordering: str, path: str, seconds: int,
        lookup: str) -> None:
    """Whatever the fields hold: stored, or refused with a documented reason; never an
    INTERNAL error, and a lookup of any id is the call or QUEUED_CALL_NOT_FOUND."""
    request = pb.EnqueueCallRequest(
        call=call(method="POST", path=path, idempotency_key=key), result_topic=topic,
        ordering_key=ordering, not_before=timestamp_pb2.Timestamp(seconds=seconds))
    for rpc, message in ((env.stub.EnqueueCall, request),
                         (env.stub.GetQueuedCall, pb.GetQueuedCallRequest(id=lookup)),
                         (env.stub.CancelQueuedCall, pb.CancelQueuedCallRequest(id=lookup))):
        try:
            await rpc(message, timeout=5)
        except grpc.aio.AioRpcError as exc:
            err = rich_error(exc)
            assert err.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), err
            assert err.reason in ("INVALID_ARGUMENT", "IDEMPOTENCY_KEY_REUSED",
                                  "QUEUED_CALL_NOT_FOUND", "MALFORMED_REQUEST"), err

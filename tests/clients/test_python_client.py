"""The Python client against a real in-process sidecar: calls through a real
aiohttp upstream, typed errors with rich details, deadlines, subscriptions, the
durable-group consumer and the blocking client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import integration_sidecar_client
import pytest
from integration_sidecar_client import (
    DEFAULT,
    AckOutcome,
    AsyncSidecarClient,
    CircuitOpenError,
    DeadLetter,
    DeadlineExceededError,
    Event,
    Gap,
    GapReason,
    IdempotencyKeyReusedError,
    InvalidArgumentError,
    NotFoundError,
    Reconnect,
    SidecarClient,
    SidecarError,
    SidecarUnreachableError,
    StartPosition,
    UnauthenticatedError,
    UnavailableError,
    VerifyResult,
    idempotency_key_for,
    new_idempotency_key,
)
from integration_sidecar_client.errors import error_from_rpc

from sidecar.app import Sidecar
from sidecar.core.events.models import DeliveryStatus
from tests.call_support import integration
from tests.clients.conftest import free_port, running
from tests.conftest import make_config
from tests.upstream import Upstream, reply, slow
from tests.webhook_support import STRIPE_SECRET, stripe_event, stripe_headers

WAIT = 10.0


# ---------------------------------------------------------------------- Call


async def test_call_returns_the_upstream_answer(tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(201, b'{"id": "ch_1"}', {"Content-Type": "application/json",
                                                      "X-Trace": "a"})
    async with running(tmp_path, {"integrations": {"pay": integration(upstream.url)}}) as (
            _, sidecar):
        resp = await sidecar.call("pay", "post", "/charges", query={"expand": "customer"},
                                  headers=[("X-One", "1")], body=b'{"amount": 5}',
                                  idempotency_key="order-7")
    assert (resp.status, resp.ok, resp.attempts, resp.replayed) == (201, True, 1, False)
    assert resp.json() == {"id": "ch_1"}
    assert resp.header("x-trace") == "a" and resp.header("missing") is None
    (seen,) = upstream.seen
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "POST", "/charges", "expand=customer", b'{"amount": 5}')
    assert seen.headers["X-One"] == "1" and seen.headers["Idempotency-Key"] == "order-7"


async def test_call_receives_a_body_over_grpcs_default_4_mib(tmp_path: Path,
                                                            upstream: Upstream) -> None:
    body = b"x" * (5 * 1024 * 1024)
    upstream.default = reply(200, body)
    extra = {"integrations": {"svc": integration(upstream.url)},
             "server": {"grpc": {"address": "127.0.0.1:0", "max_message_bytes": 8 << 20}}}
    async with running(tmp_path, extra) as (_, sidecar):
        resp = await sidecar.call("svc")
    assert resp.body == body


async def test_idempotency_key_replays_and_refuses_reuse(tmp_path: Path,
                                                         upstream: Upstream) -> None:
    key = idempotency_key_for("charge", 42)
    async with running(tmp_path, {"integrations": {"pay": integration(upstream.url)}}) as (
            _, sidecar):
        first = await sidecar.call("pay", "POST", "/charges", body=b"a", idempotency_key=key)
        again = await sidecar.call("pay", "POST", "/charges", body=b"a", idempotency_key=key)
        with pytest.raises(IdempotencyKeyReusedError) as info:
            await sidecar.call("pay", "POST", "/charges", body=b"b", idempotency_key=key)
    assert (first.replayed, again.replayed, again.attempts) == (False, True, 0)
    assert len(upstream.seen) == 1
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"


def test_idempotency_keys() -> None:
    assert idempotency_key_for("refund", "o-1") == idempotency_key_for("refund", "o-1")
    assert idempotency_key_for("ab", "c") != idempotency_key_for("a", "bc")
    assert idempotency_key_for(1) != idempotency_key_for("1") != idempotency_key_for(b"1")
    key = idempotency_key_for("x")
    assert len(key) <= 255 and key.isascii() and key.isprintable()
    assert new_idempotency_key() != new_idempotency_key()
    with pytest.raises(ValueError):
        idempotency_key_for()


async def test_open_breaker_is_a_typed_error_with_reason_and_retry_delay(
        tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(503, b"down")
    svc = integration(upstream.url, retry={"max_attempts": 1},
                      circuit_breaker={"consecutive_failures": 2, "open_duration": "30s"})
    async with running(tmp_path, {"integrations": {"svc": svc}}) as (_, sidecar):
        for _ in range(2):  # an upstream 5xx is an answer, not an error
            assert (await sidecar.call("svc")).status == 503
        with pytest.raises(CircuitOpenError) as info:
            await sidecar.call("svc")
    err = info.value
    assert isinstance(err, UnavailableError) and isinstance(err, SidecarError)
    assert (err.code.name, err.reason, err.domain) == (
        "UNAVAILABLE", "CIRCUIT_OPEN", "integration-sidecar")
    assert err.retry_delay is not None and 0 < err.retry_delay <= 30
    assert str(err).startswith("CIRCUIT_OPEN: ")
    assert (err.upstream_reached, err.attempts) == ("no", 0)
    assert len(upstream.seen) == 2


async def test_bad_argument_names_the_field(tmp_path: Path, upstream: Upstream) -> None:
    async with running(tmp_path, {"integrations": {"svc": integration(upstream.url)}}) as (
            _, sidecar):
        with pytest.raises(InvalidArgumentError) as info:
            await sidecar.call("svc", "GET", "https://elsewhere.example/steal")
        with pytest.raises(InvalidArgumentError) as topic:
            await sidecar.publish("no\ncontrol characters")
    assert info.value.reason == "INVALID_ARGUMENT"
    assert [v.field for v in info.value.field_violations] == ["path"]
    assert [v.field for v in topic.value.field_violations] == ["topic"]
    assert upstream.seen == []


async def test_unknown_integration_is_not_found(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, sidecar):
        with pytest.raises(NotFoundError) as info:
            await sidecar.call("nope")
    assert info.value.reason == "INTEGRATION_NOT_FOUND"
    assert info.value.code.name == "NOT_FOUND"


async def test_default_deadline_applies_to_every_call(tmp_path: Path,
                                                      upstream: Upstream) -> None:
    upstream.default = slow(10)
    async with running(tmp_path, {"integrations": {"svc": integration(upstream.url)}},
                       timeout=0.3) as (_, sidecar):
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await sidecar.call("svc")
        assert time.monotonic() - started < 3
        # A per-call timeout overrides the client's default.
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await sidecar.call("svc", timeout=0.1)
        assert time.monotonic() - started < 3
        # ... and DEFAULT or None pass the default or no deadline at all.
        assert (await sidecar.publish("t", b"x", timeout=DEFAULT)).offset == 1
        assert (await sidecar.publish("t", b"y", timeout=None)).offset == 2


async def test_api_token_is_sent_and_never_echoed(tmp_path: Path) -> None:
    token = "tok-" + new_idempotency_key()
    extra = {"server": {"grpc": {"address": "127.0.0.1:0", "api_token_env": "TOKEN"}}}
    async with running(tmp_path, extra, {"TOKEN": token}, api_token=token) as (sc, sidecar):
        assert (await sidecar.publish("t", b"x")).offset == 1
        assert token not in repr(sidecar)
        async with AsyncSidecarClient(sc.grpc.address, api_token="wrong") as bad:
            with pytest.raises(UnauthenticatedError) as info:
                await bad.publish("t", b"x")
    assert info.value.reason == "API_TOKEN_INVALID"
    assert "wrong" not in str(info.value) and token not in str(info.value)


async def test_unreachable_sidecar_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("SIDECAR_ADDRESS", address)
    async with AsyncSidecarClient(timeout=2) as sidecar:
        assert sidecar.target == address
        with pytest.raises(SidecarUnreachableError) as info:
            await sidecar.publish("t")
    assert info.value.reason == "" and info.value.code.name == "UNAVAILABLE"


# ---------------------------------------------------------------------- other unary RPCs


async def test_verify_webhook_presence_and_ack_errors(tmp_path: Path) -> None:
    extra = {"webhooks": {"sources": {"gh": {"scheme": "github", "secrets_env": ["GH"]},
                                      "stripe": {"scheme": "stripe",
                                                 "secrets_env": ["STRIPE"]}}},
             "realtime": {"websocket": {"jwt": {"algorithms": ["HS256"],
                                                "hs256_secret_env": "WS"}}}}
    env = {"GH": "s3cret", "STRIPE": STRIPE_SECRET,
           "WS": "ws-secret-0123456789abcdef0123456789abcdef"}
    body = stripe_event("evt_client_1")
    async with running(tmp_path, extra, env) as (_, sidecar):
        verdict = await sidecar.verify_webhook("gh", {"X-Hub-Signature-256": "sha256=00"},
                                               b"{}")
        good = await sidecar.verify_webhook("stripe", stripe_headers(body), body, record=True)
        again = await sidecar.verify_webhook("stripe", stripe_headers(body), body, record=True)
        presence = await sidecar.get_presence("broadcast")
        with pytest.raises(NotFoundError) as missing:
            await sidecar.verify_webhook("nope", {}, b"")
        with pytest.raises(InvalidArgumentError) as bad:
            await sidecar.ack("g", [], AckOutcome.SUCCESS)
    assert (verdict.result, verdict.valid) == (VerifyResult.INVALID_SIGNATURE, False)
    assert (good.valid, good.event_id, good.event_type, good.recorded, good.duplicate) == (
        True, "evt_client_1", "invoice.paid", True, False)
    assert good.timestamp is not None and abs(time.time() - good.timestamp.timestamp()) < 60
    assert (again.valid, again.recorded, again.duplicate) == (True, False, True)
    assert (presence.topic, presence.connections, presence.users) == ("broadcast", 0, 0)
    assert missing.value.reason == "WEBHOOK_SOURCE_NOT_FOUND"
    assert [v.field for v in bad.value.field_violations] == ["event_ids"]


# ---------------------------------------------------------------------- subscribe


class Collector:
    """Reads a subscription in a task so a test can await the next items."""

    def __init__(self, items: AsyncIterator[Event | Gap]) -> None:
        self.queue: asyncio.Queue[Event | Gap] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump(items))

    async def _pump(self, items: AsyncIterator[Event | Gap]) -> None:
        async for item in items:
            self.queue.put_nowait(item)

    async def take(self, n: int) -> list[Event | Gap]:
        return [await asyncio.wait_for(self.queue.get(), WAIT) for _ in range(n)]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_subscribe_replays_then_tails_and_reports_gaps(tmp_path: Path) -> None:
    async with running(tmp_path, {"realtime": {"max_events_per_topic": 2}}) as (sc, sidecar):
        for i in range(4):
            await sidecar.publish("orders", f'{{"n": {i}}}'.encode(),
                                  content_type="application/json", attributes={"i": str(i)})
        await sc.prune_once()
        async with sidecar.subscribe("orders", start=StartPosition.EARLIEST) as sub:
            items = Collector(sub)
            gap, e3, e4 = await items.take(3)
            await sidecar.publish("orders", b"{}", type="order.live")
            (live,) = await items.take(1)
            await items.close()
            assert sub.offsets == {"orders": 5}
    assert gap == Gap("orders", GapReason.RETENTION, 1, 2)
    assert isinstance(e3, Event) and isinstance(e4, Event) and isinstance(live, Event)
    assert (e3.offset, e3.json(), e3.attributes["i"], e4.offset) == (3, {"n": 2}, "2", 4)
    assert (live.offset, live.type, live.delivery_attempt) == (5, "order.live", 0)


async def test_subscribe_resumes_after_the_sidecar_restarts(tmp_path: Path) -> None:
    """In-process restart on the same port and data directory; the SIGTERM'd process
    variant is in test_python_client_process.py."""
    address = f"127.0.0.1:{free_port()}"
    extra = {"server": {"grpc": {"address": address}}}
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0.02)

    sc = Sidecar(make_config(tmp_path, extra))
    await sc.start()
    reconnect = Reconnect(initial=0.05, maximum=0.4, sleep=sleep, random=lambda: 1.0)
    async with AsyncSidecarClient(address, reconnect=reconnect) as sidecar:
        sub = sidecar.subscribe("a", after_offsets={"a": 0})
        items = Collector(sub)
        try:
            await sidecar.publish("a", b"1")
            first = await items.take(1)
            await sc.stop()
            sc = Sidecar(make_config(tmp_path, extra))
            await sc.start()
            async with AsyncSidecarClient(address, wait_for_ready=True) as publisher:
                await publisher.publish("a", b"2")
            second = await items.take(1)
        finally:
            await items.close()
            await sc.stop()
    assert [(e.topic, e.offset, e.data) for e in first + second if isinstance(e, Event)] == [
        ("a", 1, b"1"), ("a", 2, b"2")]
    assert waits and waits[0] == 0.05


async def test_latest_subscription_resumes_a_topic_it_had_no_event_on(tmp_path: Path) -> None:
    """LATEST on topics with nothing delivered yet; the sidecar restarts before any event
    arrives and events are published before the client is back: the resubscription
    starts after the offsets the first stream announced, so each arrives once, in order."""
    address = f"127.0.0.1:{free_port()}"
    extra = {"server": {"grpc": {"address": address}}}
    sc = Sidecar(make_config(tmp_path, extra))
    await sc.start()
    reconnect = Reconnect(initial=0.02, maximum=0.1)
    async with AsyncSidecarClient(address, reconnect=reconnect) as sidecar:
        await sidecar.publish("quiet", b"before")  # older than the subscription
        sub = sidecar.subscribe(["quiet", "empty"])
        items = Collector(sub)
        try:
            # The announcement is consumed inside the subscription (nothing is yielded):
            # wait, bounded, until its resume point holds it.
            deadline = time.monotonic() + WAIT
            while sub.offsets != {"quiet": 1}:
                assert time.monotonic() < deadline, sub.offsets
                await asyncio.sleep(0.005)
            await sc.stop()
            sc = Sidecar(make_config(tmp_path, extra))
            await sc.start()
            async with AsyncSidecarClient(address, wait_for_ready=True) as publisher:
                for data in (b"q2", b"q3"):
                    await publisher.publish("quiet", data)
                await publisher.publish("empty", b"e1")
                missed = await items.take(3)
                later = await publisher.publish("quiet", b"q4")
                after = await items.take(1)
        finally:
            await items.close()
            await sc.stop()
    assert [(e.topic, e.offset, e.data) for e in missed if isinstance(e, Event)] == [
        ("quiet", 2, b"q2"), ("quiet", 3, b"q3"), ("empty", 1, b"e1")]
    assert [(e.topic, e.offset) for e in after if isinstance(e, Event)] == [
        ("quiet", later.offset)]


async def next_offset(sub: AsyncIterator[Event | Gap]) -> int:
    item = await asyncio.wait_for(anext(sub), WAIT)
    assert isinstance(item, Event), item
    return item.offset


async def test_slow_consumer_resubscribes_without_losing_events(tmp_path: Path) -> None:
    """The sidecar cuts a subscriber that does not read (SLOW_CONSUMER); the
    subscription resubscribes from its last offset and still yields every event once."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with running(tmp_path, {"realtime": {"queue_size": 4}},
                       reconnect=Reconnect(sleep=sleep)) as (sc, sidecar):
        sub = sidecar.subscribe("big", start=StartPosition.EARLIEST)
        big = b"x" * 200_000  # fills HTTP/2 windows quickly, so the sidecar's queue backs up
        first = await sidecar.publish("big", b"first")
        assert await next_offset(sub) == first.offset
        for _ in range(40):  # nobody reads meanwhile; a publish offers to the queue at once
            await sidecar.publish("big", big)
        assert 'sidecar_slow_consumer_events_total{policy="disconnect",transport="grpc"} 1.0' \
            in sc.metrics.exposition().decode()
        offsets = [await next_offset(sub) for _ in range(40)]
        await sub.aclose()
    assert offsets == list(range(2, 42))
    assert len(waits) == 1  # one resubscribe


async def test_blocking_subscription_resumes_after_restart(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    extra = {"server": {"grpc": {"address": address}}}
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[Event | Gap] = asyncio.Queue()

    def read() -> None:  # in a thread: the blocking client blocks
        with SidecarClient(address, reconnect=Reconnect(initial=0.05, maximum=0.2)) as client, \
                client.subscribe("a", start=StartPosition.EARLIEST) as sub:
            for item in sub:
                loop.call_soon_threadsafe(received.put_nowait, item)
                if isinstance(item, Event) and item.data == b"last":
                    return

    sc = Sidecar(make_config(tmp_path, extra))
    await sc.start()
    reader = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        async with AsyncSidecarClient(address, wait_for_ready=True, timeout=WAIT) as publisher:
            await publisher.publish("a", b"1")
            items = [await asyncio.wait_for(received.get(), WAIT)]
            await sc.stop()
            sc = Sidecar(make_config(tmp_path, extra))
            await sc.start()
            await publisher.publish("a", b"2")
            await publisher.publish("a", b"last")
            items += [await asyncio.wait_for(received.get(), WAIT) for _ in range(2)]
            await asyncio.wait_for(reader, WAIT)
    finally:
        await sc.stop()
    assert [(e.offset, e.data) for e in items if isinstance(e, Event)] == [
        (1, b"1"), (2, b"2"), (3, b"last")]


def test_reconnect_backoff_is_exponential_with_full_jitter() -> None:
    policy = Reconnect(initial=0.1, maximum=1.0, multiplier=2.0, max_attempts=3,
                       random=lambda: 0.5)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.05, 0.1, 0.2, 0.4, 0.5]
    assert Reconnect(random=lambda: 0.0).delay(7) == 0.0
    assert (policy.gives_up(3), policy.gives_up(4), Reconnect().gives_up(10**6)) == (
        False, True, False)


async def test_subscription_gives_up_after_max_attempts(tmp_path: Path) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    reconnect = Reconnect(max_attempts=2, sleep=sleep)
    async with AsyncSidecarClient(f"127.0.0.1:{free_port()}", reconnect=reconnect) as sidecar:
        with pytest.raises(SidecarUnreachableError):
            async for _ in sidecar.subscribe("t"):
                pass
    assert len(slept) == 2


async def test_subscribe_does_not_retry_a_bad_request(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, sidecar):
        with pytest.raises(InvalidArgumentError) as info:
            async for _ in sidecar.subscribe(["ok", "not\nok"]):
                pass
    assert [v.field for v in info.value.field_violations] == ["topics[1]"]


# ---------------------------------------------------------------------- durable consumer


async def test_consumer_acks_and_a_raising_handler_gets_a_redelivery(tmp_path: Path) -> None:
    delivery = {"delivery": {"backoff": {"initial": "10ms", "max": "10ms"}}}
    async with running(tmp_path, {"webhooks": delivery}) as (sc, sidecar):
        published = [await sidecar.publish("jobs", f"job-{i}".encode()) for i in range(3)]
        handled: list[tuple[str, int]] = []
        settled: asyncio.Queue[tuple[str, AckOutcome]] = asyncio.Queue()

        async def handler(event: Event) -> None:
            handled.append((event.data.decode(), event.delivery_attempt))
            if event.data == b"job-1" and event.delivery_attempt == 1:
                raise RuntimeError("flaky downstream")
            if event.data == b"job-2":
                raise DeadLetter("malformed job")

        task = asyncio.create_task(sidecar.consume(
            "workers", "w1", "jobs", handler, max_in_flight=2,
            on_settled=lambda e, outcome: settled.put_nowait((e.data.decode(), outcome))))
        try:
            outcomes = [await asyncio.wait_for(settled.get(), WAIT) for _ in range(4)]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        records = {r.event_id: r for r in await sc.storage.list_deliveries(group="workers")}
    assert sorted(outcomes, key=str) == sorted([
        ("job-0", AckOutcome.SUCCESS), ("job-1", AckOutcome.RETRY),
        ("job-1", AckOutcome.SUCCESS), ("job-2", AckOutcome.DEAD_LETTER)], key=str)
    assert sorted(handled) == [("job-0", 1), ("job-1", 1), ("job-1", 2), ("job-2", 1)]
    by_id = [records[p.event_id] for p in published]
    assert [(r.status, r.attempts) for r in by_id] == [
        (DeliveryStatus.COMPLETED, 1), (DeliveryStatus.COMPLETED, 2), (DeliveryStatus.DEAD, 1)]
    assert [r.last_error for r in by_id] == [
        "", "RuntimeError: flaky downstream", "DeadLetter: malformed job"]


async def test_consumer_runs_at_most_max_in_flight_handlers(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, sidecar):
        for i in range(5):
            await sidecar.publish("jobs", str(i).encode())
        release = asyncio.Event()
        running_now = 0
        peak = 0
        done: asyncio.Queue[None] = asyncio.Queue()
        entered: asyncio.Queue[None] = asyncio.Queue()

        async def handler(event: Event) -> None:
            nonlocal running_now, peak
            running_now += 1
            peak = max(peak, running_now)
            entered.put_nowait(None)
            await release.wait()
            running_now -= 1

        task = asyncio.create_task(sidecar.consume(
            "g", "c", ["jobs"], handler, max_in_flight=2,
            on_settled=lambda e, o: done.put_nowait(None)))
        try:
            for _ in range(2):
                await asyncio.wait_for(entered.get(), WAIT)
            assert (running_now, entered.qsize()) == (2, 0)
            release.set()
            for _ in range(5):
                await asyncio.wait_for(done.get(), WAIT)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert peak == 2


# ---------------------------------------------------------------------- blocking client


async def test_blocking_client(tmp_path: Path, upstream: Upstream) -> None:
    async with running(tmp_path, {"integrations": {"svc": integration(upstream.url)}}) as (
            sc, _):
        def use() -> tuple[Any, ...]:
            with SidecarClient(sc.grpc.address, timeout=5) as sidecar:
                resp = sidecar.call("svc", "GET", "/x")
                sidecar.publish("t", b"1")
                sidecar.publish("t", b"2")
                with sidecar.subscribe("t", start=StartPosition.EARLIEST) as sub:
                    it = iter(sub)
                    got = [next(it), next(it)]
                try:
                    sidecar.call("nope")
                except NotFoundError as exc:
                    err = exc
                return resp, got, err

        resp, got, err = await asyncio.to_thread(use)
    assert resp.status == 200 and resp.body == b"ok"
    assert [e.data for e in got if isinstance(e, Event)] == [b"1", b"2"]
    assert err.reason == "INTEGRATION_NOT_FOUND"


def test_error_without_details_maps_by_code() -> None:
    class Fake:
        def code(self) -> Any:
            return grpc.StatusCode.DEADLINE_EXCEEDED

        def details(self) -> str:
            return "Deadline Exceeded"

        def trailing_metadata(self) -> Any:
            return ()

    err = error_from_rpc(Fake())
    assert isinstance(err, DeadlineExceededError)
    assert (err.reason, err.retry_delay, err.field_violations) == ("", None, ())


def test_public_exports_are_pinned() -> None:
    """Renaming or dropping a public name is a breaking change: make it on purpose."""
    assert sorted(integration_sidecar_client.__all__) == sorted([
        "DEFAULT", "DEFAULT_TARGET", "DEFAULT_TIMEOUT", "OUTCOME_TYPES", "AbortedError",
        "AckOutcome", "AckResult", "AsyncSidecarClient", "BulkheadFullError", "CallResponse",
        "CancelledRpcError", "CircuitOpenError", "DeadLetter", "DeadlineExceededError",
        "Deprecation", "EnqueuedCall", "Event", "FailedPreconditionError", "FieldViolation",
        "Gap", "GapReason", "IdempotencyInFlightError", "IdempotencyKeyReusedError",
        "InternalError", "InvalidArgumentError", "NotFoundError", "Presence",
        "PublishResult", "QueuedCall", "QueuedCallState", "RateLimitedError", "Reconnect",
        "ResourceExhaustedError",
        "ResponseTooLargeError", "ShuttingDownError", "SidecarClient", "SidecarError",
        "SidecarUnreachableError", "SlowConsumerError", "StartPosition",
        "StorageUnavailableError", "Subscription", "SyncSubscription",
        "UnauthenticatedError", "UnavailableError", "UnimplementedError",
        "UpstreamTimeoutError", "UpstreamUnreachableError", "VerifyResult",
        "WebhookVerdict", "default_result_topic", "idempotency_key_for",
        "new_idempotency_key", "queued_call_outcome"])
    for name in integration_sidecar_client.__all__:
        assert getattr(integration_sidecar_client, name) is not None
    errors = [getattr(integration_sidecar_client, n) for n in integration_sidecar_client.__all__
              if n.endswith("Error") and n != "SidecarError"]
    assert all(issubclass(e, SidecarError) for e in errors)

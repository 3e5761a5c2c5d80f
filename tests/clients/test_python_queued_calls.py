"""Queued calls through the Python client against a real in-process sidecar (SQLite,
a real aiohttp upstream): enqueue, get, cancel, typed errors, and the typed outcome
consumer reading the result topic through a durable group."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from integration_sidecar_client import (
    OUTCOME_TYPES,
    AckOutcome,
    AsyncSidecarClient,
    Event,
    IdempotencyKeyReusedError,
    InvalidArgumentError,
    NotFoundError,
    QueuedCall,
    QueuedCallState,
    SidecarClient,
    StartPosition,
    default_result_topic,
    idempotency_key_for,
    queued_call_outcome,
)

from sidecar.app import Sidecar
from tests.call_support import integration
from tests.clients.conftest import running
from tests.upstream import Upstream, reply

WAIT = 10.0


@contextlib.asynccontextmanager
async def queue(tmp_path: Path, upstream: Upstream, **overrides: Any
                ) -> AsyncIterator[tuple[Sidecar, AsyncSidecarClient]]:
    extra = {"integrations": {"pay": integration(upstream.url, **overrides)},
             "webhooks": {"delivery": {"backoff": {"initial": "10ms", "max": "10ms"}}}}
    async with running(tmp_path, extra, timeout=WAIT) as both:
        yield both


class Outcomes:
    """A running ``consume_call_outcomes``: what the handler got, and how each
    event was settled."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[QueuedCall] = asyncio.Queue()
        self.settled: asyncio.Queue[tuple[Event, AckOutcome]] = asyncio.Queue()

    async def handler(self, call: QueuedCall) -> None:
        self.calls.put_nowait(call)

    async def next_call(self) -> QueuedCall:
        return await asyncio.wait_for(self.calls.get(), WAIT)

    async def next_settled(self) -> tuple[Event, AckOutcome]:
        return await asyncio.wait_for(self.settled.get(), WAIT)


@contextlib.asynccontextmanager
async def consuming(sidecar: AsyncSidecarClient, topic: str) -> AsyncIterator[Outcomes]:
    outcomes = Outcomes()
    task = asyncio.create_task(sidecar.consume_call_outcomes(
        "billing", "w1", topic, outcomes.handler,
        on_settled=lambda e, o: outcomes.settled.put_nowait((e, o))))
    try:
        yield outcomes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_enqueued_call_succeeds_and_its_outcome_is_consumed_typed(
        tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(201, b'{"id": "ch_1"}', {"Content-Type": "application/json"})
    key = idempotency_key_for("charge", 7)
    async with queue(tmp_path, upstream) as (_, sidecar):
        queued = await sidecar.enqueue_call(
            "pay", "post", "/charges", idempotency_key=key, body=b'{"amount": 5}',
            query={"expand": "customer"}, headers=[("X-One", "1")])
        assert queued.id.startswith("qc_") and queued.duplicate is False
        async with consuming(sidecar, default_result_topic("pay")) as outcomes:
            done = await outcomes.next_call()
            event, acked = await outcomes.next_settled()
        got = await sidecar.get_queued_call(queued.id)
    assert (done.id, done.integration, done.state, done.attempts) == (
        queued.id, "pay", QueuedCallState.SUCCEEDED, 1)
    assert done.finished and done.state.finished
    assert (done.result_topic, done.idempotency_key, done.last_status) == (
        "calls.pay", key, 201)
    assert done.response is not None and done.response.status == 201
    assert done.response.json() == {"id": "ch_1"}
    assert done.response.header("content-type") == "application/json"
    assert done.created_at is not None and done.finished_at is not None
    assert done.created_at <= done.finished_at and done.next_attempt_at is None
    # The event says what GetQueuedCall says (the store keeps no response duration).
    assert got.response is not None
    assert replace(got, response=replace(got.response, duration=done.response.duration)) \
        == done
    assert (event.type, event.content_type, acked) == (
        "call.succeeded", "application/json", AckOutcome.SUCCESS)
    assert event.attributes["queued_call_id"] == queued.id
    (seen,) = upstream.seen
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "POST", "/charges", "expand=customer", b'{"amount": 5}')
    assert seen.headers["Idempotency-Key"] == key and seen.headers["X-One"] == "1"


async def test_a_failed_call_is_an_outcome_with_its_answer_on_the_chosen_topic(
        tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(400, b"card declined")
    async with queue(tmp_path, upstream) as (_, sidecar):
        queued = await sidecar.enqueue_call("pay", "POST", "/charges", idempotency_key="k-400",
                                            result_topic="billing.outcomes")
        async with consuming(sidecar, "billing.outcomes") as outcomes:
            failed = await outcomes.next_call()
    assert (failed.id, failed.state, failed.last_status, failed.result_topic) == (
        queued.id, QueuedCallState.FAILED, 400, "billing.outcomes")
    assert failed.response is not None and failed.response.body == b"card declined"


async def test_the_same_key_is_the_same_call_and_another_request_is_refused(
        tmp_path: Path, upstream: Upstream) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    async with queue(tmp_path, upstream) as (_, sidecar):
        first = await sidecar.enqueue_call("pay", "POST", "/refunds", idempotency_key="r-1",
                                           body=b"a", not_before=later)
        again = await sidecar.enqueue_call("pay", "POST", "/refunds", idempotency_key="r-1",
                                           body=b"a", not_before=later)
        with pytest.raises(IdempotencyKeyReusedError) as reused:
            await sidecar.enqueue_call("pay", "POST", "/refunds", idempotency_key="r-1",
                                       body=b"b", not_before=later)
    assert (again.id, again.duplicate, first.duplicate) == (first.id, True, False)
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_not_before_keeps_a_call_queued_and_cancel_ends_it(
        tmp_path: Path, upstream: Upstream) -> None:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    async with queue(tmp_path, upstream) as (_, sidecar):
        waiting = await sidecar.enqueue_call("pay", "POST", "/later", idempotency_key="w-1",
                                             not_before=later, ordering_key="customer-7")
        # A call enqueued after it, due now, runs and finishes first: the queue is
        # working, and the waiting call was not attempted.
        now = await sidecar.enqueue_call("pay", "POST", "/now", idempotency_key="n-1")
        async with consuming(sidecar, "calls.pay") as outcomes:
            assert (await outcomes.next_call()).id == now.id
        held = await sidecar.get_queued_call(waiting.id)
        cancelled = await sidecar.cancel_queued_call(waiting.id)
        again = await sidecar.cancel_queued_call(waiting.id)
    assert (held.state, held.attempts, held.next_attempt_at, held.ordering_key) == (
        QueuedCallState.QUEUED, 0, later, "customer-7")
    assert held.response is None and held.finished_at is None and not held.finished
    assert (cancelled.id, cancelled.state, cancelled.attempts) == (
        waiting.id, QueuedCallState.CANCELLED, 0)
    assert cancelled.finished_at is not None and again == cancelled
    assert [s.path for s in upstream.seen] == ["/now"]


async def test_errors_are_typed(tmp_path: Path, upstream: Upstream) -> None:
    async with queue(tmp_path, upstream) as (_, sidecar):
        with pytest.raises(NotFoundError) as missing:
            await sidecar.get_queued_call("qc_missing")
        with pytest.raises(NotFoundError) as cancel_missing:
            await sidecar.cancel_queued_call("qc_missing")
        with pytest.raises(NotFoundError) as unknown:
            await sidecar.enqueue_call("nope", "POST", "/", idempotency_key="x")
        with pytest.raises(InvalidArgumentError) as no_key:
            await sidecar.enqueue_call("pay", "POST", "/", idempotency_key="")
        with pytest.raises(ValueError, match="timezone-aware"):
            await sidecar.enqueue_call("pay", "POST", "/", idempotency_key="x",
                                       not_before=datetime(2030, 1, 1))
    assert missing.value.reason == cancel_missing.value.reason == "QUEUED_CALL_NOT_FOUND"
    assert unknown.value.reason == "INTEGRATION_NOT_FOUND"
    assert "call.idempotency_key" in {v.field for v in no_key.value.field_violations}
    assert upstream.seen == []


async def test_an_event_that_is_not_an_outcome_is_dead_lettered(
        tmp_path: Path, upstream: Upstream) -> None:
    async with queue(tmp_path, upstream) as (sc, sidecar):
        stray = await sidecar.publish("calls.pay", b"{}", type="something.else")
        broken = await sidecar.publish("calls.pay", b"not json", type="call.succeeded")
        queued = await sidecar.enqueue_call("pay", "POST", "/x", idempotency_key="ok-1")
        async with consuming(sidecar, "calls.pay") as outcomes:
            assert (await outcomes.next_call()).id == queued.id
            settled = [await outcomes.next_settled() for _ in range(3)]
        records = {r.event_id: r for r in await sc.storage.list_deliveries(group="billing")}
    by_event = {e.id: o for e, o in settled}
    assert (by_event[stray.event_id], by_event[broken.event_id]) == (
        AckOutcome.DEAD_LETTER, AckOutcome.DEAD_LETTER)
    assert "not a queued-call outcome" in records[stray.event_id].last_error
    assert "not a QueuedCall" in records[broken.event_id].last_error


def test_queued_call_outcome_reads_the_proto3_json_mapping() -> None:
    doc = {"id": "qc_1", "integration": "svc", "state": "QUEUED_CALL_STATE_DEAD",
           "attempts": 8, "lastStatus": 503, "finishedAt": "2026-01-02T03:04:05.250Z",
           "response": {"status": 503, "body": "YnVzeQ==", "durationMs": "1500"},
           "aFieldFromANewerSidecar": True}
    event = Event(id="e1", topic="calls.svc", type="call.dead", data=json.dumps(doc).encode(),
                  content_type="application/json", offset=1, time=datetime.now(UTC))
    call = queued_call_outcome(event)
    assert (call.id, call.state, call.attempts, call.last_status) == (
        "qc_1", QueuedCallState.DEAD, 8, 503)
    assert call.finished_at == datetime(2026, 1, 2, 3, 4, 5, 250000, UTC)
    assert call.response is not None
    assert (call.response.body, call.response.duration) == (b"busy", 1.5)
    assert (call.created_at, call.last_error, call.ordering_key) == (None, "", "")
    assert {"call.succeeded", "call.failed", "call.dead"} == OUTCOME_TYPES
    with pytest.raises(ValueError, match="not a queued-call outcome"):
        queued_call_outcome(Event(id="e2", topic="t", type="other", data=b"{}",
                                  content_type="", offset=2, time=datetime.now(UTC)))


async def test_blocking_client_enqueues_gets_cancels_and_reads_outcomes(
        tmp_path: Path, upstream: Upstream) -> None:
    async with queue(tmp_path, upstream) as (sc, _):
        def use() -> tuple[Any, ...]:
            with SidecarClient(sc.grpc.address, timeout=WAIT) as sidecar:
                done = sidecar.enqueue_call("pay", "PUT", "/a", idempotency_key="s-1")
                later = datetime.now(UTC) + timedelta(days=1)
                waiting = sidecar.enqueue_call("pay", "PUT", "/b", idempotency_key="s-2",
                                               not_before=later)
                with sidecar.subscribe("calls.pay", start=StartPosition.EARLIEST) as sub:
                    first = next(iter(sub))
                assert isinstance(first, Event)
                got = sidecar.get_queued_call(waiting.id)
                cancelled = sidecar.cancel_queued_call(waiting.id)
                try:
                    sidecar.get_queued_call("qc_missing")
                except NotFoundError as exc:
                    err = exc
                return done, queued_call_outcome(first), got, cancelled, err

        done, outcome, got, cancelled, err = await asyncio.to_thread(use)
    assert (outcome.id, outcome.state) == (done.id, QueuedCallState.SUCCEEDED)
    assert (got.state, cancelled.state) == (QueuedCallState.QUEUED, QueuedCallState.CANCELLED)
    assert err.reason == "QUEUED_CALL_NOT_FOUND"

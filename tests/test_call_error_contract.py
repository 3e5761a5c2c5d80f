"""The Call error contract a caller can act on (#15).

``CIRCUIT_OPEN`` (like ``RATE_LIMITED`` and ``BULKHEAD_FULL``) promises that nothing was
sent upstream, so an app may take another path (another payment provider) without a
double side effect. It must never be the answer to a call whose own attempt went out.
Every Call error says how many attempts went out and whether the upstream may have
received the request (``upstream_reached``: ``no``, ``maybe``, ``yes``), and the log
line, span and metrics give the same count.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.call_support import call, integration, running
from tests.clocks import SkippingClock
from tests.rpc_support import rich_error
from tests.upstream import Upstream, reply, reset


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


def opens_at_once(url: str, **overrides: Any) -> dict[str, Any]:
    """An integration whose breaker opens on the first failure, with retries left."""
    return integration(url, circuit_breaker={"consecutive_failures": 1, "open_duration": "60s"},
                       retry={"max_attempts": 3, "backoff": {"initial": "1ms", "max": "2ms"}},
                       **overrides)


async def failing_call(stub: Any, **kw: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Call(call(**kw), timeout=5)
    return rich_error(info.value)


async def test_a_reset_after_the_request_was_sent_is_not_circuit_open(
        tmp_path: Path, upstream: Upstream) -> None:
    # A POST with an idempotency key is retried; the reset opens the breaker, so the
    # retry is refused. The request did reach the upstream: the answer must say so.
    upstream.default = reset()
    async with running(tmp_path, {"svc": opens_at_once(upstream.url)},
                       clock=SkippingClock()) as (_, stub):
        err = await failing_call(stub, method="POST", body=b"{}", idempotency_key="pay-1")
    assert len(upstream.seen) == 1
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "UPSTREAM_UNREACHABLE"
    assert err.metadata["attempts"] == "1" and err.metadata["upstream_reached"] == "maybe"
    assert err.metadata["cause"] == "reset"
    assert err.metadata["retry_stopped_by"] == "CIRCUIT_OPEN"


async def test_a_refused_connection_that_opens_the_breaker_is_reported_as_such(
        tmp_path: Path) -> None:
    dead = await Upstream().start()
    url = dead.url
    await dead.stop()  # nothing listens there now
    async with running(tmp_path, {"svc": opens_at_once(url)}, clock=SkippingClock()) as (_, stub):
        err = await failing_call(stub)
        # The breaker is open now: the next call really sends nothing.
        second = await failing_call(stub)
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNREACHABLE")
    assert err.metadata["attempts"] == "1" and err.metadata["upstream_reached"] == "no"
    assert err.metadata["cause"] == "connect"
    assert (second.code, second.reason) == (grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN")
    assert second.metadata["attempts"] == "0" and second.metadata["upstream_reached"] == "no"


async def test_a_503_that_opens_the_breaker_is_answered_with_the_503(
        tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(503, b"down")
    async with running(tmp_path, {"svc": opens_at_once(upstream.url)},
                       clock=SkippingClock()) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
        refused = await failing_call(stub)
    assert (resp.status, resp.body, resp.attempts, len(upstream.seen)) == (503, b"down", 1, 1)
    assert (refused.reason, refused.metadata["upstream_reached"]) == ("CIRCUIT_OPEN", "no")


async def test_a_call_that_failed_after_three_attempts_says_three_everywhere(
        tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    upstream.default = reset()
    caplog.set_level(logging.INFO, logger="sidecar.calls")
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (sc, stub):
        err = await failing_call(stub)
        text = sc.metrics.exposition().decode()
    assert len(upstream.seen) == 3
    assert err.metadata["attempts"] == "3" and err.metadata["upstream_reached"] == "maybe"
    (finished,) = [r for r in caplog.records if r.getMessage() == "call finished"]
    assert finished.__dict__["attempts"] == 3
    assert finished.__dict__["outcome"] == "UPSTREAM_UNREACHABLE"
    # The metrics counted the three that went out.
    assert ('sidecar_upstream_attempts_total{integration="svc",outcome="reset",route=""} 3.0'
            in text)


async def test_an_answer_means_the_upstream_was_reached(
        tmp_path: Path, upstream: Upstream) -> None:
    # A response body over the limit: an answer came, so the request arrived.
    upstream.default = reply(200, b"x" * 4096)
    svc = integration(upstream.url, max_response_bytes=1024)
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        err = await failing_call(stub, method="POST", body=b"{}")
    assert err.reason == "RESPONSE_TOO_LARGE"
    assert err.metadata["attempts"] == "1" and err.metadata["upstream_reached"] == "yes"


async def test_a_refused_request_says_nothing_went_out(tmp_path: Path,
                                                       upstream: Upstream) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        bad = await failing_call(stub, path="/../../etc")
        unknown = await failing_call(stub, integration="nope")
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    for err in (bad, unknown):
        assert err.metadata["attempts"] == "0" and err.metadata["upstream_reached"] == "no"
    assert upstream.seen == []

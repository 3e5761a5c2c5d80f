"""Call resilience over real sockets: retries, deadlines, breakers, budgets, rate limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.app import Sidecar
from sidecar.clock import FakeClock
from tests.call_support import call, integration, running
from tests.clocks import SkippingClock
from tests.rpc_support import rich_error
from tests.upstream import Upstream, hang, reply, reset


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


async def metrics_text(sidecar: Sidecar) -> str:
    return sidecar.metrics.exposition().decode()


# --------------------------------------------------------------------------- retries


async def test_503_then_200_succeeds_on_the_second_attempt(tmp_path: Path,
                                                           upstream: Upstream) -> None:
    upstream.then(reply(503), reply(200, b"fine"))
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (sc, stub):
        resp = await stub.Call(call(path="/x"), timeout=5)
        text = await metrics_text(sc)
    assert (resp.status, resp.body, resp.attempts) == (200, b"fine", 2)
    assert len(upstream.seen) == 2
    assert 'sidecar_retries_total{integration="svc",reason="status_503",route=""} 1.0' in text
    assert 'sidecar_upstream_attempts_total{integration="svc",outcome="5xx",route=""} 1.0' in text


async def test_400_is_not_retried(tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(400, b"bad")
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert (resp.status, resp.attempts, len(upstream.seen)) == (400, 1, 1)


async def test_exhausted_retries_return_the_last_answer(tmp_path: Path,
                                                        upstream: Upstream) -> None:
    upstream.default = reply(503, b"down")
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert (resp.status, resp.body, resp.attempts, len(upstream.seen)) == (503, b"down", 3, 3)


async def test_post_without_key_is_not_retried(tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(503)
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(method="POST", body=b"{}"), timeout=5)
    assert (resp.status, resp.attempts, len(upstream.seen)) == (503, 1, 1)


async def test_post_with_key_is_retried_with_the_same_key(tmp_path: Path,
                                                          upstream: Upstream) -> None:
    upstream.then(reply(503), reply(502), reply(201, b"created"))
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(method="POST", body=b"{}", idempotency_key="order-1"),
                               timeout=5)
    assert (resp.status, resp.attempts) == (201, 3)
    assert [s.headers.get("Idempotency-Key") for s in upstream.seen] == ["order-1"] * 3


async def test_connection_reset_is_retried(tmp_path: Path, upstream: Upstream) -> None:
    upstream.then(reset(), reply(200, b"again"))
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert (resp.status, resp.body, len(upstream.seen)) == (200, b"again", 2)
    assert resp.attempts == 2


async def test_unreachable_upstream_is_unavailable(tmp_path: Path) -> None:
    dead = await Upstream().start()
    url = dead.url
    await dead.stop()  # nothing listens there now
    async with running(tmp_path, {"svc": integration(url)}) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5)
    err = rich_error(info.value)
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "UPSTREAM_UNREACHABLE"
    assert err.metadata["attempts"] == "3" and err.metadata["cause"] == "connect"


async def test_429_retry_after_is_honoured(tmp_path: Path, upstream: Upstream) -> None:
    clock = SkippingClock()
    upstream.then(reply(429, headers={"Retry-After": "1"}), reply(200))
    async with running(tmp_path, {"svc": integration(upstream.url)}, clock=clock) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert (resp.status, resp.attempts) == (200, 2)
    assert clock.sleeps == [1.0]


async def test_x_ratelimit_reset_is_honoured(tmp_path: Path, upstream: Upstream) -> None:
    clock = SkippingClock()
    upstream.then(reply(429, headers={"X-RateLimit-Reset": "2"}), reply(200))
    async with running(tmp_path, {"svc": integration(upstream.url)}, clock=clock) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert resp.status == 200 and clock.sleeps == [2.0]


async def test_retry_after_past_the_deadline_returns_the_429(tmp_path: Path,
                                                             upstream: Upstream) -> None:
    clock = SkippingClock()
    upstream.default = reply(429, b"slow down", headers={"Retry-After": "30"})
    async with running(tmp_path, {"svc": integration(upstream.url)}, clock=clock) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert (resp.status, resp.body, resp.attempts) == (429, b"slow down", 1)
    assert clock.sleeps == [] and len(upstream.seen) == 1


async def test_backoff_sleeps_grow_with_full_jitter(tmp_path: Path, upstream: Upstream) -> None:
    clock = SkippingClock()
    upstream.default = reply(503)
    svc = integration(upstream.url, retry={"max_attempts": 4,
                                           "backoff": {"initial": "100ms", "max": "150ms"}})
    async with running(tmp_path, {"svc": svc}, clock=clock) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert resp.attempts == 4 and len(clock.sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, [0.1, 0.15, 0.15], strict=True))


# --------------------------------------------------------------------------- deadlines


async def test_hanging_upstream_gives_deadline_exceeded_on_time(tmp_path: Path,
                                                                upstream: Upstream) -> None:
    upstream.default = hang()
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=0.3)
        elapsed = time.monotonic() - t0
    # stopping the sidecar drained the call: any retry would have been recorded by now
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.25 <= elapsed < 1.0, elapsed
    assert len(upstream.seen) == 1


async def test_total_timeout_bounds_a_call_without_a_grpc_deadline(tmp_path: Path,
                                                                   upstream: Upstream) -> None:
    upstream.default = hang()
    svc = integration(upstream.url, timeouts={"connect": "100ms", "attempt": "150ms",
                                              "total": "400ms"})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call())
        elapsed = time.monotonic() - t0
    err = rich_error(info.value)
    assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.0 and 2 <= len(upstream.seen) <= 3


# --------------------------------------------------------------------------- circuit breaker


def breaker_integration(url: str, **breaker: object) -> dict[str, Any]:
    return integration(url, retry={"max_attempts": 1}, circuit_breaker=breaker)


async def test_breaker_opens_fails_fast_half_opens_and_closes(tmp_path: Path,
                                                              upstream: Upstream) -> None:
    clock = FakeClock()
    upstream.default = reply(500)
    svc = breaker_integration(upstream.url, consecutive_failures=3, open_duration="10s",
                              half_open_probes=1, close_after=2)
    async with running(tmp_path, {"svc": svc}, clock=clock) as (sc, stub):
        for _ in range(3):
            assert (await stub.Call(call(), timeout=5)).status == 500
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5)
        err = rich_error(info.value)
        assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "CIRCUIT_OPEN"
        assert err.retry_delay == pytest.approx(10.0, abs=0.01)
        assert len(upstream.seen) == 3  # failing fast: nothing reached the upstream
        assert 'sidecar_circuit_breaker_state{integration="svc",scope="",state="open"} 1.0' in (
            await metrics_text(sc))

        clock.advance(10.0)
        upstream.default = reply(200)
        assert (await stub.Call(call(), timeout=5)).status == 200  # the probe
        assert (await stub.Call(call(), timeout=5)).status == 200
        text = await metrics_text(sc)
    assert len(upstream.seen) == 5
    assert 'sidecar_circuit_breaker_state{integration="svc",scope="",state="closed"} 1.0' in text
    for state in ("open", "half_open", "closed"):
        assert (f'sidecar_circuit_breaker_transitions_total{{integration="svc",scope="",'
                f'state="{state}"}} 1.0') in text


async def test_failed_probe_reopens(tmp_path: Path, upstream: Upstream) -> None:
    clock = FakeClock()
    upstream.default = reply(502)
    svc = breaker_integration(upstream.url, consecutive_failures=2, open_duration="5s")
    async with running(tmp_path, {"svc": svc}, clock=clock) as (_, stub):
        for _ in range(2):
            await stub.Call(call(), timeout=5)
        clock.advance(5.0)
        assert (await stub.Call(call(), timeout=5)).status == 502  # probe fails
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5)
    assert rich_error(info.value).reason == "CIRCUIT_OPEN"
    assert len(upstream.seen) == 3


async def test_4xx_does_not_trip_the_breaker(tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(404)
    svc = breaker_integration(upstream.url, consecutive_failures=2)
    async with running(tmp_path, {"svc": svc}, clock=FakeClock()) as (_, stub):
        for _ in range(5):
            assert (await stub.Call(call(), timeout=5)).status == 404
    assert len(upstream.seen) == 5


@pytest.mark.parametrize(("failures", "trips"), [(6, True), (4, False)])
async def test_failure_rate_mode(tmp_path: Path, upstream: Upstream, failures: int,
                                 trips: bool) -> None:
    pattern = [True] * failures + [False] * (10 - failures)
    # interleave so no run of consecutive failures could be what trips it
    order = [pattern[i // 2] if i % 2 == 0 else pattern[-1 - i // 2] for i in range(10)]
    upstream.then(*(reply(500) if bad else reply(200) for bad in order))
    svc = breaker_integration(upstream.url, consecutive_failures=0, failure_rate=0.6,
                              minimum_calls=10, window="60s")
    async with running(tmp_path, {"svc": svc}, clock=FakeClock()) as (_, stub):
        for _ in range(10):
            await stub.Call(call(), timeout=5)
        upstream.default = reply(200)
        if trips:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Call(call(), timeout=5)
            assert rich_error(info.value).reason == "CIRCUIT_OPEN"
        else:
            assert (await stub.Call(call(), timeout=5)).status == 200


async def test_route_breaker_is_separate(tmp_path: Path, upstream: Upstream) -> None:
    upstream.default = reply(500)
    svc = breaker_integration(upstream.url, consecutive_failures=2)
    routes = [{"integration": "svc", "name": "reports", "path": "/reports/**",
               "circuit_breaker": {"consecutive_failures": 2}}]
    async with running(tmp_path, {"svc": svc}, routes=routes, clock=FakeClock()) as (_, stub):
        for _ in range(2):
            resp = await stub.Call(call(path="/reports/daily"), timeout=5)
            assert resp.route == "reports"
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Call(call(path="/reports/weekly"), timeout=5)
        # the integration's own breaker is still closed
        assert (await stub.Call(call(path="/orders"), timeout=5)).status == 500


# --------------------------------------------------------------------------- retry budget


async def test_retry_budget_caps_load_from_a_failing_upstream(tmp_path: Path,
                                                              upstream: Upstream) -> None:
    upstream.default = reply(503)
    svc = integration(upstream.url, retry={"max_attempts": 3,
                                           "backoff": {"initial": "1ms", "max": "2ms"}},
                      retry_budget={"ratio": 0.2, "min_retries_per_second": 1, "window": "10s"},
                      circuit_breaker={"enabled": False})
    calls = 200
    async with running(tmp_path, {"svc": svc}) as (sc, stub):
        sem = asyncio.Semaphore(50)

        async def one() -> int:
            async with sem:
                status: int = (await stub.Call(call(), timeout=10)).status
                return status

        statuses = await asyncio.gather(*(one() for _ in range(calls)))
        text = await metrics_text(sc)
    assert statuses == [503] * calls
    # without a budget this would be 3 x 200 = 600
    assert calls <= len(upstream.seen) <= calls * 1.2 + 10
    assert 'sidecar_retry_budget_exhausted_total{integration="svc"}' in text


# --------------------------------------------------------------------------- rate limit


async def test_rate_limit_reject_gives_retry_info(tmp_path: Path, upstream: Upstream) -> None:
    svc = integration(upstream.url, rate_limit={"rate": 2, "burst": 1, "on_limit": "reject"})
    async with running(tmp_path, {"svc": svc}, clock=FakeClock()) as (_, stub):
        assert (await stub.Call(call(), timeout=5)).status == 200
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5)
    err = rich_error(info.value)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "RATE_LIMITED"
    assert err.retry_delay == pytest.approx(0.5, abs=0.01)
    assert len(upstream.seen) == 1


async def test_rate_limit_wait_spaces_calls(tmp_path: Path, upstream: Upstream) -> None:
    clock = SkippingClock()
    svc = integration(upstream.url, rate_limit={"rate": 4, "burst": 1, "on_limit": "wait"})
    async with running(tmp_path, {"svc": svc}, clock=clock) as (_, stub):
        for _ in range(3):
            assert (await stub.Call(call(), timeout=5)).status == 200
    assert len(upstream.seen) == 3
    assert sum(clock.sleeps) >= 0.45  # two waits of about a quarter second


async def test_a_route_can_switch_the_integrations_rate_limit_off(
        tmp_path: Path, upstream: Upstream) -> None:
    svc = integration(upstream.url, rate_limit={"rate": 1, "burst": 1, "on_limit": "reject"})
    routes = [{"integration": "svc", "name": "health", "path": "/health",
               "rate_limit": {"enabled": False}}]
    async with running(tmp_path, {"svc": svc}, routes=routes, clock=FakeClock()) as (_, stub):
        for _ in range(3):  # over the integration's burst of one: never limited here
            assert (await stub.Call(call(path="/health"), timeout=5)).route == "health"
        assert (await stub.Call(call(path="/orders"), timeout=5)).status == 200
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the rest is still limited
            await stub.Call(call(path="/orders"), timeout=5)
    assert rich_error(info.value).reason == "RATE_LIMITED"
    assert len(upstream.seen) == 4


async def test_upstream_429_pauses_the_bucket(tmp_path: Path, upstream: Upstream) -> None:
    clock = FakeClock()
    upstream.then(reply(429, headers={"Retry-After": "30"}))
    svc = integration(upstream.url, rate_limit={"rate": 100, "burst": 100, "on_limit": "reject"},
                      retry={"max_attempts": 1})
    async with running(tmp_path, {"svc": svc}, clock=clock) as (_, stub):
        assert (await stub.Call(call(), timeout=5)).status == 429
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5)
        assert rich_error(info.value).reason == "RATE_LIMITED"
        clock.advance(30.0)
        assert (await stub.Call(call(), timeout=5)).status == 200
    assert len(upstream.seen) == 2


"""Call idempotency, fallback and API versioning over real sockets and a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from sidecar.clock import FakeClock
from tests.call_support import call, integration, running
from tests.rpc_support import rich_error
from tests.upstream import Action, Upstream, reply


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


def held(gate: asyncio.Event, status: int = 200, body: bytes = b"ok") -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.Response(status=status, body=body)

    return act


# --------------------------------------------------------------------------- idempotency


async def test_same_key_same_request_is_replayed(tmp_path: Path, upstream: Upstream) -> None:
    upstream.then(reply(201, b'{"charge": 1}', {"X-Charge": "ch_1"}))
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (sc, stub):
        first = await stub.Call(call(method="POST", path="/charges", body=b'{"amount": 5}',
                                     idempotency_key="k-1"), timeout=5)
        again = await stub.Call(call(method="POST", path="/charges", body=b'{"amount": 5}',
                                     idempotency_key="k-1"), timeout=5)
        text = sc.metrics.exposition().decode()
    assert (first.status, first.replayed, first.attempts) == (201, False, 1)
    assert (again.status, again.body, again.replayed, again.attempts) == (
        201, b'{"charge": 1}', True, 0)
    assert ("X-Charge", "ch_1") in [(h.name, h.value) for h in again.headers]
    assert len(upstream.seen) == 1
    assert 'sidecar_idempotent_replays_total{integration="svc"} 1.0' in text


async def test_key_from_metadata(tmp_path: Path, upstream: Upstream) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        for _ in range(2):
            resp = await stub.Call(call(method="POST", body=b"x"), timeout=5,
                                   metadata=(("idempotency-key", "meta-key"),))
    assert resp.replayed and len(upstream.seen) == 1
    assert upstream.seen[0].headers["Idempotency-Key"] == "meta-key"


async def test_same_key_in_flight_is_aborted_and_upstream_hit_once(tmp_path: Path,
                                                                   upstream: Upstream) -> None:
    gate = asyncio.Event()
    upstream.then(held(gate, 201, b"done"))
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        first = asyncio.ensure_future(stub.Call(call(method="POST", body=b"a",
                                                     idempotency_key="dup"), timeout=5))
        await upstream.arrived.wait()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(method="POST", body=b"a", idempotency_key="dup"), timeout=5)
        gate.set()
        assert (await first).status == 201
    err = rich_error(info.value)
    assert err.code == grpc.StatusCode.ABORTED and err.reason == "IDEMPOTENCY_IN_FLIGHT"
    assert len(upstream.seen) == 1


async def test_same_key_different_request_is_refused(tmp_path: Path,
                                                     upstream: Upstream) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        await stub.Call(call(method="POST", body=b"one", idempotency_key="k"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(method="POST", body=b"two", idempotency_key="k"), timeout=5)
    err = rich_error(info.value)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "IDEMPOTENCY_KEY_REUSED"
    assert len(upstream.seen) == 1


async def test_key_expires_after_retention(tmp_path: Path, upstream: Upstream) -> None:
    clock = FakeClock()
    svc = integration(upstream.url, idempotency={"retention": "1h"})
    async with running(tmp_path, {"svc": svc}, clock=clock) as (_, stub):
        await stub.Call(call(method="POST", body=b"a", idempotency_key="k"), timeout=5)
        clock.advance(3599)
        assert (await stub.Call(call(method="POST", body=b"a", idempotency_key="k"),
                                timeout=5)).replayed
        clock.advance(2)
        fresh = await stub.Call(call(method="POST", body=b"a", idempotency_key="k"), timeout=5)
    assert not fresh.replayed and len(upstream.seen) == 2


async def test_5xx_answer_releases_the_key(tmp_path: Path, upstream: Upstream) -> None:
    upstream.then(reply(500), reply(201))
    svc = integration(upstream.url, retry={"max_attempts": 1})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        assert (await stub.Call(call(method="POST", body=b"a", idempotency_key="k"),
                                timeout=5)).status == 500
        again = await stub.Call(call(method="POST", body=b"a", idempotency_key="k"), timeout=5)
    assert (again.status, again.replayed) == (201, False)


async def test_replay_survives_a_restart(tmp_path: Path, upstream: Upstream) -> None:
    upstream.then(reply(201, b"stored"))
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        await stub.Call(call(method="POST", body=b"a", idempotency_key="durable"), timeout=5)
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        again = await stub.Call(call(method="POST", body=b"a", idempotency_key="durable"),
                                timeout=5)
    assert (again.status, again.body, again.replayed) == (201, b"stored", True)
    assert len(upstream.seen) == 1


async def test_malformed_key_is_invalid(tmp_path: Path, upstream: Upstream) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(method="POST", idempotency_key="has space"), timeout=5)
    assert rich_error(info.value).violations[0][0] == "idempotency_key"


# --------------------------------------------------------------------------- fallback


async def test_open_breaker_serves_last_good_get_as_stale(tmp_path: Path,
                                                          upstream: Upstream) -> None:
    upstream.then(reply(200, b"catalog v1"), reply(503))
    svc = integration(upstream.url, retry={"max_attempts": 1}, fallback={"enabled": True},
                      circuit_breaker={"consecutive_failures": 1})
    async with running(tmp_path, {"svc": svc}, clock=FakeClock()) as (_, stub):
        assert (await stub.Call(call(path="/catalog"), timeout=5)).body == b"catalog v1"
        assert (await stub.Call(call(path="/catalog"), timeout=5)).status == 503  # trips
        stale = await stub.Call(call(path="/catalog"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(path="/other"), timeout=5)  # nothing cached for it
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Call(call(method="POST", path="/catalog"), timeout=5)
    assert (stale.status, stale.body, stale.stale, stale.attempts) == (200, b"catalog v1",
                                                                       True, 0)
    assert rich_error(info.value).reason == "CIRCUIT_OPEN"
    assert len(upstream.seen) == 2


# --------------------------------------------------------------------------- versioning


async def test_pinned_version_header_and_per_call_override(tmp_path: Path,
                                                           upstream: Upstream) -> None:
    svc = integration(upstream.url, api_version={"version": "2024-06-01",
                                                 "header": "Stripe-Version"})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        await stub.Call(call(), timeout=5)
        await stub.Call(call(api_version="2025-01-01"), timeout=5)
        await stub.Call(call(headers={"Stripe-Version": "caller"}), timeout=5)
    assert [s.headers["Stripe-Version"] for s in upstream.seen] == [
        "2024-06-01", "2025-01-01", "2024-06-01"]


async def test_version_as_path_prefix(tmp_path: Path, upstream: Upstream) -> None:
    svc = integration(upstream.url + "/api", api_version={"version": "v2", "location": "path"})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        await stub.Call(call(path="/items/1"), timeout=5)
        await stub.Call(call(path="/items/1", api_version="v3"), timeout=5)
    assert [s.path for s in upstream.seen] == ["/api/v2/items/1", "/api/v3/items/1"]


async def test_deprecation_and_sunset_are_surfaced_logged_once_and_exported(
        tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    upstream.default = reply(200, headers={
        "Deprecation": "@1700000000",
        "Sunset": "Wed, 11 Nov 2026 11:11:11 GMT",
        "Link": '<https://docs.example/migrate>; rel="sunset"',
    })
    caplog.set_level(logging.WARNING, logger="sidecar.calls")
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (sc, stub):
        resp = await stub.Call(call(), timeout=5)
        await stub.Call(call(), timeout=5)
        text = sc.metrics.exposition().decode()
    dep = resp.deprecation
    assert dep.deprecated and dep.deprecated_at.seconds == 1700000000
    assert dep.sunset_at.seconds == 1794395471 and dep.link == "https://docs.example/migrate"
    assert caplog.text.count("upstream announced deprecation") == 1
    assert 'sidecar_upstream_deprecated_calls_total{integration="svc",route=""} 2.0' in text
    assert ('sidecar_upstream_sunset_timestamp_seconds{integration="svc",route=""} '
            '1.794395471e+09') in text


async def test_an_upstream_link_is_logged_without_its_query_or_credentials(
        tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    """An upstream's answer is hostile text: a Link may carry a token (even percent-
    encoded, past the secret scrubber); the log keeps only scheme, host and path."""
    upstream.default = reply(200, headers={
        "Deprecation": "true",
        "Link": '<https://u:p%40ss@docs.example/migrate?token=s%33cret#frag>; rel="deprecation"',
    })
    caplog.set_level(logging.WARNING, logger="sidecar.calls")
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    (record,) = [r for r in caplog.records if r.getMessage() == "upstream announced deprecation"]
    assert record.link == "https://docs.example/migrate"  # type: ignore[attr-defined]
    assert "token" not in caplog.text and "p%40ss" not in caplog.text
    # The app asked for the call: it gets the link as the upstream sent it.
    assert resp.deprecation.link.endswith("?token=s%33cret#frag")


async def test_expired_keys_are_pruned(tmp_path: Path, upstream: Upstream) -> None:
    clock = FakeClock()
    svc = integration(upstream.url, idempotency={"retention": "1m"})
    async with running(tmp_path, {"svc": svc}, clock=clock) as (sc, stub):
        for i in range(3):
            await stub.Call(call(method="POST", body=b"a", idempotency_key=f"k{i}"), timeout=5)
        assert await sc.prune_once() == 0
        clock.advance(61)
        assert await sc.prune_once() == 3

"""The status page end to end: a real sidecar, real misbehaving aiohttp upstreams,
webhooks through the real edge, a real SQLite file, and the page in headless
Chromium."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc
from multidict import CIMultiDictProxy

from sidecar.app import Sidecar
from sidecar.clock import FakeClock
from tests.call_support import call, integration, running
from tests.conftest import make_config
from tests.redis_support import RedisServer, delete_prefix, redis_url  # noqa: F401 - a fixture
from tests.rpc_support import rich_error
from tests.system_tools import CHROMIUM_ARGS, chromium_path
from tests.upstream import Upstream, reply, slow
from tests.webhook_support import WEBHOOK_ENV, stripe_event, stripe_headers, webhook_sources

#: Fails on every request, so the breaker opens after three calls.
FAILING = {"retry": {"max_attempts": 1},
           "circuit_breaker": {"consecutive_failures": 3, "open_duration": "1h"}}


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    failing = await Upstream(default=reply(503, b"down")).start()
    healthy = await Upstream(default=slow(0.02)).start()
    try:
        yield failing, healthy
    finally:
        await failing.stop()
        await healthy.stop()


async def get(sc: Sidecar, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://{sc.admin.address}{path}", headers=headers or {}) as resp:
        body = await (resp.json() if resp.content_type == "application/json" else resp.text())
        return resp.status, body, resp.headers


def by_name(items: list[dict[str, Any]], key: str, name: str) -> dict[str, Any]:
    (found,) = [i for i in items if i[key] == name]
    return found


async def fail_until_open(stub: pb_grpc.SidecarServiceStub) -> None:
    for _ in range(3):
        assert (await stub.Call(call("payments"), timeout=5)).status == 503
    await expect_circuit_open(stub)


async def expect_circuit_open(stub: pb_grpc.SidecarServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Call(call("payments"), timeout=5)
    assert rich_error(info.value).reason == "CIRCUIT_OPEN"


async def test_status_json_shows_the_open_breaker_and_the_healthy_integration(
        tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> None:
    failing, healthy = upstreams
    integrations = {"payments": integration(failing.url, **FAILING),
                    "email": integration(healthy.url)}
    routes = [{"name": "send", "integration": "email", "method": "POST", "path": "/send",
               "circuit_breaker": {"consecutive_failures": 2}}]
    async with running(tmp_path, integrations, routes=routes) as (sc, stub):
        await fail_until_open(stub)
        for _ in range(20):
            assert (await stub.Call(call("email", path="/inbox"), timeout=5)).status == 200
        assert (await stub.Call(call("email", "POST", "/send"), timeout=5)).status == 200
        status, data, headers = await get(sc, "/status.json")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert data["schema_version"] == 1 and data["window_seconds"] == 300
    assert data["sidecar"]["storage_backend"] == "sqlite" and data["sidecar"]["ready"] is True
    assert data["sidecar"]["uptime_seconds"] >= 0

    pay = by_name(data["integrations"], "name", "payments")
    assert pay["health"] == "failing"
    assert pay["breaker"]["state"] == "open" and pay["breaker"]["consecutive_failures"] == 3
    assert pay["breaker"]["since"] <= data["generated_at"] < pay["breaker"]["retry_at"]
    assert (pay["calls"], pay["failures"], pay["rejected"]) == (4, 4, {"CIRCUIT_OPEN": 1})
    assert pay["success_rate"] < 1
    assert pay["last_error"]["reason"] == "CIRCUIT_OPEN"
    assert (pay["last_upstream_error"]["reason"], pay["last_upstream_error"]["status"]) == (
        "UPSTREAM_STATUS_503", 503)
    assert pay["last_error"]["at"] <= data["generated_at"]

    email = by_name(data["integrations"], "name", "email")
    assert (email["health"], email["breaker"]["state"]) == ("ok", "closed")
    assert (email["calls"], email["failures"], email["success_rate"]) == (21, 0, 1.0)
    assert email["last_error"] is None
    # The upstream takes 20 ms; the histogram is at most one x1.5 step off, and a
    # busy machine only adds.
    assert 0.02 / 1.5 <= email["latency_p50_seconds"] <= email["latency_p99_seconds"] < 1.0
    (send,) = email["routes"]
    assert (send["name"], send["own_breaker"], send["breaker"]["state"], send["calls"]) == (
        "send", True, "closed", 1)


async def test_breaker_recovery_shows_as_half_open_then_closed(
        tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> None:
    failing, _ = upstreams
    clock = FakeClock()
    cfg = integration(failing.url, retry={"max_attempts": 1},
                      circuit_breaker={"consecutive_failures": 3, "open_duration": "10s",
                                       "half_open_probes": 1, "close_after": 1})
    async with running(tmp_path, {"payments": cfg}, clock=clock) as (sc, stub):
        await fail_until_open(stub)
        opened = clock.time()
        clock.advance(10.0)
        _, data, _ = await get(sc, "/status.json")
        pay = data["integrations"][0]
        assert (pay["health"], pay["breaker"]["state"]) == ("recovering", "half_open")
        assert pay["breaker"]["since"] == opened + 10.0
        failing.default = reply(200)
        assert (await stub.Call(call("payments"), timeout=5)).status == 200
        clock.advance(400.0)  # everything leaves the 5-minute window
        _, data, _ = await get(sc, "/status.json")
    pay = data["integrations"][0]
    assert (pay["health"], pay["breaker"]["state"], pay["calls"]) == ("idle", "closed", 0)
    assert pay["success_rate"] is None and pay["latency_p99_seconds"] is None
    assert pay["last_error"]["reason"] == "CIRCUIT_OPEN"  # remembered beyond the window


async def test_deprecation_sunset_and_hostile_link_are_shown_escaped(
        tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> None:
    _, healthy = upstreams
    healthy.default = reply(200, headers={
        "Deprecation": "@1600000000", "Sunset": "Sun, 01 Nov 2020 00:00:00 GMT",
        "Link": '<https://docs.example/sunset/"<svg/onload=alert(1)?api_key=s3cret>; '
                'rel="deprecation"'})
    async with running(tmp_path, {"email": integration(healthy.url)}) as (sc, stub):
        assert (await stub.Call(call("email"), timeout=5)).status == 200
        _, data, _ = await get(sc, "/status.json")
        status, page, headers = await get(sc, "/status")
        odd_refreshes = []
        for odd in ("inf", "nan", "0", "-1", "x"):
            code, text, _ = await get(sc, f"/status?refresh={odd}")
            odd_refreshes.append((code, 'data-refresh="5"' in text))
    (dep,) = data["integrations"][0]["deprecations"]
    assert (dep["deprecated"], dep["deprecated_at"], dep["sunset"]) == (True, 1600000000, "past")
    assert dep["link"] == 'https://docs.example/sunset/"<svg/onload=alert(1)'  # no query
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "sunset passed" in page and "s3cret" not in page
    assert "<svg" not in page and 'sunset/&quot;&lt;svg/onload=alert(1)"' in page
    assert "script-src 'nonce-" in headers["Content-Security-Policy"]
    assert 'data-refresh="5"' in page
    assert odd_refreshes == [(200, True)] * 5


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_webhook_sources_show_pending_delivered_and_dead(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    clock = FakeClock()
    extra: dict[str, Any] = {"webhooks": {"sources": webhook_sources(),
                                          "delivery": {"heartbeat": "1h"}}}
    env = dict(WEBHOOK_ENV)
    prefix = f"status-{uuid.uuid4().hex[:12]}:"
    if backend == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
        extra["storage"] = {"backend": "redis",
                            "redis": {"url_env": "REDIS_URL", "key_prefix": prefix}}
    sc = Sidecar(make_config(tmp_path, extra, env=env), clock=clock)
    await sc.start()
    try:
        async with aiohttp.ClientSession() as session:
            for event_id in ("evt_1", "evt_2", "evt_3"):
                body = stripe_event(event_id)
                async with session.post(f"http://{sc.edge.address}/webhooks/stripe", data=body,
                                        headers=stripe_headers(body, ts=int(clock.time()))
                                        ) as resp:
                    assert resp.status == 200
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel:
            stub = pb_grpc.SidecarServiceStub(channel)
            stream = stub.Subscribe(pb.SubscribeRequest(topics=["webhooks.stripe"], group="app",
                                                        max_in_flight=1))
            first = await next_event(stream)
            await stub.Ack(pb.AckRequest(group="app", event_ids=[first.id],
                                         outcome=pb.ACK_OUTCOME_DEAD_LETTER, error="bad"),
                           timeout=5)
            await next_event(stream)  # the second is now in flight
            clock.advance(7.0)
            _, data, _ = await get(sc, "/status.json")
            _, page, _ = await get(sc, "/status")
            stream.cancel()
    finally:
        await sc.stop()
        if backend == "redis":
            await delete_prefix(env["REDIS_URL"], prefix)
    assert data["sidecar"]["storage_backend"] == backend
    stripe = by_name(data["webhooks"], "source", "stripe")
    assert stripe["topic"] == "webhooks.stripe" and stripe["stored_events"] == 3
    assert (stripe["pending"], stripe["delivered"], stripe["dead"], stripe["completed"]) == (
        1, 1, 1, 0)
    assert stripe["oldest_unacked_age_seconds"] == 7.0
    assert [g["group"] for g in stripe["groups"]] == ["app"]
    github = by_name(data["webhooks"], "source", "github")
    assert (github["stored_events"], github["pending"], github["groups"]) == (0, 0, [])
    assert github["oldest_unacked_age_seconds"] is None
    assert "1 dead" in page and "no consumer group yet" in page


async def test_page_still_answers_while_storage_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        config = make_config(tmp_path, {
            "webhooks": {"sources": webhook_sources()},
            "storage": {"backend": "redis", "redis": {"url_env": "REDIS_URL",
                                                      "socket_timeout": "500ms"}},
        }, env={**WEBHOOK_ENV, "REDIS_URL": server.url})
        sc = Sidecar(config)
        await sc.start()
        try:
            server.stop()
            status, data, _ = await get(sc, "/status.json")
            _, page, _ = await get(sc, "/status")
        finally:
            await sc.stop()
    finally:
        server.stop()
    assert status == 200
    for source in data["webhooks"]:
        assert source["error"] and "pending" not in source
    assert [set(row) for row in data["queued_calls"]] == [{"error"}]
    assert page.count("storage error") == 4  # three webhook sources, the queued calls


async def next_event(stream: Any) -> pb.Event:
    while True:
        msg = await asyncio.wait_for(stream.read(), 5)
        if msg.HasField("event"):
            event: pb.Event = msg.event
            return event


async def test_live_connections_count_grpc_subscribers(tmp_path: Path) -> None:
    async with running(tmp_path, {}) as (sc, stub):
        stream = stub.Subscribe(pb.SubscribeRequest(
            topics=["orders"], start=pb.START_POSITION_EARLIEST))
        await stub.Publish(pb.PublishRequest(topic="orders", type="t", data=b"{}"), timeout=5)
        await next_event(stream)  # replayed or live: the subscription is running
        # Registration as a live subscriber has no event to await: ask the page
        # until it counts it (bounded).
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            _, data, _ = await get(sc, "/status.json")
            if data["live"]["grpc_subscribers"] or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
        stream.cancel()
    assert data["live"] == {"websocket_enabled": False, "websocket_connections": 0,
                            "grpc_subscribers": 1, "users": 0}


async def test_live_connections_count_websockets_and_distinct_users(tmp_path: Path) -> None:
    secret = "status-page-ws-secret-0123456789abcdef"
    config = make_config(tmp_path, {"realtime": {"websocket": {
        "jwt": {"algorithms": ["HS256"], "hs256_secret_env": "WS_SECRET"}}}},
        env={"WS_SECRET": secret})
    sc = Sidecar(config)
    await sc.start()
    try:
        async with aiohttp.ClientSession() as session:
            sockets = []
            for user in ("alice", "alice", "bob"):
                token = jwt.encode({"sub": user, "exp": int(time.time()) + 600}, secret,
                                   algorithm="HS256")
                ws = await session.ws_connect(f"http://{sc.edge.address}/ws",
                                              headers={"Authorization": f"Bearer {token}"})
                await joined(ws, {f"user:{user}", "broadcast"})
                sockets.append(ws)
            _, data, _ = await get(sc, "/status.json")
            _, page, _ = await get(sc, "/status")
            for ws in sockets:
                await ws.close()
    finally:
        await sc.stop()
    assert data["live"] == {"websocket_enabled": True, "websocket_connections": 3,
                            "grpc_subscribers": 0, "users": 2}
    assert "<dt>WebSocket connections</dt><dd>3</dd>" in page
    assert "<dt>Distinct users</dt><dd>2</dd>" in page


async def joined(ws: aiohttp.ClientWebSocketResponse, rooms: set[str]) -> None:
    """Read until the sidecar has said ``subscribed`` for every room."""
    while rooms:
        msg = await asyncio.wait_for(ws.receive(), 5)
        frame = json.loads(msg.data)
        if frame.get("control") == "subscribed":
            rooms.discard(frame["topic"])


async def test_status_needs_the_api_token_when_one_is_set(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"server": {"grpc": {"api_token_env": "SIDECAR_TOKEN"}}},
                         env={"SIDECAR_TOKEN": "t0ken-value"})
    sc = Sidecar(config)
    await sc.start()
    try:
        for path in ("/status", "/status.json"):
            status, body, headers = await get(sc, path)
            assert status == 401 and body["error"]["reason"] == "API_TOKEN_INVALID"
            assert headers["WWW-Authenticate"].startswith("Basic ")
            assert (await get(sc, path, {"Authorization": "Bearer wrong"}))[0] == 401
            assert (await get(sc, path, {"Authorization": "Bearer t0ken-value"}))[0] == 200
            basic = base64.b64encode(b"ops:t0ken-value").decode()
            assert (await get(sc, path, {"Authorization": f"Basic {basic}"}))[0] == 200
            bad = base64.b64encode(b"ops:nope").decode()
            assert (await get(sc, path, {"Authorization": f"Basic {bad}"}))[0] == 401
            assert (await get(sc, path, {"Authorization": "Basic %%%"}))[0] == 401
    finally:
        await sc.stop()


async def test_page_in_chromium_shows_the_open_breaker_and_updates_without_reload(
        tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> None:
    executable = chromium_path()
    from playwright.async_api import async_playwright

    failing, healthy = upstreams
    integrations = {"payments": integration(failing.url, **FAILING),
                    "email": integration(healthy.url)}
    async with running(tmp_path, integrations) as (sc, stub), async_playwright() as pw:
        await fail_until_open(stub)
        assert (await stub.Call(call("email"), timeout=5)).status == 200
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(f"http://{sc.admin.address}/status?refresh=0.3")
            row = page.locator('tr.integration[data-integration="payments"]')
            text = await row.inner_text()
            assert "payments" in text and "failing" in text
            assert "open" in text and "closed" not in text
            assert "CIRCUIT_OPEN 1" in text and "0.0 %" in text
            healthy_row = await page.locator(
                'tr.integration[data-integration="email"]').inner_text()
            assert "ok" in healthy_row and "closed" in healthy_row and "100.0 %" in healthy_row

            await page.evaluate("window.notReloaded = true")
            await expect_circuit_open(stub)  # one more refusal
            await page.wait_for_function(
                """() => document.querySelector('tr[data-integration="payments"]')
                           .innerText.includes('CIRCUIT_OPEN 2')""", timeout=10_000)
            assert await page.evaluate("window.notReloaded === true")
            assert "live: refreshed" in await page.locator("#refresh-note").inner_text()
            assert problems == []
        finally:
            await browser.close()

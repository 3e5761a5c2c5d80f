"""clients/web/sidecar-ws.js in headless Chromium against a real in-process sidecar.

A small aiohttp server on loopback serves a test page, the module and fresh JWTs;
events are published over gRPC; the sidecar is stopped and restarted on the same
edge port and data directory to watch the page go offline, resume and catch up.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from aiohttp import web
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.clock import FakeClock, Timer
from tests.conftest import make_config
from tests.system_tools import CHROMIUM_ARGS, chromium_path

WEB_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "web" / "sidecar-ws.js"
HS_SECRET = "web-client-test-secret-0123456789abcdef"
# Short, so that the seconds a token takes to expire span several server pings: a
# page that did not answer them would be closed before its token expires.
PING_INTERVAL = "0.4s"
#: Lifetime of the tokens that expire during a test (on the sidecar's clock).
TOKEN_TTL = 600.0

# The page under test: it starts a SidecarSocket when the test calls start() and
# records everything it sees on window for the test to read.
TEST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sidecar-ws test</title></head>
<body><span id="badge">offline</span><ul id="events"></ul>
<script type="module">
import { SidecarSocket } from "/sidecar-ws.js";
window.received = [];
window.controls = [];
window.refusals = [];
window.start = (url, token, options = {}) => {
  const source = token || (async () => (await fetch("/token")).text());
  const sock = new SidecarSocket(url, {
    token: source, backoff: { initial: 50, max: 250 }, ...options });
  sock.on("*", (ev) => {
    received.push({ topic: ev.topic, offset: ev.offset, data: ev.data });
    const li = document.createElement("li");
    li.textContent = `${ev.topic} ${JSON.stringify(ev.data)}`;
    document.getElementById("events").append(li);
  });
  sock.states = [];
  sock.badges = [];  // the badge's text after each change: a fast reconnect cannot hide one
  sock.onState((s) => {
    sock.states.push(s);
    document.getElementById("badge").textContent = s.state;
    sock.badges.push(document.getElementById("badge").textContent);
  });
  sock.onControl((c) => controls.push(c));
  sock.onError((e) => refusals.push(e));
  return sock;
};
window.ready = true;
</script></body></html>
"""


def make_token(sub: str, ttl: float = 600, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl), **claims}, HS_SECRET,
                      algorithm="HS256")


class StaticSite:
    """Serves a page, the client module and tokens; counts token requests."""

    def __init__(self, page: str, files: dict[str, Path],
                 token: Callable[[int], str] | None = None) -> None:
        self.page, self.files, self.token = page, files, token
        self.token_requests = 0
        self.origin = ""

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page, content_type="text/html")

    async def _file(self, request: web.Request) -> web.Response:
        path = self.files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type="text/javascript")

    async def _token(self, request: web.Request) -> web.Response:
        assert self.token is not None
        self.token_requests += 1
        return web.Response(text=self.token(self.token_requests))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StaticSite]:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/token", self._token)
        app.router.add_get("/{name}", self._file)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.origin = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()


@asynccontextmanager
async def browser_page(url: str, *, fake_clock: bool = False) -> AsyncIterator[Any]:
    """A fresh headless Chromium page at ``url`` (the system Chromium, never a download);
    with ``fake_clock`` its timers only run when the test says (``page.clock``)."""
    executable = chromium_path()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            if fake_clock:
                await page.clock.install()
                await page.clock.pause_at(datetime.now(UTC) + timedelta(seconds=1))
            await page.goto(url)
            yield page
            assert not errors, errors
        finally:
            await browser.close()


def ws_config(tmp_path: Path, origin: str, edge_port: int = 0) -> Any:
    return make_config(tmp_path, {
        "server": {"edge": {"host": "127.0.0.1", "port": edge_port}},
        "realtime": {"websocket": {
            "jwt": {"algorithms": ["HS256"], "hs256_secret_env": "WS_SECRET"},
            "allowed_origins": [origin], "ping_interval": PING_INTERVAL}},
    }, env={"WS_SECRET": HS_SECRET})


class Publisher:
    def __init__(self, sc: Sidecar) -> None:
        self.sc = sc

    async def __call__(self, topic: str, data: dict[str, Any]) -> int:
        async with grpc.aio.insecure_channel(self.sc.grpc.address) as ch:
            resp = await pb_grpc.SidecarServiceStub(ch).Publish(pb.PublishRequest(
                topic=topic, type="test", data=json.dumps(data).encode(),
                content_type="application/json"), timeout=5)
        offset: int = resp.offset
        return offset

    async def presence(self, topic: str) -> int:
        async with grpc.aio.insecure_channel(self.sc.grpc.address) as ch:
            resp = await pb_grpc.SidecarServiceStub(ch).GetPresence(
                pb.GetPresenceRequest(topic=topic), timeout=5)
        connections: int = resp.connections
        return connections


async def wait_js(page: Any, expression: str, arg: Any = None) -> None:
    await page.wait_for_function(expression, arg=arg, timeout=8000)


async def received(page: Any) -> list[tuple[str, int, Any]]:
    rows = await page.evaluate("window.received")
    return [(r["topic"], r["offset"], r["data"]) for r in rows]


async def wait_received(page: Any, count: int) -> list[tuple[str, int, Any]]:
    await wait_js(page, "n => window.received.length >= n", count)
    return await received(page)


async def wait_control(page: Any, control: str, topic: str) -> None:
    await wait_js(page, "([c, t]) => window.controls.some(f => f.control === c && f.topic === t)",
                  [control, topic])


async def test_live_events_reconnect_resume_and_runtime_subscriptions(tmp_path: Path) -> None:
    site = StaticSite(TEST_PAGE, {"sidecar-ws.js": WEB_CLIENT},
                      token=lambda n: make_token("alice", topics=["orders:*"]))
    async with site.running():
        sc = await start_sidecar(ws_config(tmp_path, site.origin))
        try:
            async with browser_page(site.origin + "/") as page:
                await scenario(page, sc, tmp_path, site)
        finally:
            await sc.stop()  # a no-op when the scenario stopped it


async def start_sidecar(config: Any) -> Sidecar:
    sc = Sidecar(config)
    await sc.start()
    return sc


async def scenario(page: Any, sc: Sidecar, tmp_path: Path, site: StaticSite) -> None:
    publish, edge_port = Publisher(sc), sc.edge.port
    await wait_js(page, "window.ready === true")
    await page.evaluate("url => { window.sock = window.start(url); }",
                        f"ws://127.0.0.1:{edge_port}/ws")
    await wait_js(page, "window.sock.state === 'live'")
    await wait_control(page, "subscribed", "user:alice")
    assert await page.text_content("#badge") == "live"

    # Live: the user's room arrives, another user's room does not.
    await publish("user:alice", {"n": 1})
    await publish("user:bob", {"secret": "bob's"})
    await publish("user:alice", {"n": 2})
    assert await wait_received(page, 2) == [("user:alice", 1, {"n": 1}),
                                            ("user:alice", 2, {"n": 2})]

    # Runtime subscribe to a topic the token's claim allows.
    await page.evaluate("window.sock.subscribe('orders:42')")
    await wait_control(page, "subscribed", "orders:42")
    assert await publish.presence("orders:42") == 1
    await publish("orders:42", {"status": "paid"})
    assert (await wait_received(page, 3))[2] == ("orders:42", 1, {"status": "paid"})

    # The sidecar stops: the badge goes offline with the shutdown close code. The
    # transitions are recorded in the page: with full jitter the client may already be
    # reconnecting by the time the test looks, so the live state proves nothing.
    # Every connect attempt asks for a token; one fetched for an attempt made while the
    # sidecar was down may be the one that succeeds, so count from before the stop.
    tokens_while_live = site.token_requests
    await sc.stop()
    await wait_js(page, "window.sock.states.length >= 4")
    states = await page.evaluate("window.sock.states")
    assert [s["state"] for s in states[:3]] == ["offline", "connecting", "live"]
    assert states[3]["state"] == "offline" and states[3]["code"] == 1001, states[3]
    assert (await page.evaluate("window.sock.badges"))[3] == "offline"

    # While the page is offline (its edge port is closed), events are published
    # through another sidecar on the same data directory.
    config = ws_config(tmp_path, site.origin)
    other = await start_sidecar(config)
    try:
        other_publish = Publisher(other)
        await other_publish("user:alice", {"n": 3})
        await other_publish("orders:42", {"status": "shipped"})
        await other_publish("user:alice", {"n": 4})
        await other_publish("user:bob", {"secret": "still bob's"})
    finally:
        await other.stop()
    assert await page.evaluate("window.received.length") == 3
    # Asked for while offline: sent once the page is connected again.
    await page.evaluate("window.sock.subscribe('orders:7')")

    # Back on the same port: the page reconnects and gets exactly what it missed.
    sc = await start_sidecar(ws_config(tmp_path, site.origin, edge_port))
    try:
        publish = Publisher(sc)
        got = await wait_received(page, 6)
        await wait_js(page, "window.sock.state === 'live'")
        assert site.token_requests > tokens_while_live  # a fresh token for the reconnect
        await publish("user:alice", {"n": 5})
        got = await wait_received(page, 7)
        alice = [g for g in got if g[0] == "user:alice"]
        orders = [g for g in got if g[0] == "orders:42"]
        assert alice == [("user:alice", i, {"n": i}) for i in range(1, 6)]
        assert orders == [("orders:42", 1, {"status": "paid"}),
                          ("orders:42", 2, {"status": "shipped"})]
        assert len(got) == 7
        assert await page.text_content("#badge") == "live"
        assert await page.locator("#events li").count() == 7
        assert "bob" not in (await page.text_content("#events") or "")
        await wait_control(page, "subscribed", "orders:7")
        assert await publish.presence("orders:7") == 1

        # Runtime unsubscribe: the server drops the subscription and nothing more comes.
        assert await publish.presence("orders:42") == 1
        await page.evaluate("window.sock.unsubscribe('orders:42')")
        await wait_control(page, "unsubscribed", "orders:42")
        assert await publish.presence("orders:42") == 0
        await publish("orders:42", {"status": "refunded"})
        await publish("user:alice", {"n": 6})
        got = await wait_received(page, 8)
        assert got[-1] == ("user:alice", 6, {"n": 6})
        assert [g for g in got if g[0] == "orders:42"] == orders
    finally:
        await sc.stop()


async def test_topics_with_no_event_yet_resume_and_refused_topics_are_dropped(
        tmp_path: Path) -> None:
    """Rooms joined at the latest position with nothing delivered yet: the sidecar
    restarts before any event arrives and events are published meanwhile; the page
    resumes after the offsets its subscribed frames announced and gets them once, in
    order. A topic the token does not allow is dropped, not asked for on reconnect."""
    site = StaticSite(TEST_PAGE, {"sidecar-ws.js": WEB_CLIENT},
                      token=lambda n: make_token("carol", topics=["orders:*"]))
    async with site.running():
        sc = await start_sidecar(ws_config(tmp_path, site.origin))
        edge_port = sc.edge.port
        try:
            await Publisher(sc)("orders:9", {"n": 0})  # before the page joins: not wanted
            async with browser_page(site.origin + "/") as page:
                await wait_js(page, "window.ready === true")
                await page.evaluate("url => { window.sock = window.start(url); }",
                                    f"ws://127.0.0.1:{edge_port}/ws")
                await wait_control(page, "subscribed", "user:carol")
                await page.evaluate("window.sock.subscribe('orders:9')")
                await page.evaluate("window.sock.subscribe('user:dave')")  # not allowed
                await wait_js(page, "window.refusals.length === 1")
                await wait_control(page, "subscribed", "orders:9")
                assert await page.evaluate("window.refusals") == [{
                    "topic": "user:dave", "reason": "PERMISSION_DENIED",
                    "message": "the token does not allow topic 'user:dave'"}]
                assert await page.evaluate("window.sock.offsets") == {
                    "user:carol": 0, "broadcast": 0, "orders:9": 1}

                await sc.stop()
                await wait_js(page, "window.sock.states.some(s => s.code === 1001)")
                other = await start_sidecar(ws_config(tmp_path, site.origin))
                try:
                    publish = Publisher(other)
                    await publish("orders:9", {"n": 1})
                    await publish("user:carol", {"n": 1})
                    await publish("orders:9", {"n": 2})
                finally:
                    await other.stop()
                assert await page.evaluate("window.received.length") == 0

                sc = await start_sidecar(ws_config(tmp_path, site.origin, edge_port))
                publish = Publisher(sc)
                got = await wait_received(page, 3)
                assert sorted(got) == [("orders:9", 2, {"n": 1}), ("orders:9", 3, {"n": 2}),
                                       ("user:carol", 1, {"n": 1})]
                assert [g for g in got if g[0] == "orders:9"] == [
                    ("orders:9", 2, {"n": 1}), ("orders:9", 3, {"n": 2})]
                # Frames are handled in order: had the reconnect asked for user:dave
                # again, its refusal would come before this subscription's answer.
                await page.evaluate("window.sock.subscribe('orders:10')")
                await wait_control(page, "subscribed", "orders:10")
                await publish("orders:9", {"n": 3})
                got = await wait_received(page, 4)
                assert got[3] == ("orders:9", 4, {"n": 3})
                errors = await page.evaluate(
                    "window.controls.filter(c => c.control === 'error')")
                assert [e["topic"] for e in errors] == ["user:dave"]
                assert await page.evaluate("window.refusals.length") == 1
        finally:
            await sc.stop()


class ExpiryClock(FakeClock):
    """The sidecar's clock for token expiry: wall time as the test starts (so PyJWT, on
    the real clock, and the sidecar agree at first), then it moves only when told.
    ``expiry_timers`` waits until that many long timers (the connections' token
    expiries) are pending, so time moves on only once every connection has one."""

    def __init__(self) -> None:
        super().__init__(start=0.0, wall_offset=time.time())
        self._asked = asyncio.Event()
        self._long: list[float] = []

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        if seconds > TOKEN_TTL / 2:
            self._long.append(self.monotonic() + seconds)
            self._asked.set()
        return super().call_later(seconds, callback)

    async def expiry_timers(self, count: int) -> None:
        while sum(1 for due in self._long if due > self.monotonic()) < count:
            self._asked.clear()
            await self._asked.wait()


async def test_expired_token_stops_a_fixed_token_and_renews_a_provided_one(
        tmp_path: Path) -> None:
    # The tokens expire on the sidecar's clock, which the test moves past them once
    # both clients are live (on real time, a short-lived token could expire before a
    # busy machine had connected it). The provider's later tokens outlast the jump.
    site = StaticSite(TEST_PAGE, {"sidecar-ws.js": WEB_CLIENT},
                      token=lambda n: make_token("carol", ttl=TOKEN_TTL if n == 1
                                                 else 10 * TOKEN_TTL))
    clock = ExpiryClock()
    async with site.running():
        sc = Sidecar(ws_config(tmp_path, site.origin), clock=clock)
        await sc.start()
        try:
            async with browser_page(site.origin + "/") as page:
                await wait_js(page, "window.ready === true")
                url = f"ws://{sc.edge.address}/ws"
                await page.evaluate("([url, t]) => { window.fixed = window.start(url, t); }",
                                    [url, make_token("dave", ttl=TOKEN_TTL)])
                await page.evaluate("url => { window.provided = window.start(url); }", url)
                await wait_js(page, "window.fixed.state === 'live' && "
                                    "window.provided.state === 'live'")
                await asyncio.wait_for(clock.expiry_timers(2), 10)
                # Past both expiries (the clock stood still while real time, on which
                # the tokens were made, went on), not past the provider's next token.
                clock.advance(2 * TOKEN_TTL)
                # Both tokens expire: the server closes both with 4001, and with nothing
                # else before (the browser answered every ping meanwhile).
                await wait_js(page, "window.fixed.state === 'offline'")
                fixed = await page.evaluate("window.fixed.states")
                assert fixed[-1] == {"state": "offline", "code": 4001, "reason": "token expired",
                                     "retryIn": None}
                await wait_js(page, "window.provided.states.some(s => s.code === 4001)")
                await wait_js(page, "window.provided.state === 'live'")
                assert site.token_requests == 2
                provided = [s["state"] for s in await page.evaluate("window.provided.states")]
                assert provided == ["offline", "connecting", "live", "offline", "connecting",
                                    "live"]
                # The fixed-token client gave up for good: no attempt after the 4001.
                assert [s["state"] for s in await page.evaluate("window.fixed.states")] == [
                    "offline", "connecting", "live", "offline"]
                async with grpc.aio.insecure_channel(sc.grpc.address) as ch:
                    resp = await pb_grpc.SidecarServiceStub(ch).GetPresence(
                        pb.GetPresenceRequest(topic="user:dave"), timeout=5)
                assert resp.connections == 0
        finally:
            await sc.stop()


async def next_retry(page: Any, count: int) -> dict[str, Any]:
    """The ``count``-th offline state that schedules a retry."""
    await wait_js(page, "n => window.sock.states.filter(s => s.retryIn != null).length >= n",
                  count)
    state: dict[str, Any] = await page.evaluate(
        "n => window.sock.states.filter(s => s.retryIn != null)[n - 1]", count)
    return state


async def test_backoff_is_capped_full_jitter_and_resets_only_after_a_stable_connection(
        tmp_path: Path) -> None:
    site = StaticSite(TEST_PAGE, {"sidecar-ws.js": WEB_CLIENT},
                      token=lambda n: make_token("erin"))
    with socket.socket() as probe:  # a port with nothing listening, for now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with site.running(), browser_page(site.origin + "/", fake_clock=True) as page:
        await wait_js(page, "window.ready === true")
        # random() just under 1: every delay sits at the top of its jitter range.
        await page.evaluate(
            "url => { window.sock = window.start(url, null, {backoff: {initial: 20, max: 80},"
            " stableAfter: 1000, random: () => 0.999}); }", f"ws://127.0.0.1:{port}/ws")
        delays = []
        for n in range(1, 5):
            state = await next_retry(page, n)
            assert state["code"] == 1006, state
            delays.append(state["retryIn"])
            if n < 4:
                await page.clock.run_for(state["retryIn"])
        assert delays == [19, 39, 79, 79]  # doubling, capped at max

        config = ws_config(tmp_path, site.origin, port)
        sc = await start_sidecar(config)
        try:
            await page.clock.run_for(79)
            await wait_js(page, "window.sock.state === 'live'")
        finally:
            await sc.stop()
        # Up, but not for stableAfter: the next delay does not start over.
        state = await next_retry(page, 5)
        assert (state["code"], state["retryIn"]) == (1001, 79)

        sc = await start_sidecar(config)
        try:
            await page.clock.run_for(79)
            await wait_js(page, "window.sock.state === 'live'")
            await page.clock.run_for(1000)
        finally:
            await sc.stop()
        # Up for stableAfter: the backoff starts over.
        state = await next_retry(page, 6)
        assert (state["code"], state["retryIn"]) == (1001, 19)
        await page.evaluate("window.sock.close()")


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    chromium_path()

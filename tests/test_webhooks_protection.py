"""Edge protection and the remaining schemes end to end: rate limits, header limits,
the concurrency cap, Slack's URL-verification handshake, secret rotation, Shopify and
generic HMAC, content-hash de-duplication, and a store left unchanged by bad input.

Real edge over HTTP, real SQLite file; a fake clock so token buckets refill only when
the test says so (Stripe, Slack and generic timestamps are signed with its wall time).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.clock import FakeClock
from tests.conftest import make_config
from tests.webhook_support import STRIPE_SECRET, stripe_event, stripe_headers

SLACK_SECRET = "slack-signing-secret"
SHOPIFY_SECRET = "shopify-app-secret"
ACME_SECRET = "acme-shared-secret"
PLAIN_SECRET = "plain-shared-secret"
STRIPE_NEW = "whsec_new_rotated_secret"
STRIPE_OLD = STRIPE_SECRET
ENV = {
    "STRIPE_WHSEC": STRIPE_SECRET, "STRIPE_NEW": STRIPE_NEW, "STRIPE_OLD": STRIPE_OLD,
    "SLACK_SECRET": SLACK_SECRET, "SHOPIFY_SECRET": SHOPIFY_SECRET,
    "ACME_SECRET": ACME_SECRET, "PLAIN_SECRET": PLAIN_SECRET,
}
OFF = {"enabled": False}
#: Every source, none rate limited unless a test says otherwise.
SOURCES: dict[str, dict[str, Any]] = {
    "stripe": {"scheme": "stripe", "secrets_env": ["STRIPE_WHSEC"], "rate_limit": OFF},
    "rotating": {"scheme": "stripe", "secrets_env": ["STRIPE_NEW", "STRIPE_OLD"],
                 "rate_limit": OFF},
    "slack": {"scheme": "slack", "secrets_env": ["SLACK_SECRET"], "rate_limit": OFF},
    "shopify": {"scheme": "shopify", "secrets_env": ["SHOPIFY_SECRET"], "rate_limit": OFF},
    "acme": {"scheme": "generic_hmac", "secrets_env": ["ACME_SECRET"], "rate_limit": OFF,
             "algorithm": "sha512", "signature_header": "X-Signature", "encoding": "base64",
             "prefix": "sha512=", "signed_content": "{timestamp}.{body}",
             "timestamp_header": "X-Timestamp", "id_header": "X-Event-Id",
             "event_type": {"path": "kind"}, "max_body_bytes": 1024},
    # No id header: the content hash is the de-duplication key.
    "plain": {"scheme": "generic_hmac", "secrets_env": ["PLAIN_SECRET"], "rate_limit": OFF,
              "signature_header": "X-Plain-Signature"},
}


# --------------------------------------------------------------------------- signing

def slack_headers(body: bytes, ts: int, secret: str = SLACK_SECRET) -> dict[str, str]:
    sig = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Signature": f"v0={sig}", "X-Slack-Request-Timestamp": str(ts),
            "Content-Type": "application/json"}


def shopify_headers(body: bytes, webhook_id: str, secret: str = SHOPIFY_SECRET
                    ) -> dict[str, str]:
    sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return {"X-Shopify-Hmac-Sha256": sig, "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Topic": "orders/create", "Content-Type": "application/json"}


def acme_headers(body: bytes, event_id: str, ts: int, secret: str = ACME_SECRET
                 ) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha512).digest()
    return {"X-Signature": "sha512=" + base64.b64encode(mac).decode(),
            "X-Timestamp": str(ts), "X-Event-Id": event_id,
            "Content-Type": "application/json"}


def plain_headers(body: bytes, secret: str = PLAIN_SECRET) -> dict[str, str]:
    return {"X-Plain-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


# --------------------------------------------------------------------------- harness

class Edge:
    def __init__(self, sc: Sidecar, clock: FakeClock) -> None:
        self.sc, self.clock = sc, clock

    @property
    def now(self) -> int:
        return int(self.clock.time())

    def url(self, source: str) -> str:
        return f"http://{self.sc.edge.address}/webhooks/{source}"

    async def post(self, source: str, body: Any, headers: dict[str, str], *,
                   local_ip: str | None = None) -> tuple[int, Any, dict[str, str]]:
        connector = aiohttp.TCPConnector(local_addr=(local_ip, 0) if local_ip else None)
        async with aiohttp.ClientSession(connector=connector) as session, session.post(
                self.url(source), data=body, headers=headers) as resp:
            text = await resp.text()
            try:
                payload: Any = json.loads(text)
            except ValueError:
                payload = text
            return resp.status, payload, dict(resp.headers)

    def stripe(self, event_id: str, secret: str = STRIPE_SECRET) -> tuple[bytes, dict[str, str]]:
        body = stripe_event(event_id)
        return body, stripe_headers(body, secret=secret, ts=self.now)

    def rows(self, table: str = "events") -> int:
        # A separate connection: what is committed to the file, not what the sidecar holds.
        db = Path(self.sc.config.storage.data_dir) / "sidecar.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def events(self, topic: str) -> list[tuple[str, bytes, dict[str, str]]]:
        db = Path(self.sc.config.storage.data_dir) / "sidecar.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return [(r[0], bytes(r[1]), json.loads(r[2])) for r in conn.execute(
                "SELECT type, data, attributes FROM events WHERE topic = ? ORDER BY seq",
                [topic])]

    def received(self, source: str, result: str) -> float:
        value = self.sc.metrics.registry.get_sample_value(
            "sidecar_webhooks_received_total", {"source": source, "result": result})
        return value or 0.0


EdgeFactory = Callable[..., contextlib.AbstractAsyncContextManager[Edge]]


@pytest.fixture
def edge(tmp_path: Path) -> EdgeFactory:
    """Start a sidecar whose ``webhooks`` section is SOURCES plus the given overrides."""

    @contextlib.asynccontextmanager
    async def start(sources: dict[str, dict[str, Any]] | None = None,
                    **webhooks: Any) -> AsyncIterator[Edge]:
        merged = {name: {**SOURCES.get(name, {}), **body}
                  for name, body in {**SOURCES, **(sources or {})}.items()}
        cfg: dict[str, Any] = {"sources": merged, "per_ip_rate_limit": OFF, **webhooks}
        clock = FakeClock()
        sc = Sidecar(make_config(tmp_path, {"webhooks": cfg}, env=ENV), clock=clock)
        await sc.start()
        try:
            yield Edge(sc, clock)
        finally:
            await sc.stop()

    return start


# --------------------------------------------------------------------------- rate limits

async def test_per_source_rate_limit_answers_429_with_retry_after(edge: EdgeFactory) -> None:
    async with edge({"stripe": {"rate_limit": {"rate": 1, "burst": 2}}}) as e:
        statuses = []
        for i in range(3):
            status, payload, headers = await e.post("stripe", *e.stripe(f"evt_rl{i}"))
            statuses.append(status)
        assert statuses == [200, 200, 429]
        assert int(headers["Retry-After"]) >= 1
        assert payload == {"error": {"reason": "RATE_LIMITED",
                                     "message": "too many webhook requests; retry later"}}
        assert e.received("stripe", "rate_limited") == 1
        assert e.received("stripe", "accepted") == 2
        assert [json.loads(d)["id"] for _, d, _ in e.events("webhooks.stripe")] == [
            "evt_rl0", "evt_rl1"]
        # One token a second: after a second (fake) the refused webhook goes through.
        e.clock.advance(1.0)
        status, _, _ = await e.post("stripe", *e.stripe("evt_rl2"))
        assert status == 200 and e.rows() == 3
        status, _, _ = await e.post("stripe", *e.stripe("evt_rl3"))
        assert status == 429 and e.rows() == 3


async def test_rate_limit_is_per_source(edge: EdgeFactory) -> None:
    async with edge({"stripe": {"rate_limit": {"rate": 1, "burst": 1}}}) as e:
        assert (await e.post("stripe", *e.stripe("evt_a")))[0] == 200
        assert (await e.post("stripe", *e.stripe("evt_b")))[0] == 429
        body = b'{"n": 1}'
        assert (await e.post("plain", body, plain_headers(body)))[0] == 200


async def test_per_client_ip_rate_limit(edge: EdgeFactory) -> None:
    async with edge({"stripe": {"rate_limit": {"rate": 1000, "burst": 1000}}},
                    per_ip_rate_limit={"rate": 1, "burst": 1}) as e:
        assert (await e.post("stripe", *e.stripe("evt_ip1")))[0] == 200
        status, _, headers = await e.post("stripe", *e.stripe("evt_ip2"))
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert e.received("stripe", "rate_limited") == 1 and e.rows() == 1
        # Another client address has its own bucket (all of 127/8 is loopback on Linux).
        assert (await e.post("stripe", *e.stripe("evt_ip3"), local_ip="127.0.0.2"))[0] == 200
        e.clock.advance(1.0)
        assert (await e.post("stripe", *e.stripe("evt_ip4")))[0] == 200
        assert e.rows() == 3


async def test_requests_refused_per_ip_do_not_drain_the_source_budget(
        edge: EdgeFactory) -> None:
    async with edge({"stripe": {"rate_limit": {"rate": 1, "burst": 3}}},
                    per_ip_rate_limit={"rate": 1, "burst": 1}) as e:
        # One noisy client: its first request is admitted, the next two are refused per IP.
        noisy = [(await e.post("stripe", *e.stripe(f"evt_n{i}"), local_ip="127.0.0.2"))[0]
                 for i in range(3)]
        assert noisy == [200, 429, 429]
        # Only one request was admitted, so the source still has two tokens for others.
        status, _, _ = await e.post("stripe", *e.stripe("evt_quiet"))
        assert status == 200


# --------------------------------------------------------------------------- header limits

async def test_too_many_headers_is_431_and_nothing_stored(edge: EdgeFactory) -> None:
    async with edge(max_headers=20) as e:
        body, headers = e.stripe("evt_hdr")
        many = {**headers, **{f"X-Extra-{i}": "v" for i in range(30)}}
        status, payload, _ = await e.post("stripe", body, many)
        assert status == 431 and payload["error"]["reason"] == "HEADERS_TOO_LARGE"
        assert e.rows() == 0
        # The same webhook with its ordinary headers is fine.
        assert (await e.post("stripe", body, headers))[0] == 200


def test_max_headers_above_the_parsers_limit_is_a_config_error() -> None:
    from sidecar.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"webhooks": {"max_headers": 200}}, {})
    assert [str(p) for p in info.value.problems] == [
        "webhooks.max_headers: must be at most 128; got 200"]


async def test_oversized_header_is_refused_and_nothing_stored(edge: EdgeFactory) -> None:
    async with edge() as e:
        body, headers = e.stripe("evt_big_header")
        status, _, _ = await e.post("stripe", body, {**headers, "X-Padding": "p" * 20_000})
        # aiohttp's own header-size limit (8190 bytes a field) answers before the handler.
        assert status in (400, 431) and e.rows() == 0


# --------------------------------------------------------------------------- concurrency

async def test_concurrency_cap_answers_503_while_full(edge: EdgeFactory) -> None:
    async with edge(max_concurrent=1) as e:
        first_half, second_half = b'{"id": "evt_slow", "type": "invoice.paid", ', b'"x": 1}'
        headers = stripe_headers(first_half + second_half, ts=e.now)
        release = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield first_half
            await release.wait()
            yield second_half

        async def slow_post() -> tuple[int, Any, dict[str, str]]:
            return await e.post("stripe", slow_body(), headers)

        slow = asyncio.create_task(slow_post())
        try:
            # Nothing outside the sidecar says when the first request's handler has
            # started reading its body (the client cannot see it, and the edge counts a
            # request only when it answers), so poll: a probe sent before then is
            # answered 401 (unsigned, nothing stored), one sent after is the 503 we want.
            # 100 x 10 ms bounds the wait; it normally takes one or two probes.
            probe: tuple[int, Any, dict[str, str]] = (0, None, {})
            for _ in range(100):
                probe = await e.post("stripe", b"{}", {"Content-Type": "application/json"})
                if probe[0] == 503:
                    break
                assert probe[0] == 401
                await asyncio.sleep(0.01)
            status, payload, probe_headers = probe
            assert status == 503, "the slow request never occupied the only slot"
            assert payload["error"]["reason"] == "OVERLOADED"
            assert int(probe_headers["Retry-After"]) >= 1
            assert e.received("stripe", "overloaded") >= 1
            assert not slow.done()
        finally:
            release.set()
        status, payload, _ = await asyncio.wait_for(slow, 5)
        assert (status, payload["status"]) == (200, "accepted")
        assert [json.loads(d)["id"] for _, d, _ in e.events("webhooks.stripe")] == ["evt_slow"]
        # The slot is free again.
        assert (await e.post("stripe", *e.stripe("evt_after")))[0] == 200


# --------------------------------------------------------------------------- Slack handshake

async def test_slack_url_verification_challenge(edge: EdgeFactory) -> None:
    async with edge() as e:
        body = b'{"type":"url_verification","challenge":"abc123","token":"t"}'
        status, payload, headers = await e.post("slack", body, slack_headers(body, e.now))
        assert (status, payload) == (200, "abc123")
        assert headers["Content-Type"].startswith("text/plain")
        assert e.rows() == 0 and e.rows("webhook_events") == 0
        assert e.received("slack", "challenge") == 1
        # Unsigned (or signed with another secret): no echo, so the URL cannot be probed.
        unsigned = await e.post("slack", body, {"Content-Type": "application/json"})
        wrong = await e.post("slack", body, slack_headers(body, e.now, secret="other"))
        stale = await e.post("slack", body, slack_headers(body, e.now - 301))
        assert [r[0] for r in (unsigned, wrong, stale)] == [401, 401, 401]
        assert "abc123" not in json.dumps([unsigned[1], wrong[1], stale[1]])
        assert e.rows() == 0


async def test_slack_event_callback_is_stored_and_deduplicated(edge: EdgeFactory) -> None:
    async with edge() as e:
        body = json.dumps({"type": "event_callback", "event_id": "Ev01",
                           "event": {"type": "message", "text": "hi"}}).encode()
        first = await e.post("slack", body, slack_headers(body, e.now))
        e.clock.advance(5)
        again = await e.post("slack", body, slack_headers(body, e.now))  # Slack's retry
        assert (first[1]["status"], again[1]["status"]) == ("accepted", "duplicate")
        assert [(t, a["provider_event_id"]) for t, _, a in e.events("webhooks.slack")] == [
            ("message", "Ev01")]


# --------------------------------------------------------------------------- rotation

async def test_secret_rotation_accepts_old_and_new_only(edge: EdgeFactory) -> None:
    async with edge() as e:
        new = await e.post("rotating", *e.stripe("evt_new", secret=STRIPE_NEW))
        old = await e.post("rotating", *e.stripe("evt_old", secret=STRIPE_OLD))
        third = await e.post("rotating", *e.stripe("evt_x", secret="whsec_someone_else"))
        assert [r[0] for r in (new, old, third)] == [200, 200, 401]
        assert third[1] == {"error": {"reason": "UNAUTHORIZED",
                                      "message": "webhook could not be verified"}}
        assert [json.loads(d)["id"] for _, d, _ in e.events("webhooks.rotating")] == [
            "evt_new", "evt_old"]
        assert e.received("rotating", "invalid_signature") == 1


async def test_deduplication_is_per_source(edge: EdgeFactory) -> None:
    async with edge() as e:
        # Two Stripe accounts may well use the same event id; neither hides the other.
        body = stripe_event("evt_shared")
        a = await e.post("stripe", body, stripe_headers(body, ts=e.now))
        b = await e.post("rotating", body, stripe_headers(body, secret=STRIPE_NEW, ts=e.now))
        assert [(r[0], r[1]["status"]) for r in (a, b)] == [(200, "accepted")] * 2
        assert e.rows() == 2


# --------------------------------------------------------------------------- Shopify, generic

async def test_shopify_end_to_end(edge: EdgeFactory) -> None:
    async with edge() as e:
        body = b'{"id": 820982911946154508, "email": "jon@example.com"}'
        first = await e.post("shopify", body, shopify_headers(body, "wh-1"))
        again = await e.post("shopify", body, shopify_headers(body, "wh-1"))
        other = await e.post("shopify", body, shopify_headers(body, "wh-2"))
        assert [(r[0], r[1]["status"]) for r in (first, again, other)] == [
            (200, "accepted"), (200, "duplicate"), (200, "accepted")]
        assert first[1]["event_id"] == again[1]["event_id"] != other[1]["event_id"]
        tampered = await e.post("shopify", body + b" ", shopify_headers(body, "wh-3"))
        wrong = await e.post("shopify", body, shopify_headers(body, "wh-4", secret="nope"))
        missing = await e.post("shopify", body, {"X-Shopify-Webhook-Id": "wh-5"})
        not_b64 = await e.post("shopify", body, {**shopify_headers(body, "wh-6"),
                                                 "X-Shopify-Hmac-Sha256": "%%%"})
        assert [r[0] for r in (tampered, wrong, missing, not_b64)] == [401, 401, 401, 400]
        stored = e.events("webhooks.shopify")
        assert [(t, d, a["provider_event_id"]) for t, d, a in stored] == [
            ("orders/create", body, "wh-1"), ("orders/create", body, "wh-2")]
        assert e.received("shopify", "duplicate") == 1


async def test_generic_hmac_end_to_end(edge: EdgeFactory) -> None:
    async with edge() as e:
        body = b'{"kind": "payment.settled", "amount": 42}'
        first = await e.post("acme", body, acme_headers(body, "a-1", e.now))
        e.clock.advance(30)
        # The provider retries later: a fresh timestamp and signature, the same id.
        again = await e.post("acme", body, acme_headers(body, "a-1", e.now))
        other = await e.post("acme", body, acme_headers(body, "a-2", e.now))
        assert [(r[0], r[1]["status"]) for r in (first, again, other)] == [
            (200, "accepted"), (200, "duplicate"), (200, "accepted")]
        assert [(t, a["provider_event_id"]) for t, _, a in e.events("webhooks.acme")] == [
            ("payment.settled", "a-1"), ("payment.settled", "a-2")]
        ts = e.now
        signed = acme_headers(body, "a-3", ts)
        bad = {
            "tampered": (body + b" ", signed),
            "wrong_secret": (body, acme_headers(body, "a-3", ts, secret="nope")),
            "stale": (body, acme_headers(body, "a-3", ts - 301)),
            "future": (body, acme_headers(body, "a-3", ts + 301)),
            # The timestamp is signed: changing it breaks the signature.
            "timestamp_swapped": (body, {**signed, "X-Timestamp": str(ts + 1)}),
            "missing": (body, {"X-Event-Id": "a-3", "X-Timestamp": str(ts)}),
        }
        for name, (sent, headers) in bad.items():
            status, _, _ = await e.post("acme", sent, headers)
            assert status == 401, name
        no_prefix = {**signed, "X-Signature": signed["X-Signature"].removeprefix("sha512=")}
        for headers in (no_prefix, {**signed, "X-Signature": "sha512=***"},
                        {**signed, "X-Timestamp": "soon"}):
            status, _, _ = await e.post("acme", body, headers)
            assert status == 400
        assert e.rows() == 2


async def test_without_a_provider_id_identical_bodies_are_deduplicated(
        edge: EdgeFactory) -> None:
    async with edge() as e:
        one, two = b'{"order": 1}', b'{"order": 2}'
        results = [await e.post("plain", b, plain_headers(b)) for b in (one, one, two, one)]
        assert [r[1]["status"] for r in results] == [
            "accepted", "duplicate", "accepted", "duplicate"]
        assert results[0][1]["event_id"] == results[1][1]["event_id"] == results[3][1][
            "event_id"] != results[2][1]["event_id"]
        stored = e.events("webhooks.plain")
        assert [d for _, d, _ in stored] == [one, two]
        assert all("provider_event_id" not in a for _, _, a in stored)
        assert e.received("plain", "duplicate") == 2
        # A different body whose only difference is whitespace is a different event.
        spaced = b'{"order":  1}'
        assert (await e.post("plain", spaced, plain_headers(spaced)))[1]["status"] == "accepted"


# --------------------------------------------------------------------------- store unchanged

def _chunks(total: int) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        for _ in range(total // 256):
            yield b"z" * 256

    return gen


BAD_INPUTS: dict[str, tuple[str, Callable[[Edge], tuple[Any, dict[str, str]]], int]] = {
    "stripe_garbage_signature": (
        "stripe", lambda e: (stripe_event("evt_g"), {"Stripe-Signature": "garbage"}), 400),
    "stripe_two_timestamps": (
        "stripe", lambda e: (stripe_event("evt_t"),
                             {"Stripe-Signature": f"t={e.now},t={e.now},v1=00"}), 400),
    "stripe_non_hex": (
        "stripe", lambda e: (stripe_event("evt_h"),
                             {"Stripe-Signature": f"t={e.now},v1=zz"}), 400),
    "slack_bad_timestamp": (
        "slack", lambda e: (b"{}", {"X-Slack-Signature": "v0=00",
                                    "X-Slack-Request-Timestamp": "yesterday"}), 400),
    "acme_not_base64": (
        "acme", lambda e: (b"{}", {**acme_headers(b"{}", "m-1", e.now),
                                   "X-Signature": "sha512=not base64!"}), 400),
    "acme_oversized_with_length": (
        "acme", lambda e: (b"x" * 2048, acme_headers(b"x" * 2048, "o-1", e.now)), 413),
    "acme_oversized_chunked": (
        "acme", lambda e: (_chunks(4096)(), acme_headers(b"", "o-2", e.now)), 413),
    "unsigned": ("stripe", lambda e: (stripe_event("evt_u"), {}), 401),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_malformed_or_oversized_input_leaves_the_store_unchanged(
        edge: EdgeFactory, case: str) -> None:
    source, make, expected = BAD_INPUTS[case]
    async with edge() as e:
        body, headers = e.stripe("evt_before")
        assert (await e.post("stripe", body, headers))[0] == 200
        before = {t: e.rows(t) for t in ("events", "webhook_events", "topics")}
        sent, bad_headers = make(e)
        status, payload, _ = await e.post(source, sent, bad_headers)
        assert status == expected
        assert set(payload) == {"error"}  # the generic error body, no verifier detail
        assert {t: e.rows(t) for t in before} == before
        # And the sidecar is still fine afterwards.
        assert (await e.post("stripe", *e.stripe("evt_after")))[0] == 200
        assert e.rows() == before["events"] + 1

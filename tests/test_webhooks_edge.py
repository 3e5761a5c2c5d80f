"""Webhook ingest on the real edge over HTTP, with a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar
from tests.conftest import make_config
from tests.webhook_support import (
    WEBHOOK_ENV,
    github_headers,
    standard_headers,
    stripe_event,
    stripe_headers,
    webhook_sources,
)


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    config = make_config(tmp_path, {"webhooks": {
        "sources": webhook_sources(small={"scheme": "github", "secrets_env": ["GITHUB_SECRET"],
                                          "max_body_bytes": 2048}),
        "per_ip_rate_limit": {"rate": 1000, "burst": 1000},
    }}, env=WEBHOOK_ENV)
    sc = Sidecar(config)
    await sc.start()
    try:
        yield sc
    finally:
        await sc.stop()


async def post(sc: Sidecar, source: str, body: bytes, headers: dict[str, str]
               ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://{sc.edge.address}/webhooks/{source}", data=body, headers=headers) as resp:
        try:
            payload: Any = await resp.json(content_type=None)
        except ValueError:
            payload = await resp.text()
        return resp.status, payload


def stored(sc: Sidecar) -> list[tuple[str, str, bytes]]:
    db = Path(sc.config.storage.data_dir) / "sidecar.db"
    with sqlite3.connect(db) as conn:
        return [(r[0], r[1], bytes(r[2])) for r in conn.execute(
            "SELECT topic, type, data FROM events ORDER BY topic, seq")]


async def test_valid_stripe_webhook_is_stored_before_the_answer(sidecar: Sidecar) -> None:
    body = stripe_event("evt_1")
    status, payload = await post(sidecar, "stripe", body, stripe_headers(body))
    assert status == 200 and payload["status"] == "accepted"
    assert stored(sidecar) == [("webhooks.stripe", "invoice.paid", body)]


async def test_duplicate_is_acknowledged_but_stored_once(sidecar: Sidecar) -> None:
    body = stripe_event("evt_dup")
    first = await post(sidecar, "stripe", body, stripe_headers(body))
    again = await post(sidecar, "stripe", body, stripe_headers(body))
    assert first[1]["status"] == "accepted" and again[1]["status"] == "duplicate"
    assert first[1]["event_id"] == again[1]["event_id"]
    assert len(stored(sidecar)) == 1
    text = sidecar.metrics.exposition().decode()
    assert 'sidecar_webhooks_received_total{result="duplicate",source="stripe"} 1.0' in text


@pytest.mark.parametrize("tamper", ["body", "secret", "missing", "stale", "future"])
async def test_bad_webhooks_get_401_with_a_generic_body(sidecar: Sidecar, tamper: str) -> None:
    import time

    body = stripe_event("evt_bad")
    now = int(time.time())
    headers = {
        "body": stripe_headers(body),
        "secret": stripe_headers(body, secret="whsec_wrong"),
        "missing": {"Content-Type": "application/json"},
        "stale": stripe_headers(body, ts=now - 301),
        "future": stripe_headers(body, ts=now + 301),
    }[tamper]
    sent = body + b" " if tamper == "body" else body
    status, payload = await post(sidecar, "stripe", sent, headers)
    assert status == 401
    assert payload == {"error": {"reason": "UNAUTHORIZED",
                                 "message": "webhook could not be verified"}}
    assert stored(sidecar) == []


async def test_malformed_headers_get_400(sidecar: Sidecar) -> None:
    body = stripe_event("evt_m")
    status, _ = await post(sidecar, "stripe", body, {"Stripe-Signature": "garbage"})
    assert status == 400 and stored(sidecar) == []


async def test_standard_webhooks_and_github(sidecar: Sidecar) -> None:
    body = b'{"type": "user.created"}'
    status, _ = await post(sidecar, "svix", body, standard_headers(body))
    assert status == 200
    gh = b'{"ref": "main"}'
    status, _ = await post(sidecar, "github", gh, github_headers(gh, "delivery-1"))
    assert status == 200
    assert [(t, k) for t, k, _ in stored(sidecar)] == [("webhooks.github", "push"),
                                                       ("webhooks.svix", "user.created")]


async def test_unknown_source_is_404(sidecar: Sidecar) -> None:
    status, payload = await post(sidecar, "nope", b"{}", {})
    assert status == 404 and payload["error"]["reason"] == "WEBHOOK_SOURCE_NOT_FOUND"


async def test_oversized_body_is_413_and_nothing_stored(sidecar: Sidecar) -> None:
    body = b"x" * 4096
    status, _ = await post(sidecar, "small", body, github_headers(body, "d1"))
    assert status == 413 and stored(sidecar) == []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 1024

    async with aiohttp.ClientSession() as session, session.post(
            f"http://{sidecar.edge.address}/webhooks/small", data=chunks(),
            headers=github_headers(b"", "d2")) as resp:
        assert resp.status == 413  # no Content-Length: stopped while reading
    assert stored(sidecar) == []

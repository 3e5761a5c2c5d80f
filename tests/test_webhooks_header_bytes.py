"""A validly signed webhook is stored whatever bytes its headers hold (#14).

HTTP lets a header value carry any byte but controls (``obs-text``: 0x80-0xFF, which
need not be UTF-8). A provider header the sidecar reads (an event id, a type) holding
such bytes was answered 500 and never stored; the provider retried into the same 500.
Sent over a raw socket, since HTTP clients refuse to send such bytes; on SQLite and on
Redis, since each stores the headers it keeps in its own way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.app import Sidecar
from tests.conftest import make_config
from tests.fuzzing import examples
from tests.redis_support import delete_prefix, redis_url  # noqa: F401 - a fixture
from tests.webhook_support import GITHUB_SECRET, WEBHOOK_ENV, WHSEC, webhook_sources

SHOPIFY_SECRET = "shopify-webhook-secret"
#: Bytes a header value may hold (RFC 9110 field-vchar, SP, HTAB, obs-text), not empty
#: and not starting or ending with whitespace (which HTTP strips).
VALUE = st.binary(min_size=1, max_size=40).map(
    lambda b: bytes(c for c in b if c in (0x09, 0x20) or 0x21 <= c <= 0x7E or c >= 0x80)
).filter(lambda b: b.strip(b" \t") == b and b != b"")


SOURCES = ("github", "shop", "svix")


@pytest.fixture(params=["sqlite", "redis"])
async def sidecar(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sidecar]:
    """One sidecar for all of a test's examples (hypothesis runs them in one call)."""
    extra: dict[str, Any] = {"webhooks": {
        "sources": webhook_sources(shop={"scheme": "shopify", "secrets_env": ["SHOP_SECRET"]}),
        "per_ip_rate_limit": {"rate": 100000, "burst": 100000},
    }}
    env = {**WEBHOOK_ENV, "SHOP_SECRET": SHOPIFY_SECRET}
    prefix = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"test-hdr-{uuid.uuid4().hex[:8]}:"
        extra["storage"] = {"backend": "redis",
                            "redis": {"url_env": "REDIS_URL", "key_prefix": prefix}}
        env["REDIS_URL"] = url
    sc = Sidecar(make_config(tmp_path, extra, env=env))
    await sc.start()
    try:
        yield sc
    finally:
        await sc.stop()
        if prefix:
            await delete_prefix(env["REDIS_URL"], prefix)


async def raw_post(sc: Sidecar, source: str, body: bytes,
                   headers: list[tuple[bytes, bytes]]) -> int:
    host, port = sc.edge.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = (f"POST /webhooks/{source} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n").encode()
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


def signed(source: str, body: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    """Headers signed as the provider signs them, ``value`` where the scheme reads an
    id (and, where it reads one from a header, a type)."""
    if source == "github":
        sig = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return [(b"X-Hub-Signature-256", f"sha256={sig}".encode()),
                (b"X-GitHub-Delivery", value), (b"X-GitHub-Event", value)]
    if source == "shop":
        digest = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body,
                                           hashlib.sha256).digest())
        return [(b"X-Shopify-Hmac-Sha256", digest), (b"X-Shopify-Webhook-Id", value),
                (b"X-Shopify-Topic", value)]
    ts = str(int(time.time())).encode()
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    # Standard Webhooks signs the id's bytes, whatever they are; "." would be ambiguous.
    msg_id = value.replace(b".", b"_")
    mac = base64.b64encode(hmac.new(key, msg_id + b"." + ts + b"." + body,
                                    hashlib.sha256).digest())
    return [(b"webhook-id", msg_id), (b"webhook-timestamp", ts),
            (b"webhook-signature", b"v1," + mac), (b"X-Extra", value)]


async def stored_count(sc: Sidecar) -> int:
    """Events stored for the sources under test, read back through the storage (offsets
    start at 1 and nothing is pruned here, so a topic's last offset is its count)."""
    total = 0
    for source in SOURCES:
        _, last = await sc.storage.topic_bounds(f"webhooks.{source}")
        total += last
    return total


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(SOURCES), value=VALUE,
       n=st.integers(0, 10**9))
async def test_a_validly_signed_webhook_is_stored_whatever_its_header_bytes(
        sidecar: Sidecar, source: str, value: bytes, n: int) -> None:
    body = json.dumps({"type": "t", "n": n}).encode()
    before = await stored_count(sidecar)
    status = await raw_post(sidecar, source, body, signed(source, body, value))
    assert status == 200, (source, value)
    # Stored, or a duplicate of an earlier example with the same provider id.
    assert await stored_count(sidecar) in (before, before + 1)


async def test_header_bytes_that_are_not_utf8_are_kept_visibly_and_deduplicated(
        sidecar: Sidecar) -> None:
    body = b'{"type": "t", "n": -1}'
    value = b"d-\xff\xfe"
    before = await stored_count(sidecar)
    assert await raw_post(sidecar, "github", body, signed("github", body, value)) == 200
    assert await raw_post(sidecar, "github", body, signed("github", body, value)) == 200
    assert await stored_count(sidecar) == before + 1  # the second is the same delivery
    _, last = await sidecar.storage.topic_bounds("webhooks.github")
    (event,) = await sidecar.storage.read_events("webhooks.github", after=last - 1, limit=1)
    assert event.type == "d-\\xff\\xfe"

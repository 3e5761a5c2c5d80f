"""Slow clients do not hold the edge's connections (#14): headers must arrive within
``server.edge.header_timeout`` however slowly they trickle, a webhook body within
``server.edge.body_timeout`` (408, logged as a WARNING, no traceback); the admin
listener bounds headers the same way. The timeouts are short here; the waits are for
the server's answer, bounded so a regression fails instead of hanging."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.app import Sidecar
from tests.conftest import make_config
from tests.webhook_support import WEBHOOK_ENV, github_headers, webhook_sources

TIMEOUT = 0.5
#: Far beyond the timeouts: reaching it means the connection was held.
HELD = 10.0


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    sc = Sidecar(make_config(tmp_path, {
        "server": {"edge": {"header_timeout": f"{TIMEOUT}s", "body_timeout": f"{TIMEOUT}s"}},
        "webhooks": {"sources": webhook_sources()}}, env=WEBHOOK_ENV))
    await sc.start()
    try:
        yield sc
    finally:
        await sc.stop()


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def trickle_until_closed(address: str, data: bytes) -> bytes:
    """Send ``data`` a byte at a time, each after waiting (for the server's answer)
    up to a fifth of the timeout; what the server said before closing."""
    reader, writer = await connect(address)
    try:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            try:
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(), TIMEOUT / 5)
            except (TimeoutError, ConnectionError):
                continue
            return answer  # the server answered and closed
        return await asyncio.wait_for(reader.read(), HELD)
    finally:
        writer.close()


async def test_trickled_headers_are_cut_off_at_the_header_timeout(sidecar: Sidecar) -> None:
    request = b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
    answer = await asyncio.wait_for(trickle_until_closed(sidecar.edge.address, request), HELD)
    assert answer == b""  # closed without an answer: no request was ever complete


async def test_an_idle_connection_is_closed(sidecar: Sidecar) -> None:
    reader, writer = await connect(sidecar.edge.address)
    try:
        assert await asyncio.wait_for(reader.read(), HELD) == b""
    finally:
        writer.close()


async def test_a_webhook_body_that_does_not_arrive_in_time_is_408(
        sidecar: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    body = b'{"ref": "main"}'
    head = "".join(f"{k}: {v}\r\n" for k, v in github_headers(body, "d-1").items())
    reader, writer = await connect(sidecar.edge.address)
    try:
        writer.write(f"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     f"{len(body)}\r\n{head}\r\n".encode() + body[:3])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), HELD)  # the answer, then closed
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"408", answer
    assert b'"REQUEST_TIMEOUT"' in rest
    assert [r.levelno for r in caplog.records
            if r.getMessage() == "webhook body not received in time"] == [logging.WARNING]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    text = sidecar.metrics.exposition().decode()
    assert 'sidecar_webhooks_received_total{result="timeout",source="github"} 1.0' in text

"""Whatever bytes reach the edge or the admin listener: a documented 4xx (or a closed
connection), never a 5xx, never an ERROR log line with a traceback (#14)."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.app import Sidecar
from tests.fuzzing import examples
from tests.test_edge_slow_clients import connect, sidecar  # noqa: F401 - a fixture

REQUEST_LINE = st.sampled_from([b"GET /healthz", b"POST /webhooks/github", b"GET /ws",
                                b"GET /metrics", b"POST /webhooks/nope", b"PUT /"])
KNOWN = {
    "garbage": b"\x00\xff\xfe garbage\r\n\r\n",
    "long header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n",
    "many headers": b"GET /ws HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: a\r\n" % i for i in range(300)) + b"\r\n",
    "bad chunked": (b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    "length and chunked": (b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 3"
                           b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "long url": b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "nul in a header": b"GET /ws HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "folded header": b"GET /ws HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
}


async def answer(address: str, raw: bytes) -> int | None:
    """The status the server answered ``raw`` with; None if it closed without one."""
    reader, writer = await connect(address)
    try:
        writer.write(raw)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    except ConnectionError:
        return None
    finally:
        writer.close()
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def assert_clean(status: int | None, records: list[logging.LogRecord], what: object) -> None:
    assert status is None or 200 <= status < 500, (what, status)
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert errors == [], (what, errors)


@pytest.mark.parametrize("case", sorted(KNOWN))
async def test_malformed_requests_are_400_and_a_warning(
        sidecar: Sidecar, caplog: pytest.LogCaptureFixture, case: str) -> None:  # noqa: F811
    for address in (sidecar.edge.address, sidecar.admin.address):
        status = await answer(address, KNOWN[case])
        assert_clean(status, caplog.records, case)
        assert status in (None, 400, 404, 431), (case, status)


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=REQUEST_LINE, headers=st.lists(st.tuples(st.binary(max_size=12),
                                                     st.binary(max_size=30)), max_size=6),
       body=st.binary(max_size=64), admin=st.booleans())
@example(line=b"POST /webhooks/github", headers=[(b"Content-Length", b"-1")], body=b"",
         admin=False)
async def test_any_header_and_body_bytes_get_a_4xx_or_an_answer_never_an_error(
        sidecar: Sidecar, caplog: pytest.LogCaptureFixture,  # noqa: F811
        line: bytes, headers: list[tuple[bytes, bytes]], body: bytes, admin: bool) -> None:
    raw = line + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(
        name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body
    address = sidecar.admin.address if admin else sidecar.edge.address
    caplog.clear()
    assert_clean(await answer(address, raw), caplog.records, raw)


QUERY = st.dictionaries(st.sampled_from(["status", "limit", "topic", "source", "group"]),
                        st.one_of(st.text(max_size=12), st.sampled_from(
                            ["-1", "0", "99999999999999999999", "dead", "nan", "1e9"])),
                        max_size=4)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["group", "event_ids", "statuses", "x"]),
                                      inner, max_size=3), max_leaves=8)


@settings(max_examples=examples(80), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=QUERY, body=JSON, raw=st.binary(max_size=40), use_raw=st.booleans())
@example(query={"limit": "-1"}, body={}, raw=b"", use_raw=False)
async def test_the_admin_endpoints_answer_any_query_or_body_without_an_error(
        sidecar: Sidecar, caplog: pytest.LogCaptureFixture,  # noqa: F811
        query: dict[str, str], body: object, raw: bytes, use_raw: bool) -> None:
    caplog.clear()
    base = f"http://{sidecar.admin.address}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/webhooks/events", params=query) as resp:
            assert resp.status in (200, 400), (query, resp.status)
            if resp.status == 200:
                events = (await resp.json())["events"]
                assert len(events) <= 1000
        data = raw if use_raw else json.dumps(body).encode()
        async with session.post(f"{base}/webhooks/replay", data=data) as resp:
            assert resp.status in (200, 400), (data, resp.status)
        async with session.get(f"{base}/presence", params=query) as resp:
            assert resp.status < 500
    assert_clean(200, caplog.records, (query, body))


async def test_a_negative_or_zero_limit_is_refused(sidecar: Sidecar) -> None:  # noqa: F811
    async with aiohttp.ClientSession() as session:
        for limit in ("-1", "0", "x"):
            async with session.get(f"http://{sidecar.admin.address}/webhooks/events",
                                   params={"limit": limit}) as resp:
                assert resp.status == 400, limit

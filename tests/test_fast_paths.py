"""The fast paths (``sidecar.fast_paths``) record exactly what prometheus_client's own
calls record, and step aside for the public API when switched off or on a version
they were not checked against."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sidecar import fast_paths
from sidecar.fast_paths import enabled, fast_count_and_observe, fast_inc, fast_observe

BUCKETS = (0.005, 0.01, 0.1, 1.0)
# Below, on and between the bounds, and past the last one (+Inf).
VALUES = [0.0, 0.001, 0.005, 0.0050001, 0.01, 0.05, 0.1, 1.0, 2.5, 1e9]


def exposition(fast: bool, combined: bool = False) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", ["l"], buckets=BUCKETS, registry=registry)
    counter = Counter("c", "c", ["l"], registry=registry)
    observe = fast_observe(histogram.labels("x")) if fast else histogram.labels("x").observe
    inc = fast_inc(counter.labels("x")) if fast else counter.labels("x").inc
    both = fast_count_and_observe(counter.labels("x"), histogram.labels("x"))
    for value in VALUES:
        if combined:
            both(value)
        else:
            observe(value)
            inc()
    # *_created carries the creation time, which differs between the two registries.
    return b"\n".join(line for line in generate_latest(registry).splitlines()
                      if b"_created" not in line)


def test_fast_recorders_match_prometheus_client() -> None:
    assert exposition(fast=True) == exposition(fast=False)
    assert b'h_seconds_bucket{l="x",le="0.005"} 3.0' in exposition(fast=True)


def test_count_and_observe_in_one_call_matches_prometheus_client() -> None:
    assert exposition(fast=True, combined=True) == exposition(fast=False)


class _Elsewhere:
    """A label child whose values are not prometheus_client's in-process kind (as in
    multiprocess mode): the recorder must go through its public methods."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def inc(self, amount: float = 1) -> None:
        self.calls.append(("inc", amount))

    def observe(self, amount: float) -> None:
        self.calls.append(("observe", amount))


def test_count_and_observe_falls_back_to_the_public_methods() -> None:
    counter, histogram = _Elsewhere(), _Elsewhere()
    fast_count_and_observe(counter, histogram)(0.25)
    assert counter.calls == [("inc", 1)] and histogram.calls == [("observe", 0.25)]


def test_the_switch_and_the_version_guard_decide() -> None:
    assert fast_paths.ENABLED  # the locked prometheus_client is one they were checked on
    assert enabled({}, (0, 26))
    assert not enabled({"SIDECAR_FAST_PATHS": "0"}, (0, 26))
    assert not enabled({}, (1, 0)) and not enabled({}, (0, 19)) and not enabled({}, ())


def test_switched_off_every_recorder_is_the_public_method(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_paths, "ENABLED", False)
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["l"], registry=registry).labels("x")
    histogram = Histogram("h", "h", ["l"], registry=registry).labels("x")
    assert fast_inc(counter) == counter.inc
    assert fast_observe(histogram) == histogram.observe
    fast_count_and_observe(counter, histogram)(0.25)
    fast_paths.observe_many(histogram, 0.5, 3)
    assert counter._value.get() == 1  # recorded all the same, the public way
    assert histogram._sum.get() == 1.75


# ---------------------------------------------------------------- aiohttp's hidden resend

async def _drop_second_request(requests: list[int]) -> asyncio.Server:
    """An HTTP/1.1 server that answers a connection's first request (keeping it alive)
    and closes the connection, unanswered, on its second: what an upstream's idle
    timeout does to a pooled connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                requests.append(len(head))
                served += 1
                if served == 2:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                             b"Connection: keep-alive\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize("switched_off", [False, True])
async def test_without_hidden_resend_every_request_is_one_attempt(switched_off: bool) -> None:
    requests: list[int] = []
    server = await _drop_second_request(requests)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            env = {"SIDECAR_FAST_PATHS": "0"} if switched_off else {}
            assert fast_paths.without_hidden_resend(session, environ=env) is not switched_off
            async with session.get(f"http://127.0.0.1:{port}/a") as first:
                assert await first.read() == b"ok"
            try:
                async with session.get(f"http://127.0.0.1:{port}/b") as second:
                    await second.read()
                resent = True
            except aiohttp.ClientError:
                resent = False
    finally:
        server.close()
        await server.wait_closed()
    # Switched off, aiohttp resends /b on a new connection by itself: three requests.
    assert (resent, len(requests)) == ((True, 3) if switched_off else (False, 2))


def test_hidden_resend_is_left_alone_on_an_unchecked_aiohttp() -> None:
    class Session:
        _retry_connection = True

    session = Session()
    assert not fast_paths.without_hidden_resend(session, version="4.0.0", environ={})
    assert not fast_paths.without_hidden_resend(session, version="3.8.6", environ={})
    assert session._retry_connection is True
    assert fast_paths.without_hidden_resend(session, version="3.14.5", environ={})
    assert session._retry_connection is False

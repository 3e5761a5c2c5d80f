"""W3C trace context end to end over real sockets: gRPC metadata -> upstream HTTP
headers, webhook headers -> durable subscribers, Publish -> live gRPC and WebSocket
subscribers, and the trace id on every log line written while a request runs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from aiohttp import web
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.core.tracing import parse_traceparent
from sidecar.logs import JsonFormatter, TraceIdFilter
from tests.call_support import call, integration, running
from tests.conftest import make_config
from tests.test_webhook_delivery import next_event
from tests.upstream import Upstream, reply
from tests.webhook_support import WEBHOOK_ENV, stripe_event, stripe_headers, webhook_sources

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
CALLER = f"00-{TRACE}-{SPAN}-01"
WS_SECRET = "trace-test-hmac-secret-0123456789abcdef"


def parts(traceparent: str) -> tuple[str, str, int]:
    parsed = parse_traceparent(traceparent)
    assert parsed is not None, f"not a valid traceparent: {traceparent!r}"
    return parsed


def trailer(md: Any) -> str:
    found = [v for k, v in (md or ()) if k == "traceparent"]
    assert len(found) == 1, md
    return str(found[0])


@dataclass
class Recorder(Upstream):
    """An upstream that also keeps every trace header as received (repeats included)."""

    raw: list[tuple[list[str], list[str]]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.raw.append((request.headers.getall("traceparent", []),
                         request.headers.getall("tracestate", [])))
        return await super()._handle(request)


@pytest.fixture
async def upstream() -> AsyncIterator[Recorder]:
    up = await Recorder().start()
    yield up
    await up.stop()


class LogCapture:
    """The ``sidecar`` loggers' lines, through the production filter and JSON formatter."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.handler.addFilter(TraceIdFilter())

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    logger = logging.getLogger("sidecar")
    old_level = logger.level
    logger.addHandler(capture.handler)
    logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(capture.handler)
        logger.setLevel(old_level)


# --------------------------------------------------------------------------- Call


async def test_caller_trace_reaches_the_upstream_as_a_new_hop(tmp_path: Path,
                                                              upstream: Recorder) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        pending = stub.Call(call(), timeout=5, metadata=(
            ("traceparent", CALLER), ("tracestate", "rojo=00f067aa0ba902b7, congo=t61rcWk")))
        resp = await pending
        assert resp.status == 200
        back = trailer(await pending.trailing_metadata())
    ((parents, states),) = upstream.raw
    assert len(parents) == 1
    trace_id, parent_id, flags = parts(parents[0])
    # Same trace, the sampled flag kept, and a parent id of the sidecar's own hop.
    assert (trace_id, flags) == (TRACE, 1) and parent_id != SPAN
    assert states == ["rojo=00f067aa0ba902b7,congo=t61rcWk"]
    assert parts(back)[0] == TRACE


async def test_without_a_traceparent_the_sidecar_starts_a_trace(tmp_path: Path,
                                                                upstream: Recorder) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        backs = []
        for _ in range(2):
            pending = stub.Call(call(), timeout=5)
            await pending
            backs.append(trailer(await pending.trailing_metadata()))
    sent = [parts(parents[0]) for parents, _ in upstream.raw]
    assert [len(p) for p, _ in upstream.raw] == [1, 1]
    assert [s for _, s in upstream.raw] == [[], []]
    assert sent[0][0] != sent[1][0]  # a new trace per call
    assert [parts(b)[0] for b in backs] == [sent[0][0], sent[1][0]]


@pytest.mark.parametrize("bad", [
    CALLER.upper(), f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01",
    f"ff-{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}", "00-xyz", f"00-{TRACE}-{SPAN}-01-x",
])
async def test_malformed_traceparent_is_ignored(tmp_path: Path, upstream: Recorder,
                                               bad: str) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(), timeout=5, metadata=(("traceparent", bad),
                                                            ("tracestate", "a=1")))
    assert resp.status == 200
    ((parents, states),) = upstream.raw
    trace_id, parent_id, flags = parts(parents[0])
    assert TRACE not in trace_id and (parent_id, flags) != (SPAN, 1)
    assert states == []  # tracestate never travels without its traceparent


async def test_future_version_is_forwarded_as_version_00(tmp_path: Path,
                                                         upstream: Recorder) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        await stub.Call(call(), timeout=5,
                        metadata=(("traceparent", f"cc-{TRACE}-{SPAN}-01-later-fields"),))
    ((parents, _),) = upstream.raw
    assert parents[0].startswith(f"00-{TRACE}-") and parts(parents[0])[0] == TRACE


async def test_trace_headers_in_the_request_are_used_once(tmp_path: Path,
                                                          upstream: Recorder) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        # Sent as plain headers (no metadata): understood, and not sent twice.
        await stub.Call(call(headers={"traceparent": CALLER, "tracestate": "a=1"}), timeout=5)
        # Metadata wins over headers.
        other = f"00-{'1' * 32}-{SPAN}-00"
        await stub.Call(call(headers={"traceparent": CALLER}), timeout=5,
                        metadata=(("traceparent", other),))
    (p1, s1), (p2, s2) = upstream.raw
    assert len(p1) == 1 and parts(p1[0])[0] == TRACE and s1 == ["a=1"]
    assert len(p2) == 1 and parts(p2[0])[0] == "1" * 32 and s2 == []


async def test_every_retry_carries_the_trace_and_logs_do_too(
        tmp_path: Path, upstream: Recorder, logs: LogCapture) -> None:
    upstream.then(reply(503), reply(502))
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(), timeout=5, metadata=(("traceparent", CALLER),))
        assert (resp.status, resp.attempts) == (200, 3)
        lines = logs.lines()
    sent = [parts(p[0]) for p, _ in upstream.raw]
    assert [t for t, _, _ in sent] == [TRACE] * 3
    assert len({s for _, s, _ in sent}) == 3  # each attempt is its own hop
    retries = [ln for ln in lines if ln["msg"] == "upstream attempt failed; retrying"]
    assert [(ln["level"], ln["reason"], ln["trace_id"]) for ln in retries] == [
        ("warning", "status_503", TRACE), ("warning", "status_502", TRACE)]
    assert [ln["span_id"] for ln in retries] == [s for _, s, _ in sent[:2]]
    (finished,) = [ln for ln in lines if ln["msg"] == "call finished"]
    assert finished["trace_id"] == TRACE


async def test_concurrent_calls_keep_their_own_trace_ids_in_logs(
        tmp_path: Path, upstream: Recorder, logs: LogCapture) -> None:
    upstream.then(reply(503), reply(503))
    traces = {"a": "a" * 32, "b": "b" * 32}
    async with running(tmp_path, {"a": integration(upstream.url),
                                  "b": integration(upstream.url)}) as (_, stub):
        await asyncio.gather(*(
            stub.Call(call(name), timeout=5, metadata=(("traceparent",
                                                        f"00-{tid}-{SPAN}-01"),))
            for name, tid in traces.items()))
        lines = logs.lines()
    about_calls = [ln for ln in lines if ln.get("integration") in traces]
    assert len(about_calls) >= 3  # two finished lines and at least one retry warning
    for ln in about_calls:
        assert ln["trace_id"] == traces[ln["integration"]], ln


async def test_errors_carry_the_trace_and_their_log_lines_too(
        tmp_path: Path, logs: LogCapture) -> None:
    # Nothing listens on this port: every attempt fails to connect, then UNAVAILABLE.
    dead = integration("http://127.0.0.1:9", retry={"max_attempts": 2,
                                                    "backoff": {"initial": "1ms"}})
    async with running(tmp_path, {"svc": dead}) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5, metadata=(("traceparent", CALLER),))
        lines = logs.lines()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    md = info.value.trailing_metadata()
    assert parts(trailer(md))[0] == TRACE
    assert any(k == "grpc-status-details-bin" for k, _ in md)  # rich details still there
    retry = [ln for ln in lines if ln["msg"] == "upstream attempt failed; retrying"]
    assert retry and all(ln["trace_id"] == TRACE for ln in retry)


# --------------------------------------------------------------------------- webhooks


class WebhookEnv:
    def __init__(self, sc: Sidecar, stub: pb_grpc.SidecarServiceStub) -> None:
        self.sc, self.stub = sc, stub

    async def post(self, event_id: str, extra: dict[str, str] | None = None,
                   body: bytes | None = None) -> tuple[int, str]:
        body = body or stripe_event(event_id)
        headers = {**stripe_headers(body), **(extra or {})}
        async with aiohttp.ClientSession() as session, session.post(
                f"http://{self.sc.edge.address}/webhooks/stripe", data=body,
                headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers.get("traceparent", "")


@pytest.fixture
async def webhooks(tmp_path: Path) -> AsyncIterator[WebhookEnv]:
    config = make_config(tmp_path, {"webhooks": {"sources": webhook_sources()}},
                         env=WEBHOOK_ENV)
    sc = Sidecar(config)
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel:
            yield WebhookEnv(sc, pb_grpc.SidecarServiceStub(channel))
    finally:
        await sc.stop()


async def test_webhook_trace_reaches_the_durable_subscriber(webhooks: WebhookEnv) -> None:
    status, echoed = await webhooks.post("evt_traced", {"traceparent": CALLER,
                                                        "tracestate": "vendor=x"})
    assert status == 200 and echoed == CALLER
    status, started = await webhooks.post("evt_untraced")
    assert status == 200
    stream = webhooks.stub.Subscribe(pb.SubscribeRequest(topics=["webhooks.stripe"],
                                                         group="app"))
    first, second = [await next_event(stream) for _ in range(2)]
    assert (first.attributes["traceparent"], first.attributes["tracestate"]) == (CALLER,
                                                                                 "vendor=x")
    assert first.attributes["provider_event_id"] == "evt_traced"
    # Without a traceparent the sidecar started one, told the provider, and stored it.
    assert second.attributes["traceparent"] == started and parts(started)[0] != TRACE
    assert "tracestate" not in second.attributes
    stream.cancel()


async def test_webhook_log_lines_carry_the_providers_trace(
        webhooks: WebhookEnv, logs: LogCapture) -> None:
    body = stripe_event("evt_forged")
    status, _ = await webhooks.post("evt_forged", {
        "traceparent": CALLER, "Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"},
        body=body)
    assert status == 401
    (rejected,) = [ln for ln in logs.lines() if ln["msg"] == "webhook rejected"]
    assert rejected["trace_id"] == TRACE


async def test_verify_webhook_uses_the_headers_trace_then_the_metadata(
        webhooks: WebhookEnv) -> None:
    meta_trace = f"00-{'c' * 32}-{SPAN}-01"
    results = []
    for event_id, headers in (("evt_h", {"traceparent": CALLER}), ("evt_m", {})):
        body = stripe_event(event_id)
        pending = webhooks.stub.VerifyWebhook(pb.VerifyWebhookRequest(
            source="stripe", body=body, record=True,
            headers=[pb.Header(name=k, value=v)
                     for k, v in {**stripe_headers(body), **headers}.items()]),
            timeout=5, metadata=(("traceparent", meta_trace),))
        resp = await pending
        assert resp.result == pb.VERIFY_RESULT_VALID and resp.recorded
        results.append(trailer(await pending.trailing_metadata()))
    assert results == [CALLER, meta_trace]
    stream = webhooks.stub.Subscribe(pb.SubscribeRequest(topics=["webhooks.stripe"],
                                                         group="app"))
    events = [await next_event(stream) for _ in range(2)]
    assert [e.attributes["traceparent"] for e in events] == [CALLER, meta_trace]
    stream.cancel()


# --------------------------------------------------------------------------- publish


async def test_publish_trace_reaches_grpc_and_websocket_subscribers(tmp_path: Path) -> None:
    ws_config = {"jwt": {"algorithms": ["HS256"], "hs256_secret_env": "WS_SECRET"}}
    config = make_config(tmp_path, {"realtime": {"websocket": ws_config}},
                         env={"WS_SECRET": WS_SECRET})
    sc = Sidecar(config)
    await sc.start()
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, WS_SECRET,
                       algorithm="HS256")
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel, \
                aiohttp.ClientSession() as session:
            stub = pb_grpc.SidecarServiceStub(channel)
            # From the start of the topic: each event arrives live or by replay, so
            # nothing depends on when the subscriptions register.
            stream = stub.Subscribe(pb.SubscribeRequest(
                topics=["user:alice"], start=pb.START_POSITION_EARLIEST))
            ws = await session.ws_connect(
                f"http://{sc.edge.address}/ws", params={"offsets": '{"user:alice": 0}'},
                headers={"Authorization": f"Bearer {token}"})
            other = f"00-{'d' * 32}-{SPAN}-00"
            cases: list[tuple[dict[str, str], tuple[tuple[str, str], ...]]] = [
                ({}, (("traceparent", CALLER), ("tracestate", "k=v"))),  # metadata
                ({"traceparent": other}, (("traceparent", CALLER),)),    # attribute wins
                ({"traceparent": "junk", "tracestate": "x=1"},           # junk: replaced
                 (("traceparent", CALLER),)),
                ({}, ()),                                                # none: new trace
            ]
            backs = []
            for attributes, metadata in cases:
                pending = stub.Publish(pb.PublishRequest(
                    topic="user:alice", data=b"{}", content_type="application/json",
                    attributes=attributes), timeout=5, metadata=metadata)
                await pending
                backs.append(trailer(await pending.trailing_metadata()))
            grpc_attrs: list[dict[str, str]] = []
            while len(grpc_attrs) < len(cases):
                msg = await asyncio.wait_for(stream.read(), 5)
                if msg.HasField("event"):
                    grpc_attrs.append(dict(msg.event.attributes))
            ws_attrs: list[dict[str, str]] = []
            while len(ws_attrs) < len(cases):
                frame = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
                if "control" not in frame and frame["topic"] == "user:alice":
                    ws_attrs.append(frame["attributes"])
            stream.cancel()
            await ws.close()
    finally:
        await sc.stop()
    assert grpc_attrs == ws_attrs
    assert grpc_attrs[0] == {"traceparent": CALLER, "tracestate": "k=v"}
    assert grpc_attrs[1] == {"traceparent": other}
    assert grpc_attrs[2] == {"traceparent": CALLER}
    assert set(grpc_attrs[3]) == {"traceparent"} and TRACE not in grpc_attrs[3]["traceparent"]
    assert backs == [a["traceparent"] for a in grpc_attrs]


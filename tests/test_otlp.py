"""The sidecar's own spans over OTLP/HTTP (JSON), through a real sidecar and a fake
collector on real sockets: which spans exist, their ids and attributes, sampling,
and the exporter's batching, retries, drops and shutdown flush."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.config import ConfigError, dump_redacted, parse_config
from sidecar.config.model import TracingConfig
from sidecar.core.spans import KIND_SERVER, Span
from sidecar.metrics import Metrics
from sidecar.otlp import OtlpExporter
from sidecar.reload import effective_config, restart_required
from tests.call_support import call, integration, running
from tests.clocks import SkippingClock
from tests.conftest import make_config
from tests.otlp_collector import Collector, attributes
from tests.test_tracing import parts, trailer
from tests.upstream import Upstream, hang, reply
from tests.webhook_support import WEBHOOK_ENV, stripe_event, stripe_headers, webhook_sources

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE}-{SPAN}-01"
NOT_SAMPLED = f"00-{TRACE}-{SPAN}-00"
SERVICE = "integration_sidecar.v1.SidecarService"
HEADER_SECRET = "k3y-S3cret-otlp-9Zp"


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = await Collector().start()
    yield c
    await c.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


def tracing(collector: Collector, **extra: Any) -> dict[str, Any]:
    otlp = {"endpoint": collector.url, **extra.pop("otlp", {})}
    return {"enabled": True, "export_interval": "60s", "otlp": otlp, **extra}


def spans_by_kind(spans: list[dict[str, Any]], kind: int) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == kind]


def counted(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("sidecar_trace_spans_total",
                                             {"result": result}) or 0.0


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, env: dict[str, str] | None = None, *, flush: bool = True,
                  **sections: Any) -> AsyncIterator[tuple[Sidecar, pb_grpc.SidecarServiceStub]]:
    """A sidecar with ``sections`` of config; its spans exported as the block ends."""
    sc = Sidecar(make_config(tmp_path, sections, env))
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel:
            yield sc, pb_grpc.SidecarServiceStub(channel)
        if flush and sc.tracing is not None:
            await sc.tracing.flush()
    finally:
        await sc.stop()


# --------------------------------------------------------------------------- Call


async def test_sampled_call_with_a_retry_gives_one_server_and_two_client_spans(
        tmp_path: Path, upstream: Upstream, collector: Collector) -> None:
    upstream.then(reply(503, b"secret-body-1"))
    async with serving(tmp_path, integrations={"svc": integration(upstream.url)},
                       tracing=tracing(collector)) as (_, stub):
        pending = stub.Call(call(path="/v1/items", query={"api_key": "q-s3cret"}), timeout=5,
                            metadata=(("traceparent", SAMPLED),))
        resp = await pending
        back = trailer(await pending.trailing_metadata())
    assert (resp.status, resp.attempts) == (200, 2)
    (server,) = spans_by_kind(collector.spans, KIND_SERVER)
    clients = spans_by_kind(collector.spans, 3)
    assert len(collector.spans) == 3 and len(clients) == 2
    # The caller's trace; the server span is the caller's span's child, the attempts its.
    assert {s["traceId"] for s in collector.spans} == {TRACE}
    assert server["parentSpanId"] == SPAN
    assert server["name"] == f"{SERVICE}/Call"
    assert [c["parentSpanId"] for c in clients] == [server["spanId"]] * 2
    # Each CLIENT span's id is the parent id that attempt sent upstream.
    sent = [parts(seen.headers["traceparent"]) for seen in upstream.seen]
    assert [(t, s, f) for t, s, f in sent] == [(TRACE, c["spanId"], 1) for c in clients]
    # The trailer names the sidecar's span, so the caller can link to it.
    assert parts(back) == (TRACE, server["spanId"], 1)
    attrs = attributes(server)
    assert attrs == {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "Call",
                     "rpc.grpc.status_code": 0, "sidecar.integration": "svc",
                     "sidecar.route": "", "sidecar.call.outcome": "success",
                     "sidecar.call.attempts": 2}
    first, second = (attributes(c) for c in clients)
    port = int(upstream.url.rsplit(":", 1)[1])
    assert first == {"http.request.method": "GET", "server.address": "127.0.0.1",
                     "server.port": port, "url.full": f"{upstream.url}/v1/items",
                     "sidecar.integration": "svc", "sidecar.route": "",
                     "http.response.status_code": 503, "error.type": "503"}
    assert clients[0]["status"] == {"code": 2, "message": "503"}
    assert second["http.response.status_code"] == 200
    assert second["http.request.resend_count"] == 1 and "error.type" not in second
    assert clients[1]["status"] == {"code": 0}
    # Nothing of the query string or the bodies leaves in a span.
    raw = json.dumps(collector.requests)
    assert "q-s3cret" not in raw and "api_key" not in raw and "secret-body" not in raw
    # OTLP/JSON: 64-bit integers and times as strings, the resource named.
    assert isinstance(server["startTimeUnixNano"], str)
    assert int(server["endTimeUnixNano"]) >= int(server["startTimeUnixNano"]) > 0
    assert {"key": "rpc.grpc.status_code", "value": {"intValue": "0"}} in server["attributes"]
    assert collector.resources[0]["service.name"] == "integration-sidecar"
    assert "service.version" in collector.resources[0]


async def test_a_not_sampled_caller_is_not_recorded_and_propagates_as_before(
        tmp_path: Path, upstream: Upstream, collector: Collector) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, plain_stub):
        pending = plain_stub.Call(call(), timeout=5, metadata=(("traceparent", NOT_SAMPLED),))
        await pending
        plain_back = trailer(await pending.trailing_metadata())
    async with serving(tmp_path, integrations={"svc": integration(upstream.url)},
                       tracing=tracing(collector)) as (_, stub):
        pending = stub.Call(call(), timeout=5, metadata=(("traceparent", NOT_SAMPLED),))
        await pending
        back = trailer(await pending.trailing_metadata())
    assert collector.requests == []
    assert back == plain_back == NOT_SAMPLED
    sent = [parts(seen.headers["traceparent"]) for seen in upstream.seen]
    assert [(t, f) for t, _, f in sent] == [(TRACE, 0), (TRACE, 0)]
    assert all(s != SPAN for _, s, _ in sent)


@pytest.mark.parametrize("ratio, flags", [(1.0, 1), (0.0, 0)])
async def test_a_trace_the_sidecar_starts_is_sampled_by_the_ratio(
        tmp_path: Path, upstream: Upstream, collector: Collector, ratio: float,
        flags: int) -> None:
    async with serving(tmp_path, integrations={"svc": integration(upstream.url)},
                       tracing=tracing(collector, sample_ratio=ratio)) as (_, stub):
        pending = stub.Call(call(), timeout=5)
        await pending
        back = trailer(await pending.trailing_metadata())
    ((trace_id, parent_id, sent_flags),) = [parts(s.headers["traceparent"])
                                             for s in upstream.seen]
    assert sent_flags == flags
    assert parts(back)[0] == trace_id and parts(back)[2] == flags
    if not flags:
        assert collector.requests == []
        return
    (server,) = spans_by_kind(collector.spans, KIND_SERVER)
    (client,) = spans_by_kind(collector.spans, 3)
    # The sidecar's span is the root, and the id it hands back.
    assert "parentSpanId" not in server and server["traceId"] == trace_id
    assert parts(back)[1] == server["spanId"] == client["parentSpanId"]
    assert client["spanId"] == parent_id


async def test_failed_calls_have_error_status_with_the_reason(
        tmp_path: Path, upstream: Upstream, collector: Collector) -> None:
    upstream.then(reply(500, b"secret-body-2"))
    svc = integration(upstream.url, retry={"max_attempts": 1},
                      circuit_breaker={"consecutive_failures": 1, "open_duration": "60s"})
    codes: list[object] = []
    async with serving(tmp_path, integrations={"svc": svc},
                       tracing=tracing(collector)) as (_, stub):
        for name in ("nope", "svc", "svc"):
            try:
                resp = await stub.Call(call(name), timeout=5,
                                       metadata=(("traceparent", SAMPLED),))
                codes.append(resp.status)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
    assert codes == [grpc.StatusCode.NOT_FOUND, 500, grpc.StatusCode.UNAVAILABLE]
    unknown, failed, refused = spans_by_kind(collector.spans, KIND_SERVER)
    assert unknown["status"] == {"code": 2, "message": "INTEGRATION_NOT_FOUND"}
    assert attributes(unknown)["error.type"] == "INTEGRATION_NOT_FOUND"
    assert attributes(unknown)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # An upstream 500 is a response, not an RPC failure: only its CLIENT span is an error.
    assert failed["status"] == {"code": 0}
    (client,) = spans_by_kind(collector.spans, 3)
    assert client["status"]["code"] == 2 and client["parentSpanId"] == failed["spanId"]
    assert refused["status"] == {"code": 2, "message": "CIRCUIT_OPEN"}
    assert attributes(refused)["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert [e["name"] for e in refused["events"]] == ["sidecar.circuit_open"]
    assert "secret-body" not in json.dumps(collector.requests)


# --------------------------------------------------------------------------- webhooks, Publish


async def test_webhook_ingest_on_the_edge_is_a_server_span_in_the_providers_trace(
        tmp_path: Path, collector: Collector) -> None:
    body = stripe_event("evt_otlp_1")
    async with serving(tmp_path, WEBHOOK_ENV, webhooks={"sources": webhook_sources()},
                       tracing=tracing(collector)) as (sc, stub), aiohttp.ClientSession() as http:
        url = f"http://{sc.edge.address}/webhooks/stripe"
        async with http.post(url, data=body, headers={
                **stripe_headers(body), "traceparent": SAMPLED}) as resp:
            assert resp.status == 200
            accepted = parts(resp.headers["traceparent"])
        async with http.post(url, data=body, headers={"Stripe-Signature": "t=1,v1=00"}
                             ) as resp:
            assert resp.status == 401
            started = parts(resp.headers["traceparent"])
        # The stored event names the sidecar's span: the app's handling is its child.
        stream = stub.Subscribe(pb.SubscribeRequest(topics=["webhooks.stripe"], group="app"))
        delivered = await asyncio.wait_for(stream.read(), 10)
        while not delivered.HasField("event"):  # a heartbeat
            delivered = await asyncio.wait_for(stream.read(), 10)
        stream.cancel()
    ok, bad = collector.spans
    assert parts(delivered.event.attributes["traceparent"]) == (TRACE, ok["spanId"], 1)
    assert (ok["traceId"], ok["parentSpanId"], ok["kind"]) == (TRACE, SPAN, KIND_SERVER)
    assert ok["name"] == "POST /webhooks/{source}"
    assert accepted == (TRACE, ok["spanId"], 1)
    assert attributes(ok) == {
        "http.request.method": "POST", "http.route": "/webhooks/{source}",
        "sidecar.webhook.source": "stripe", "sidecar.webhook.result": "accepted",
        "sidecar.webhook.event_id": attributes(ok)["sidecar.webhook.event_id"],
        "http.response.status_code": 200}
    # No trace from the sender: a new one, sampled, with this span as its root.
    assert (bad["traceId"], bad["spanId"]) == started[:2] and "parentSpanId" not in bad
    assert attributes(bad)["sidecar.webhook.result"] == "invalid_signature"
    assert attributes(bad)["http.response.status_code"] == 401


async def test_publish_and_verify_webhook_are_server_spans(tmp_path: Path,
                                                           collector: Collector) -> None:
    meta = (("traceparent", SAMPLED),)
    body = stripe_event("evt_otlp_2")
    async with serving(tmp_path, WEBHOOK_ENV, webhooks={"sources": webhook_sources()},
                       tracing=tracing(collector)) as (sc, stub):
        published = await stub.Publish(pb.PublishRequest(
            topic="orders", type="order.created", data=b"{}"), timeout=5, metadata=meta)
        await stub.VerifyWebhook(pb.VerifyWebhookRequest(
            source="stripe", body=body, record=False,
            headers=[pb.Header(name=k, value=v) for k, v in stripe_headers(body).items()]),
            timeout=5, metadata=meta)
        events = await sc.storage.read_events("orders", after=0, limit=10)
    publish, verify = collector.spans
    assert (publish["name"], publish["parentSpanId"]) == (f"{SERVICE}/Publish", SPAN)
    assert attributes(publish) == {
        "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "Publish",
        "rpc.grpc.status_code": 0, "messaging.system": "sidecar",
        "messaging.destination.name": "orders", "messaging.operation.type": "send",
        "messaging.message.id": published.event_id, "sidecar.event.offset": published.offset,
        "sidecar.event.replayed": False}
    # Subscribers of the event see the Publish span as its parent.
    (event,) = events
    assert parts(event.attributes["traceparent"]) == (TRACE, publish["spanId"], 1)
    assert (verify["name"], verify["parentSpanId"]) == (f"{SERVICE}/VerifyWebhook", SPAN)
    assert attributes(verify)["sidecar.webhook.source"] == "stripe"
    assert attributes(verify)["sidecar.webhook.result"] == "accepted"


# --------------------------------------------------------------------------- exporter


def exporter(collector: Collector, clock: Any = None, **extra: Any) -> tuple[OtlpExporter,
                                                                           Metrics]:
    env = extra.pop("env", {})
    config = parse_config({"tracing": tracing(collector, **extra)}, env).tracing
    metrics = Metrics()
    return OtlpExporter(config, metrics, clock or SkippingClock()), metrics


async def export(exp: OtlpExporter, *counts: int) -> None:
    """Start ``exp``; for each count, that many finished spans and a flush; stop."""
    await exp.start()
    try:
        for count in counts:
            finished(exp, count)
            await exp.flush()
    finally:
        await exp.stop(1)


def finished(recorder: OtlpExporter, count: int) -> list[Span]:
    spans = [Span(recorder, TRACE, f"{n + 1:016x}", SPAN, f"op-{n}", KIND_SERVER)
             for n in range(count)]
    for span in spans:
        span.end()
    return spans


async def test_a_span_is_written_as_the_otlp_json_mapping_says(collector: Collector) -> None:
    exp, _ = exporter(collector, env={"OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=pod-1"})
    span = Span(exp, TRACE, "00000000000000aa", SPAN, 'GET "q" \\ café', 3,
                {"s": "ünïcode \"quoted\"\n", "i": 2**62, "b": True, "f": 0.25,
                 "nan": float("nan"), "inf": float("-inf")}, tracestate="v=1")
    span.event("sidecar.retry", {"attempt": 2})
    span.fail("UPSTREAM_TIMEOUT")
    span.end()
    body = json.loads(exp._body([span, span]))
    (resource_spans,) = body["resourceSpans"]
    resource = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
    assert resource["service.name"] == {"stringValue": "integration-sidecar"}
    assert resource["k8s.pod.name"] == {"stringValue": "pod-1"}
    (scope,) = resource_spans["scopeSpans"]
    assert scope["scope"]["name"] == "integration-sidecar"
    first, second = scope["spans"]
    assert first == second == {
        "traceId": TRACE, "spanId": "00000000000000aa", "parentSpanId": SPAN,
        "traceState": "v=1", "name": 'GET "q" \\ café', "kind": 3,
        "startTimeUnixNano": str(span.start_ns), "endTimeUnixNano": str(span.end_ns),
        "attributes": [
            {"key": "s", "value": {"stringValue": "ünïcode \"quoted\"\n"}},
            {"key": "i", "value": {"intValue": str(2**62)}},
            {"key": "b", "value": {"boolValue": True}},
            {"key": "f", "value": {"doubleValue": 0.25}},
            {"key": "nan", "value": {"doubleValue": "NaN"}},
            {"key": "inf", "value": {"doubleValue": "-Infinity"}},
            {"key": "error.type", "value": {"stringValue": "UPSTREAM_TIMEOUT"}}],
        "status": {"code": 2, "message": "UPSTREAM_TIMEOUT"},
        "events": [{"timeUnixNano": str(span.events[0][0]), "name": "sidecar.retry",
                    "attributes": [{"key": "attempt", "value": {"intValue": "2"}}]}]}


async def test_spans_go_in_batches_and_a_full_batch_goes_at_once(collector: Collector) -> None:
    exp, metrics = exporter(collector, max_batch=3)
    await exp.start()
    try:
        finished(exp, 3)
        # A full batch wakes the exporter: no flush, and the interval is a minute.
        await collector.wait_requests(1)
        finished(exp, 4)
        await exp.flush()
    finally:
        await exp.stop(1)
    sizes = [len(body["resourceSpans"][0]["scopeSpans"][0]["spans"])
             for _, body in collector.requests]
    assert sizes == [3, 3, 1]
    assert counted(metrics, "exported") == 7


async def test_a_full_queue_drops_new_spans_and_counts_them(collector: Collector) -> None:
    exp, metrics = exporter(collector, max_queue=2, max_batch=2)
    finished(exp, 5)  # not started: nothing leaves yet
    assert (exp.queued, counted(metrics, "dropped")) == (2, 3)
    await exp.start()
    await exp.stop(1)
    assert [s["name"] for s in collector.spans] == ["op-0", "op-1"]
    assert counted(metrics, "exported") == 2


async def test_503_is_retried_then_the_batch_is_given_up_and_counted(
        collector: Collector) -> None:
    collector.then(*(reply(503) for _ in range(50)))
    clock = SkippingClock()
    exp, metrics = exporter(collector, clock, export_interval="5s")
    await export(exp, 4)
    assert len(collector.requests) > 2
    assert sum(clock.sleeps) <= 5.0
    assert (counted(metrics, "failed"), counted(metrics, "exported")) == (4, 0)


async def test_429_retry_after_is_honoured(collector: Collector) -> None:
    collector.then(reply(429, headers={"Retry-After": "7"}))
    clock = SkippingClock()
    exp, metrics = exporter(collector, clock, export_interval="30s")
    await export(exp, 2)
    assert clock.sleeps == [7.0]
    assert len(collector.requests) == 2 and len(collector.spans) == 2
    assert counted(metrics, "exported") == 2


async def test_a_hanging_collector_times_out_per_request(collector: Collector) -> None:
    collector.then(hang(), hang())
    clock = SkippingClock()
    exp, metrics = exporter(collector, clock, export_interval="1s",
                            otlp={"timeout": "100ms"})
    await export(exp, 1)
    assert len(collector.requests) >= 1
    assert counted(metrics, "failed") + counted(metrics, "exported") == 1


async def test_calls_are_unaffected_when_the_collector_is_down(
        tmp_path: Path, upstream: Upstream) -> None:
    dead = await Collector().start()
    url = dead.url
    await dead.stop()  # nothing listens there any more
    async with serving(tmp_path, flush=False, integrations={"svc": integration(upstream.url)},
                       tracing={"enabled": True, "export_interval": "100ms", "max_batch": 2,
                                "otlp": {"endpoint": url}}) as (sc, stub):
        for _ in range(5):
            t0 = time.monotonic()
            resp = await stub.Call(call(), timeout=5)
            assert resp.status == 200
            assert time.monotonic() - t0 < 1.0
    # Every span (a SERVER and a CLIENT per call) given up and counted, none lost silently.
    assert counted(sc.metrics, "failed") == 10
    assert counted(sc.metrics, "exported") == 0


async def test_shutdown_exports_what_is_queued(tmp_path: Path, upstream: Upstream,
                                               collector: Collector) -> None:
    async with serving(tmp_path, flush=False, integrations={"svc": integration(upstream.url)},
                       tracing=tracing(collector)) as (_, stub):
        await stub.Call(call(), timeout=5)
        assert collector.requests == []  # the interval is a minute away
    assert len(collector.spans) == 2


async def test_headers_come_from_the_environment_and_are_never_logged(
        collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    env = {"OTLP_KEYS": f"x-api-key={HEADER_SECRET},x-team=blue%20team"}
    collector.then(reply(400))
    caplog.set_level(logging.DEBUG, logger="sidecar")
    config = parse_config({"tracing": tracing(collector, otlp={
        "headers_env": "OTLP_KEYS", "compression": "gzip"})}, env)
    # The first export is refused (400) and logged as a failure, the second goes.
    await export(OtlpExporter(config.tracing, Metrics(), SkippingClock()), 1, 1)
    headers = [h for h, _ in collector.requests]
    assert [(h["x-api-key"], h["x-team"]) for h in headers] == [(HEADER_SECRET, "blue team")] * 2
    assert all(h["Content-Encoding"] == "gzip" for h in headers)
    assert len(collector.spans) == 1
    assert any("could not be exported" in r.getMessage() for r in caplog.records)
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert HEADER_SECRET not in logged
    shown = dump_redacted(config, env)
    assert HEADER_SECRET not in shown and "headers_env: OTLP_KEYS" in shown
    assert all(HEADER_SECRET not in s.value or s.env == "OTLP_KEYS" for s in config.secrets())
    assert HEADER_SECRET in {s.value for s in config.secrets()}


# --------------------------------------------------------------------------- config


def test_tracing_is_off_by_default_and_standard_variables_apply_only_when_on() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318/",
           "OTEL_SERVICE_NAME": "payments-sidecar",
           "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=pod-1,team=a%2Cb,service.name=x",
           "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0k"}
    assert parse_config({}, env).tracing == TracingConfig()
    on = parse_config({"tracing": {"enabled": True}}, env).tracing
    assert on.otlp.endpoint == "http://otel-collector:4318/v1/traces"
    assert on.service_name == "payments-sidecar"
    assert on.resource_attributes == (("k8s.pod.name", "pod-1"), ("team", "a,b"))
    assert on.otlp.header_pairs() == [("authorization", "Bearer t0k")]
    traces = parse_config({"tracing": {"enabled": True}},
                          {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://h/custom"})
    assert traces.tracing.otlp.endpoint == "https://h/custom"  # used as is
    own = parse_config({"tracing": {"enabled": True, "service_name": "mine",
                                    "otlp": {"endpoint": "http://c:4318/v1/traces"}}}, env)
    assert (own.tracing.service_name, own.tracing.otlp.endpoint) == (
        "mine", "http://c:4318/v1/traces")


@pytest.mark.parametrize("tracing_section, env, field, leaked", [
    ({"otlp": {"endpoint": "ftp://x"}}, {}, "tracing.otlp.endpoint", ""),
    ({"otlp": {"headers_env": "KEYS"}}, {"KEYS": "no-equals-s3cr3t"}, "tracing.otlp.headers_env",
     "s3cr3t"),
    ({"sample_ratio": 1.5}, {}, "tracing.sample_ratio", ""),
    ({"max_queue": 10, "max_batch": 11}, {}, "tracing.max_batch", ""),
    ({"otlp": {"compression": "zstd"}}, {}, "tracing.otlp.compression", ""),
    ({"otlp": {"headers": "a=b"}}, {}, "tracing.otlp.headers", ""),
])
def test_bad_tracing_settings_name_the_field(tracing_section: dict[str, Any],
                                             env: dict[str, str], field: str,
                                             leaked: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"tracing": {"enabled": True, **tracing_section}}, env)
    assert [p.field for p in info.value.problems] == [field]
    assert not leaked or leaked not in str(info.value)


def test_tracing_settings_need_a_restart(collector: Collector) -> None:
    running_config = parse_config({}, {})
    new = parse_config({"tracing": tracing(collector)}, {})
    effective = effective_config(running_config, new)
    assert effective.tracing == running_config.tracing
    assert "tracing.enabled" in restart_required(effective, new)


async def test_spans_of_concurrent_calls_keep_their_parents(
        tmp_path: Path, upstream: Upstream, collector: Collector) -> None:
    async with serving(tmp_path, integrations={"svc": integration(upstream.url)},
                       tracing=tracing(collector)) as (_, stub):
        await asyncio.gather(*(stub.Call(call(), timeout=5) for _ in range(8)))
    servers = {s["spanId"]: s for s in spans_by_kind(collector.spans, KIND_SERVER)}
    clients = spans_by_kind(collector.spans, 3)
    assert len(servers) == len(clients) == 8
    assert all(servers[c["parentSpanId"]]["traceId"] == c["traceId"] for c in clients)

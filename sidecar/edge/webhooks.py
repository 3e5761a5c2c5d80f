"""``POST /webhooks/{source}``: the edge adapter over ``WebhookIngest``.

Protection comes before work: unknown source, concurrency cap, header limits,
per-source and per-client-IP rate limits and the body limit are all checked
before the body is read; the event is durably stored before the 2xx answer.
Rejections carry a generic body: the reason goes to logs and metrics only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math

from aiohttp import web

from sidecar.clock import Clock
from sidecar.config import WebhooksConfig
from sidecar.config.model import DEFAULT_EDGE_BODY_TIMEOUT
from sidecar.core.resilience.rate_limit import RateLimitPolicy, TokenBucket
from sidecar.core.spans import Span, SpanRecorder, server_span, start_trace
from sidecar.core.tracing import TRACEPARENT, TRACESTATE, current, from_headers, new_trace
from sidecar.core.webhooks.ingest import IngestObserver, WebhookIngest
from sidecar.core.webhooks.verdict import VerifyResult, WebhookRequest
from sidecar.errors import NotFound, SidecarError
from sidecar.http_common import json_error

log = logging.getLogger("sidecar.edge")

ROUTE = "/webhooks/{source}"
#: Client IPs whose buckets are remembered; the least recently seen is dropped
#: first, so a spray of addresses cannot grow memory.
MAX_TRACKED_IPS = 10_000
_READ_CHUNK = 64 * 1024


class _IpBuckets:
    def __init__(self, policy: RateLimitPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def wait_for(self, ip: str) -> float:
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = TokenBucket(self._policy, self._clock)
            while len(self._buckets) > MAX_TRACKED_IPS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ip)
        return bucket.try_acquire()


def _too_many(wait: float) -> web.Response:
    resp = json_error(429, "RATE_LIMITED", "too many webhook requests; retry later")
    resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return resp


class WebhookEdge:
    def __init__(self, ingest: WebhookIngest, config: WebhooksConfig, clock: Clock,
                 observer: IngestObserver, recorder: SpanRecorder | None = None, *,
                 body_timeout: float = DEFAULT_EDGE_BODY_TIMEOUT) -> None:
        self._ingest = ingest
        self._body_timeout = body_timeout
        #: Where each request's SERVER span goes when export is on; None: no spans.
        self._recorder = recorder
        self._config = config
        self._clock = clock
        self._observer = observer
        self._source_buckets = {
            name: TokenBucket(src.rate_limit, clock)
            for name, src in config.sources.items() if src.rate_limit is not None
        }
        self._ip_buckets = (_IpBuckets(config.per_ip_rate_limit, clock)
                            if config.per_ip_rate_limit else None)
        self._in_flight = 0

    def update(self, config: WebhooksConfig) -> None:
        """Reload: a source or per-IP limit keeps its buckets unless its policy changed."""
        old = self._config
        self._source_buckets = {
            name: self._source_buckets[name]
            if name in self._source_buckets and old.sources[name].rate_limit == src.rate_limit
            else TokenBucket(src.rate_limit, self._clock)
            for name, src in config.sources.items() if src.rate_limit is not None
        }
        if config.per_ip_rate_limit != old.per_ip_rate_limit:
            self._ip_buckets = (_IpBuckets(config.per_ip_rate_limit, self._clock)
                                if config.per_ip_rate_limit else None)
        self._config = config

    def _reject(self, source: str, result: str, span: Span | None) -> None:
        self._observer.webhook_received(source, result, 0.0)
        if span is not None:
            span.attributes["sidecar.webhook.result"] = result

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # The provider's trace (or a new one) for every log line of this request.
        trace = from_headers((k, v) for k in (TRACEPARENT, TRACESTATE)
                             for v in request.headers.getall(k, ()))
        span: Span | None = None
        if self._recorder is None:
            trace = trace or new_trace()
        else:
            span, trace = server_span(self._recorder, trace or start_trace(self._recorder),
                                      f"POST {ROUTE}", {
                                          "http.request.method": "POST", "http.route": ROUTE,
                                          "sidecar.webhook.source": request.match_info["source"]})
        token = current.set(trace)
        try:
            resp = await self._handle(request, span)
        except BaseException as exc:
            if span is not None:
                span.fail(type(exc).__name__)
                span.end()
            raise
        finally:
            current.reset(token)
        resp.headers[TRACEPARENT] = trace.traceparent
        if span is not None:
            span.attributes["http.response.status_code"] = resp.status
            if resp.status >= 500:
                span.fail(str(resp.status))
            span.end()
        return resp

    def _too_slow(self, name: str, span: Span | None) -> web.StreamResponse:
        log.warning("webhook body not received in time", extra={
            "source": name, "timeout_seconds": self._body_timeout})
        self._reject(name, "timeout", span)
        resp = json_error(408, "REQUEST_TIMEOUT",
                          f"the body did not arrive within {self._body_timeout:g}s")
        resp.force_close()
        return resp

    async def _handle(self, request: web.Request, span: Span | None) -> web.StreamResponse:
        name = request.match_info["source"]
        try:
            source = self._ingest.source(name)
        except NotFound:
            if span is not None:
                span.attributes["sidecar.webhook.result"] = "unknown_source"
            return json_error(404, "WEBHOOK_SOURCE_NOT_FOUND", "no such webhook source")
        if self._in_flight >= self._config.max_concurrent:
            self._reject(name, "overloaded", span)
            resp = json_error(503, "OVERLOADED", "too many webhooks in progress; retry later")
            resp.headers["Retry-After"] = "1"
            return resp
        if len(request.raw_headers) > self._config.max_headers:
            self._reject(name, "malformed", span)
            return json_error(431, "HEADERS_TOO_LARGE", "too many request headers")
        # The client's own limit first: a throttled client must not use up the
        # source's budget, or the real provider would be refused too.
        wait = self._ip_buckets.wait_for(request.remote or "") if self._ip_buckets else 0.0
        bucket = self._source_buckets.get(name)
        if not wait and bucket is not None:
            wait = bucket.try_acquire()
        if wait:
            self._reject(name, "rate_limited", span)
            return _too_many(wait)
        limit = source.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._too_large(name, limit, span)
        self._in_flight += 1
        try:
            body = bytearray()
            try:
                # Real time: a slow sender holds a connection and a place in max_concurrent.
                async with asyncio.timeout(self._body_timeout):
                    while chunk := await request.content.read(_READ_CHUNK):
                        body += chunk
                        if len(body) > limit:
                            return self._too_large(name, limit, span)
            except TimeoutError:
                return self._too_slow(name, span)
            outcome = await self._ingest.receive(
                name, WebhookRequest(tuple(request.headers.items()), bytes(body),
                                     str(request.url)), trace=current.get(),
                # With a span, this request's context is that span in the webhook's trace.
                hop=current.get() if span is not None else None)
        except SidecarError as exc:
            log.error("webhook could not be stored: %s", exc.message,
                      extra={"source": name, "reason": exc.reason})
            if span is not None:
                span.attributes["sidecar.webhook.result"] = "unavailable"
            resp = json_error(503, "UNAVAILABLE", "webhook could not be stored; retry later")
            resp.headers["Retry-After"] = "5"
            return resp
        finally:
            self._in_flight -= 1
        verdict = outcome.verdict
        if span is not None:
            span.attributes["sidecar.webhook.result"] = outcome.result
            if outcome.stored is not None:
                span.attributes["sidecar.webhook.event_id"] = outcome.stored.id
        if verdict.result is VerifyResult.MALFORMED:
            return json_error(400, "MALFORMED", "malformed webhook request")
        if not verdict.valid:
            return json_error(401, "UNAUTHORIZED", "webhook could not be verified")
        if verdict.challenge is not None:
            return web.Response(text=verdict.challenge, content_type="text/plain")
        assert outcome.stored is not None
        return web.json_response({
            "status": "duplicate" if outcome.duplicate else "accepted",
            "event_id": outcome.stored.id,
        })

    def _too_large(self, source: str, limit: int, span: Span | None) -> web.Response:
        self._reject(source, "too_large", span)
        resp = json_error(413, "TOO_LARGE", f"body over {limit} bytes")
        resp.force_close()  # do not read (or keep) the rest of an oversized body
        return resp

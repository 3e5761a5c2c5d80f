"""OTLP/HTTP span export with the JSON encoding: the ``SpanRecorder`` the wiring
builds when ``tracing.enabled`` (and only then imports).

Finished spans wait in a bounded queue; one task POSTs them in batches to
``{endpoint}`` every ``export_interval`` or as soon as a batch is full, one
request at a time. 429/502/503/504 and connection failures are retried with
backoff (honouring ``Retry-After``) for up to an export interval, then the
batch is given up and counted. The request headers (API keys) are never logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
import logging
import math
import random
from collections.abc import Callable

import aiohttp

from sidecar import __version__
from sidecar.clock import Clock
from sidecar.config.model import TracingConfig
from sidecar.core.resilience import backoff_delay, parse_retry_after
from sidecar.core.resilience.backoff import BackoffPolicy
from sidecar.core.spans import AttributeValue, Span
from sidecar.core.tasks import RECANCEL_EVERY, stop_task
from sidecar.metrics import Metrics

#: A JSON string literal (ASCII, escaped) of ``str``: the json module's C encoder.
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii

log = logging.getLogger("sidecar.tracing")

SCOPE_NAME = "integration-sidecar"
#: The OTLP specification's retryable answers for OTLP/HTTP.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
#: Between tries of one batch, unless the collector says (Retry-After).
RETRY_BACKOFF = BackoffPolicy(initial=0.5, multiplier=2.0, maximum=5.0)


def _value(value: AttributeValue) -> str:
    """An ``AnyValue`` in OTLP/JSON: 64-bit integers as strings, as the JSON mapping says
    (and a non-finite double as proto3's JSON names it)."""
    if isinstance(value, bool):
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, int):
        return f'{{"intValue":"{value}"}}'
    if isinstance(value, float):
        if math.isfinite(value):
            return f'{{"doubleValue":{value!r}}}'
        name = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        return f'{{"doubleValue":"{name}"}}'
    return f'{{"stringValue":{_quote(value)}}}'


def _attributes(attributes: dict[str, AttributeValue]) -> str:
    return ",".join(f'{{"key":{_quote(k)},"value":{_value(v)}}}'
                    for k, v in attributes.items())


def span_text(span: Span) -> str:
    """A ``Span`` message in OTLP/JSON (ids in lower-case hex, enums as integers), written
    out directly: building dicts for ``json.dumps`` cost several times more per span."""
    status = (f'{{"code":{span.status_code},"message":{_quote(span.status_message)}}}'
              if span.status_message else f'{{"code":{span.status_code}}}')
    parts = [f'{{"traceId":"{span.trace_id}","spanId":"{span.span_id}"']
    if span.parent_id:
        parts.append(f',"parentSpanId":"{span.parent_id}"')
    if span.tracestate:
        parts.append(f',"traceState":{_quote(span.tracestate)}')
    parts.append(f',"name":{_quote(span.name)},"kind":{span.kind},'
                 f'"startTimeUnixNano":"{span.start_ns}","endTimeUnixNano":"{span.end_ns}",'
                 f'"attributes":[{_attributes(span.attributes)}],"status":{status}')
    if span.events:
        events = ",".join(f'{{"timeUnixNano":"{at}","name":{_quote(name)},'
                          f'"attributes":[{_attributes(attrs)}]}}'
                          for at, name, attrs in span.events)
        parts.append(f',"events":[{events}]')
    parts.append("}")
    return "".join(parts)


class OtlpExporter:
    """Samples the traces the sidecar starts, queues finished spans, exports them."""

    def __init__(self, config: TracingConfig, metrics: Metrics, clock: Clock, *,
                 rand: Callable[[], float] = random.random) -> None:
        self._config = config
        self._clock = clock
        self._rand = rand
        self._queue: collections.deque[Span] = collections.deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        counter = metrics.trace_spans
        self._exported = counter.labels("exported")
        self._dropped = counter.labels("dropped")
        self._failed = counter.labels("failed")
        otlp = config.otlp
        self._headers = {**dict(otlp.header_pairs()), "Content-Type": "application/json"}
        if otlp.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        resource: dict[str, AttributeValue] = {
            **dict(config.resource_attributes), "service.name": config.service_name,
            "service.version": __version__}
        #: Every request's JSON up to its spans: the resource and scope do not change.
        self._body_head = (
            f'{{"resourceSpans":[{{"resource":{{"attributes":[{_attributes(resource)}]}},'
            f'"scopeSpans":[{{"scope":{{"name":{_quote(SCOPE_NAME)},'
            f'"version":{_quote(__version__)}}},"spans":[')

    # ------------------------------------------------------------------ SpanRecorder

    def sample(self) -> bool:
        ratio = self._config.sample_ratio
        return ratio >= 1.0 or (ratio > 0.0 and self._rand() < ratio)

    def now_ns(self) -> int:
        return int(self._clock.time() * 1e9)

    def record(self, span: Span) -> None:
        if len(self._queue) >= self._config.max_queue:
            self._dropped.inc()
            return
        self._queue.append(span)
        if len(self._queue) >= self._config.max_batch:
            self._wake.set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.otlp.timeout))
        self._task = asyncio.create_task(self._run(), name="otlp-export")
        log.info("exporting spans over OTLP", extra={
            "endpoint": self._config.otlp.endpoint, "sample_ratio": self._config.sample_ratio})

    async def stop(self, grace: float) -> None:
        """Export what is queued within ``grace`` seconds, then close."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # On time-out the task is stopped: what it held is counted as failed.
            await asyncio.wait({self._task}, timeout=grace)
            await stop_task(self._task, RECANCEL_EVERY * 4, "the span exporter")
        if self._queue:
            self._failed.inc(len(self._queue))
            log.warning("spans not exported before shutdown", extra={"spans": len(self._queue)})
            self._queue.clear()
        if self._session is not None:
            await self._session.close()

    async def flush(self) -> None:
        """Export every span queued now (after the request in flight, if any)."""
        await self._export_queued()

    async def _run(self) -> None:
        interval = self._config.export_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            await self._export_queued()
            if self._closing:
                return

    async def _export_queued(self) -> None:
        async with self._lock:  # one request in flight
            while self._queue:
                take = min(len(self._queue), self._config.max_batch)
                batch = [self._queue.popleft() for _ in range(take)]
                try:
                    await self._export(batch)
                except asyncio.CancelledError:
                    self._failed.inc(len(batch))
                    raise

    # ------------------------------------------------------------------ export

    def _body(self, batch: list[Span]) -> bytes:
        body = (self._body_head + ",".join(span_text(s) for s in batch) + "]}]}]}").encode()
        return gzip.compress(body) if self._config.otlp.compression == "gzip" else body

    async def _export(self, batch: list[Span]) -> None:
        body = self._body(batch)
        give_up_at = self._clock.monotonic() + self._config.export_interval
        tries = 0
        while True:
            tries += 1
            status, retry_after, rejected = await self._post(body)
            if status is not None and 200 <= status < 300:
                self._exported.inc(len(batch) - rejected)
                if rejected:
                    self._failed.inc(rejected)
                    log.warning("the OTLP endpoint rejected spans", extra={"spans": rejected})
                return
            if status is not None and status not in RETRYABLE_STATUSES:
                return self._give_up(batch, f"HTTP {status}")
            wait = (retry_after if retry_after is not None
                    else backoff_delay(RETRY_BACKOFF, tries, self._rand))
            if self._clock.monotonic() + wait > give_up_at:
                return self._give_up(batch, f"HTTP {status}" if status else "unreachable")
            await self._clock.sleep(wait)

    def _give_up(self, batch: list[Span], why: str) -> None:
        self._failed.inc(len(batch))
        log.warning("spans could not be exported", extra={"spans": len(batch), "reason": why,
                                                          "endpoint": self._config.otlp.endpoint})

    async def _post(self, body: bytes) -> tuple[int | None, float | None, int]:
        """``(status or None when unreachable, Retry-After seconds, rejected spans)``."""
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(self._config.otlp.endpoint, data=body,
                                          headers=self._headers,
                                          allow_redirects=False) as resp:
                payload = await resp.read()
                hint = resp.headers.get("Retry-After")
                retry_after = (parse_retry_after(hint, self._clock.time())
                               if hint is not None else None)
                return resp.status, retry_after, _rejected(payload) if resp.ok else 0
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("OTLP export attempt failed", extra={"error": type(exc).__name__})
            return None, None, 0


def _rejected(payload: bytes) -> int:
    """``partialSuccess.rejectedSpans`` of an ``ExportTraceServiceResponse``, else 0."""
    if not payload:
        return 0
    try:
        answer = json.loads(payload)
        return int(answer.get("partialSuccess", {}).get("rejectedSpans", 0))
    except (ValueError, AttributeError, TypeError):
        return 0

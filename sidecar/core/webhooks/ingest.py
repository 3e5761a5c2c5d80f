"""Webhook ingest: verify with the source's scheme, de-duplicate, store durably.

The edge and the VerifyWebhook RPC are thin adapters over ``WebhookIngest``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.clock import Clock
from sidecar.core.events.models import IngestResult, NewEvent, StoredEvent, new_event_id
from sidecar.core.tracing import TraceContext, from_headers, new_trace
from sidecar.core.webhooks.schemes import SchemeConfig, verify
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest, as_text
from sidecar.errors import NotFound

log = logging.getLogger("sidecar.webhooks")

#: Headers kept with each stored event for audit (never signatures or auth).
AUDIT_HEADERS = frozenset({
    "content-type", "user-agent", "webhook-id", "webhook-timestamp", "svix-id",
    "svix-timestamp", "x-github-delivery", "x-github-event", "x-github-hook-id",
    "x-shopify-webhook-id", "x-shopify-topic", "x-shopify-shop-domain",
    "x-slack-request-timestamp", "traceparent", "tracestate", "x-request-id",
})


@dataclass(frozen=True)
class WebhookSource:
    """One webhook source as ingest sees it (the config adapter builds it from
    the operator's config)."""

    name: str
    #: The topic its events are stored on.
    topic: str
    #: Bodies over this many bytes are refused before they are read.
    max_body_bytes: int
    scheme: SchemeConfig


@dataclass(frozen=True)
class WebhookSettings:
    sources: Mapping[str, WebhookSource] = field(default_factory=dict)
    #: Seconds provider event ids are remembered for de-duplication.
    retention: float = 7 * 86400.0


class IngestObserver(Protocol):
    def webhook_received(self, source: str, result: str, duration: float) -> None:
        """``result``: accepted, duplicate, or the verify result (invalid_signature, ...)."""


class EventStore(Protocol):
    async def ingest_webhook(self, event: NewEvent, *, source: str, dedup_key: str,
                             audit_headers: dict[str, str], now: float,
                             dedup_ttl: float) -> IngestResult: ...


@dataclass(frozen=True)
class IngestOutcome:
    verdict: Verdict
    #: Set when the webhook was valid and recording was asked for.
    stored: StoredEvent | None = None
    duplicate: bool = False
    #: The trace this webhook was handled in (the webhook's ``traceparent``, else the one
    #: given, else new); the stored event carries it unless it is a duplicate.
    trace: TraceContext | None = None

    @property
    def result(self) -> str:
        if not self.verdict.valid:
            return self.verdict.result.value
        if self.verdict.challenge is not None:
            return "challenge"
        return "duplicate" if self.duplicate else "accepted"


class WebhookIngest:
    def __init__(self, config: WebhookSettings, store: EventStore, clock: Clock,
                 observer: IngestObserver, notify: Callable[[StoredEvent], None]) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._observer = observer
        self._notify = notify

    def update(self, config: WebhookSettings) -> None:
        """Reload: sources, secrets and retention apply from the next request on."""
        self._config = config

    def source(self, name: str) -> WebhookSource:
        src = self._config.sources.get(name)
        if src is None:
            raise NotFound(f"webhook source {name!r} is not configured",
                           reason="WEBHOOK_SOURCE_NOT_FOUND", metadata={"source": name})
        return src

    async def receive(self, source_name: str, request: WebhookRequest, *,
                      record: bool = True, trace: TraceContext | None = None,
                      hop: TraceContext | None = None) -> IngestOutcome:
        """``trace``: the request's context when the webhook has no valid ``traceparent``
        (VerifyWebhook's metadata); without either, the event starts a new trace.
        ``hop``: the sidecar's own span for this request in the webhook's trace (the
        edge's, when spans are exported): the stored event names it as its parent, so
        the app's handling shows under the sidecar's ingest in the trace."""
        start = self._clock.monotonic()
        source = self.source(source_name)
        now = self._clock.time()
        verdict = verify(source.scheme, request, now)
        outcome = IngestOutcome(verdict)
        if verdict.valid and verdict.challenge is None and record:
            event_trace = hop or from_headers(request.headers) or trace or new_trace()
            result = await self._store.ingest_webhook(
                self._event(source, request, verdict, now, event_trace), source=source.name,
                dedup_key=verdict.event_id or _content_key(request.body),
                audit_headers=_audit(request), now=now, dedup_ttl=self._config.retention)
            outcome = IngestOutcome(verdict, result.event, result.duplicate, event_trace)
            if not result.duplicate:
                self._notify(result.event)
        elapsed = self._clock.monotonic() - start
        self._observer.webhook_received(source.name, outcome.result, elapsed)
        if not verdict.valid:
            # The reason goes to the log and metrics, never to the sender.
            log.warning("webhook rejected", extra={
                "source": source.name, "result": verdict.result.value,
                "reason": verdict.reason})
        return outcome

    @staticmethod
    def _event(source: WebhookSource, request: WebhookRequest, verdict: Verdict,
               now: float, trace: TraceContext) -> NewEvent:
        attributes = {"source": source.name, **trace.attributes()}
        if verdict.event_id:
            attributes["provider_event_id"] = verdict.event_id
        content_type = as_text(next((v for k, v in request.headers
                                     if k.lower() == "content-type"), ""))
        return NewEvent(id=new_event_id(now), topic=source.topic, type=verdict.event_type,
                        data=request.body, content_type=content_type, attributes=attributes)


def _audit(request: WebhookRequest) -> dict[str, str]:
    return {k.lower(): as_text(v) for k, v in request.headers if k.lower() in AUDIT_HEADERS}


def _content_key(body: bytes) -> str:
    """Without a provider id, identical bodies are the same event."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


__all__ = ["IngestOutcome", "VerifyResult", "WebhookIngest", "WebhookSettings", "WebhookSource"]

"""Every Prometheus metric the sidecar exports, defined in one place.

Each ``Metrics`` owns its registry, so several sidecars can live in one test
process. Labels are bounded: names from config and fixed enums, never paths,
keys, topics or ids.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sidecar import __version__
from sidecar.core.calls.models import DeprecationInfo
from sidecar.fast_paths import fast_count_and_observe, fast_inc, fast_observe, observe_many

#: Latency buckets (seconds) from 0.5 ms to 30 s: a local RPC answers in
#: well under a millisecond, a slow third-party API in tens of seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry

        self.build_info = Info(
            "sidecar_build", "Build of the running sidecar.", registry=r
        )
        self.build_info.info({
            "version": __version__,
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        })

        # gRPC server metrics, with the names go-grpc-prometheus made conventional.
        self.grpc_started = Counter(
            "grpc_server_started_total", "RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"], registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=r,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds", "Time to complete an RPC on the server.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total", "Stream messages sent by the server.",
            ["grpc_type", "grpc_service", "grpc_method"], registry=r,
        )
        self.grpc_auth_failures = Counter(
            "sidecar_grpc_auth_failures_total",
            "gRPC calls refused for a missing or wrong API token.", registry=r,
        )

        # Edge and process state.
        self.http_requests = Counter(
            "sidecar_http_requests_total", "HTTP requests answered, by listener and status.",
            ["listener", "code"], registry=r,
        )
        self.ready = Gauge(
            "sidecar_ready", "1 when the sidecar reports ready, else 0.", registry=r,
        )
        self.storage_up = Gauge(
            "sidecar_storage_up", "1 when the storage backend answered its last check.",
            ["backend"], registry=r,
        )
        self.config_reloads = Counter(
            "sidecar_config_reloads_total",
            "Configuration reloads (SIGHUP or file watch), by result (success, failure).",
            ["result"], registry=r,
        )
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self.config_last_reload_success = Gauge(
            "sidecar_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (start-up or reload).",
            registry=r,
        )
        self.config_restart_required = Gauge(
            "sidecar_config_restart_required",
            "1 when the config file changes settings that apply only after a restart.",
            registry=r,
        )

        # Outbound calls (labels: integration and route names from config).
        self.calls = Counter(
            "sidecar_calls_total", "Call RPCs finished, by outcome.",
            ["integration", "route", "outcome"], registry=r,
        )
        self.call_seconds = Histogram(
            "sidecar_call_duration_seconds", "Time spent on a Call, retries included.",
            ["integration", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.attempts = Counter(
            "sidecar_upstream_attempts_total",
            "Upstream HTTP attempts, by status class or transport error.",
            ["integration", "route", "outcome"], registry=r,
        )
        self.attempt_seconds = Histogram(
            "sidecar_upstream_attempt_duration_seconds", "Time of one upstream attempt.",
            ["integration", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.retries = Counter(
            "sidecar_retries_total", "Upstream retries, by what triggered them.",
            ["integration", "route", "reason"], registry=r,
        )
        self.budget_exhausted = Counter(
            "sidecar_retry_budget_exhausted_total",
            "Retries skipped because the integration's retry budget was spent.",
            ["integration"], registry=r,
        )
        self.breaker_state = Gauge(
            "sidecar_circuit_breaker_state",
            "1 for the breaker's current state (closed, open, half_open), else 0.",
            ["integration", "scope", "state"], registry=r,
        )
        self.breaker_transitions = Counter(
            "sidecar_circuit_breaker_transitions_total", "Breaker state changes, by new state.",
            ["integration", "scope", "state"], registry=r,
        )
        self.rate_limited = Counter(
            "sidecar_rate_limited_calls_total",
            "Attempts held by the local rate limit (waited) or refused (rejected).",
            ["integration", "route", "action"], registry=r,
        )
        self.replays = Counter(
            "sidecar_idempotent_replays_total",
            "Calls answered from the idempotency store without calling upstream.",
            ["integration"], registry=r,
        )
        self.deprecated_calls = Counter(
            "sidecar_upstream_deprecated_calls_total",
            "Upstream answers carrying Deprecation or Sunset headers.",
            ["integration", "route"], registry=r,
        )
        self.sunset = Gauge(
            "sidecar_upstream_sunset_timestamp_seconds",
            "Sunset date an upstream announced (Unix seconds).",
            ["integration", "route"], registry=r,
        )
        self.token_requests = Counter(
            "sidecar_upstream_token_requests_total",
            "OAuth2 access token requests to an integration's token endpoint, by result "
            "(ok, error).", ["integration", "result"], registry=r,
        )
        self.token_expiry = Gauge(
            "sidecar_upstream_token_expiry_timestamp_seconds",
            "When the integration's current OAuth2 access token expires (Unix seconds).",
            ["integration"], registry=r,
        )

        # Webhooks and durable delivery.
        self.webhooks_received = Counter(
            "sidecar_webhooks_received_total",
            "Webhooks received, by source and result (accepted, duplicate, invalid_signature, "
            "missing_signature, stale_timestamp, future_timestamp, malformed, too_large, "
            "timeout (the body did not arrive within server.edge.body_timeout: 408), "
            "rate_limited, challenge).",
            ["source", "result"], registry=r,
        )
        self.webhook_ingest_seconds = Histogram(
            "sidecar_webhook_ingest_seconds",
            "Time to verify, de-duplicate and durably store a webhook.",
            ["source"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.deliveries = Counter(
            "sidecar_deliveries_total", "Events handed to durable group members.",
            ["group"], registry=r,
        )
        self.redeliveries = Counter(
            "sidecar_redeliveries_total", "Deliveries after the first (ack timeout or retry).",
            ["group"], registry=r,
        )
        self.acks = Counter(
            "sidecar_acks_total", "Events settled by Ack, by outcome.",
            ["group", "outcome"], registry=r,
        )
        self.oldest_pending = Gauge(
            "sidecar_group_oldest_unacked_age_seconds",
            "Age of the oldest event a durable group has not completed (pending, delivered "
            "or failed).", ["group", "topic"], registry=r,
        )
        self.events_by_status = Gauge(
            "sidecar_group_events",
            "Events per durable group and topic by status (pending, delivered, failed, "
            "completed, dead).",
            ["group", "topic", "status"], registry=r,
        )

        # Queued calls (EnqueueCall).
        self.queued_calls = Gauge(
            "sidecar_queued_calls",
            "Queued calls by integration and state (queued, running, succeeded, failed, "
            "dead, cancelled).", ["integration", "state"], registry=r,
        )
        self.queued_oldest = Gauge(
            "sidecar_queued_call_oldest_due_seconds",
            "How long the oldest due queued call has waited past its due time for its "
            "attempt (0 when none is due): grows when the queue does not drain (rate "
            "limit too low, breaker open, concurrency too small).",
            ["integration"], registry=r,
        )
        self.queued_attempts = Counter(
            "sidecar_queued_call_attempts_total",
            "Attempts of queued calls, by outcome: the answer's status class (2xx, ...), "
            "the error reason of one that got none, or refused (nothing was sent: breaker "
            "open, bulkhead full).", ["integration", "outcome"], registry=r,
        )
        self.queued_takeovers = Counter(
            "sidecar_queued_call_takeovers_total",
            "Queued calls this replica took over because the replica holding them stopped "
            "renewing its lease (it died mid-attempt; Redis backend).", registry=r,
        )
        self.queued_finished = Counter(
            "sidecar_queued_calls_finished_total",
            "Queued calls that finished, by final state (succeeded, failed, dead, "
            "cancelled).", ["integration", "state"], registry=r,
        )

        # Real-time fan-out.
        self.published = Counter(
            "sidecar_events_published_total", "Events published, by topic class "
            "(user, role, broadcast, webhooks, other).", ["topic_class"], registry=r,
        )
        self.live_deliveries = Counter(
            "sidecar_live_deliveries_total", "Events delivered to live subscribers.",
            ["transport"], registry=r,
        )
        self.live_subscribers = Gauge(
            "sidecar_live_subscribers", "Live subscribers connected.", ["transport"], registry=r,
        )
        self.slow_consumers = Counter(
            "sidecar_slow_consumer_events_total",
            "Subscribers that fell behind, by policy (disconnect, drop_oldest).",
            ["transport", "policy"], registry=r,
        )
        self.gaps = Counter(
            "sidecar_subscription_gaps_total", "Gap markers sent, by reason.", ["reason"],
            registry=r,
        )
        self.publish_to_delivery = Histogram(
            "sidecar_publish_to_delivery_seconds", "From publish to hand-off to a subscriber.",
            ["transport"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ws_connections = Gauge(
            "sidecar_websocket_connections", "WebSocket connections open.", registry=r,
        )
        self.ws_auth_failures = Counter(
            "sidecar_websocket_auth_failures_total", "WebSocket connections refused, by reason.",
            ["reason"], registry=r,
        )
        self.resumes = Counter(
            "sidecar_resume_requests_total", "Subscriptions that resumed from a position.",
            ["transport"], registry=r,
        )

        # The sidecar's own spans (only when tracing export is on).
        self.trace_spans = Counter(
            "sidecar_trace_spans_total",
            "Spans by what became of them: exported to the OTLP endpoint, dropped (queue "
            "full) or failed (the endpoint refused them or stayed unreachable).",
            ["result"], registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


BREAKER_STATES = ("closed", "open", "half_open")


#: A label set's counter increment and histogram observation.
_Recorders = tuple[Callable[[], None], Callable[[float], None]]


class CallMetrics:
    """The Call pipeline's observer, recording into ``Metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        # Label children looked up once per label set (names come from config).
        self._calls: dict[tuple[str, str, str], _Recorders] = {}
        self._attempts: dict[tuple[str, str, str], _Recorders] = {}

    def call_finished(self, integration: str, route: str, outcome: str, status: int,
                      attempts: int, duration: float) -> None:
        key = (integration, route, outcome)
        pair = self._calls.get(key)
        if pair is None:
            pair = self._calls[key] = (
                fast_inc(self._m.calls.labels(*key)),
                fast_observe(self._m.call_seconds.labels(integration, route)))
        pair[0]()
        pair[1](duration)

    def attempt_finished(self, integration: str, route: str, outcome: str,
                         duration: float) -> None:
        key = (integration, route, outcome)
        pair = self._attempts.get(key)
        if pair is None:
            pair = self._attempts[key] = (
                fast_inc(self._m.attempts.labels(*key)),
                fast_observe(self._m.attempt_seconds.labels(integration, route)))
        pair[0]()
        pair[1](duration)

    def retried(self, integration: str, route: str, reason: str) -> None:
        self._m.retries.labels(integration, route, reason).inc()

    def budget_exhausted(self, integration: str) -> None:
        self._m.budget_exhausted.labels(integration).inc()

    def rate_limited(self, integration: str, route: str, action: str) -> None:
        self._m.rate_limited.labels(integration, route, action).inc()

    def idempotent_replay(self, integration: str) -> None:
        self._m.replays.labels(integration).inc()

    def deprecation_seen(self, integration: str, route: str, info: DeprecationInfo) -> None:
        self._m.deprecated_calls.labels(integration, route).inc()
        if info.sunset_at is not None:
            self._m.sunset.labels(integration, route).set(info.sunset_at)

    def breaker_changed(self, integration: str, scope: str, state: str, *,
                        initial: bool = False) -> None:
        for s in BREAKER_STATES:
            self._m.breaker_state.labels(integration, scope, s).set(1 if s == state else 0)
        if not initial:
            self._m.breaker_transitions.labels(integration, scope, state).inc()


class TokenMetrics:
    """The OAuth2 token sources' observer, recording into ``Metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def token_requested(self, integration: str, result: str, expires_at: float | None) -> None:
        self._m.token_requests.labels(integration, result).inc()
        if expires_at is not None:
            self._m.token_expiry.labels(integration).set(expires_at)


class EventMetrics:
    """Observer for webhook ingest and durable groups."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def webhook_received(self, source: str, result: str, duration: float) -> None:
        self._m.webhooks_received.labels(source, result).inc()
        if result in ("accepted", "duplicate"):
            self._m.webhook_ingest_seconds.labels(source).observe(duration)

    def delivered(self, group: str, attempt: int) -> None:
        self._m.deliveries.labels(group).inc()
        if attempt > 1:
            self._m.redeliveries.labels(group).inc()

    def acked(self, group: str, outcome: str, count: int) -> None:
        self._m.acks.labels(group, outcome).inc(count)

    def set_oldest_unacked(self, ages: dict[tuple[str, str], float]) -> None:
        self._m.oldest_pending.clear()
        for (group, topic), age in ages.items():
            self._m.oldest_pending.labels(group, topic).set(age)

    def set_group_counts(self, counts: dict[tuple[str, str, str], int]) -> None:
        self._m.events_by_status.clear()
        for (group, topic, status), n in counts.items():
            self._m.events_by_status.labels(group, topic, status).set(n)


class QueueMetrics:
    """Observer of the queue of calls, and its periodic counts."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def attempted(self, integration: str, outcome: str) -> None:
        self._m.queued_attempts.labels(integration, outcome).inc()

    def finished(self, integration: str, state: str) -> None:
        self._m.queued_finished.labels(integration, state).inc()

    def taken_over(self, count: int) -> None:
        self._m.queued_takeovers.inc(count)

    def set_counts(self, counts: dict[tuple[str, str], int],
                   overdue: dict[str, float]) -> None:
        self._m.queued_calls.clear()
        for (integration, state), n in counts.items():
            self._m.queued_calls.labels(integration, state).set(n)
        self._m.queued_oldest.clear()
        for integration, age in overdue.items():
            self._m.queued_oldest.labels(integration).set(age)


class LiveMetrics:
    """Observer for publishing and live fan-out."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        #: Label children looked up once: these run per event and per delivery.
        self._by_transport: dict[str, tuple[Any, Any, _Recorders]] = {}
        self._published: dict[str, Callable[[], None]] = {}

    def published(self, topic_class: str) -> None:
        inc = self._published.get(topic_class)
        if inc is None:
            inc = self._published[topic_class] = fast_inc(self._m.published.labels(topic_class))
        inc()

    def delivered_live(self, transport: str, count: int, latency: float) -> None:
        entry = self._by_transport.get(transport)
        if entry is None:
            deliveries = self._m.live_deliveries.labels(transport)
            histogram = self._m.publish_to_delivery.labels(transport)
            entry = self._by_transport[transport] = (
                deliveries, histogram, (fast_inc(deliveries), fast_observe(histogram)))
        if count == 1:
            entry[2][0]()
            entry[2][1](latency)
        else:
            entry[0].inc(count)
            observe_many(entry[1], latency, count)

    def delivery_recorder(self, transport: str) -> Callable[[float], None]:
        """``delivered_live(transport, 1, latency)`` as one call taking the latency: for
        a subscriber that records each delivery it makes."""
        return fast_count_and_observe(self._m.live_deliveries.labels(transport),
                                      self._m.publish_to_delivery.labels(transport))

    def subscribers_changed(self, transport: str, delta: int) -> None:
        self._m.live_subscribers.labels(transport).inc(delta)

    def slow_consumer(self, transport: str, policy: str) -> None:
        self._m.slow_consumers.labels(transport, policy).inc()

    def gap(self, reason: str) -> None:
        self._m.gaps.labels(reason).inc()

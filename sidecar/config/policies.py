"""The operator's config, translated into the policies core works with.

Core (``sidecar/core``) never imports this package: it declares the settings it needs
as its own types, and this module is the one place that builds them from the loaded
config, at start-up and on every reload.
"""

from __future__ import annotations

from sidecar.config.model import (
    ApiVersionConfig,
    BreakerConfig,
    Config,
    FallbackConfig,
    IntegrationConfig,
    QueueConfig,
    RetryConfig,
    RouteConfig,
    TimeoutsConfig,
    WebhooksConfig,
    WebhookSourceConfig,
)
from sidecar.core.calls.policy import (
    ApiVersion,
    BreakerSettings,
    FallbackPolicy,
    IntegrationSpec,
    RetryPolicy,
    RouteSpec,
    Timeouts,
)
from sidecar.core.calls.queue.models import QueuePolicy
from sidecar.core.webhooks.ingest import WebhookSettings, WebhookSource
from sidecar.core.webhooks.schemes import SchemeConfig


def scheme_config(source: WebhookSourceConfig) -> SchemeConfig:
    """How one source's signatures are verified."""
    return SchemeConfig(
        scheme=source.scheme, secrets=tuple(s.value for s in source.secrets),
        tolerance=source.tolerance, algorithm=source.algorithm,
        signature_header=source.signature_header, encoding=source.encoding,
        prefix=source.prefix, signed_content=source.signed_content,
        timestamp_header=source.timestamp_header, id_header=source.id_header,
        event_id_header=source.event_id_header, event_id_path=source.event_id_path,
        event_type_header=source.event_type_header, event_type_path=source.event_type_path,
    )


def webhook_settings(config: WebhooksConfig) -> WebhookSettings:
    """Every configured webhook source, as ingest sees it."""
    return WebhookSettings(
        sources={name: WebhookSource(name=src.name, topic=src.topic_name,
                                     max_body_bytes=src.max_body_bytes,
                                     scheme=scheme_config(src))
                 for name, src in config.sources.items()},
        retention=config.retention,
    )


def integration_specs(config: Config) -> dict[str, IntegrationSpec]:
    """Every configured integration, with its routes, as the Call path sees it."""
    return {name: integration_spec(cfg, [r for r in config.routes if r.integration == name])
            for name, cfg in config.integrations.items()}


def integration_spec(cfg: IntegrationConfig, routes: list[RouteConfig]) -> IntegrationSpec:
    auth = cfg.auth
    return IntegrationSpec(
        name=cfg.name, base_url=cfg.base_url, timeouts=_timeouts(cfg.timeouts),
        retry=_retry(cfg.retry), breaker=_breaker(cfg.circuit_breaker),
        fallback=_fallback(cfg.fallback), api_version=_api_version(cfg.api_version),
        headers=cfg.headers, auth_header=auth.header, static_auth=auth.static_value(),
        fetched_auth=auth.oauth2 is not None, idempotency_header=cfg.idempotency.header,
        idempotency_retention=cfg.idempotency.retention,
        max_request_bytes=cfg.max_request_bytes, retry_budget=cfg.retry_budget,
        rate_limit=cfg.rate_limit, bulkhead_limit=cfg.bulkhead.max_concurrent,
        bulkhead_max_wait=cfg.bulkhead.max_wait,
        routes=tuple(_route(r) for r in routes),
        signing_secrets=(() if cfg.signing is None
                         else tuple(secret.value for secret in cfg.signing.secrets)),
        # The transport and the OAuth2 token source are built from the whole config
        # (TLS files, token endpoint); comparing it tells a reload what changed.
        source=cfg,
    )


def _route(r: RouteConfig) -> RouteSpec:
    return RouteSpec(
        name=r.name, method=r.method, path=r.path,
        timeouts=_timeouts(r.timeouts) if r.timeouts else None,
        retry=_retry(r.retry) if r.retry else None,
        breaker=_breaker(r.circuit_breaker) if r.circuit_breaker else None,
        rate_limit=r.rate_limit, fallback=_fallback(r.fallback) if r.fallback else None,
        unlimited=r.unlimited)


def _timeouts(t: TimeoutsConfig) -> Timeouts:
    return Timeouts(connect=t.connect, attempt=t.attempt, total=t.total)


def _retry(r: RetryConfig) -> RetryPolicy:
    return RetryPolicy(max_attempts=r.max_attempts, backoff=r.backoff, on_status=r.on_status,
                       on_errors=r.on_errors, honor_retry_after=r.honor_retry_after)


def _breaker(b: BreakerConfig) -> BreakerSettings:
    return BreakerSettings(enabled=b.enabled, policy=b.policy,
                           failure_statuses=b.failure_statuses)


def _fallback(f: FallbackConfig) -> FallbackPolicy:
    return FallbackPolicy(enabled=f.enabled, max_age=f.max_age, max_entries=f.max_entries)


def _api_version(v: ApiVersionConfig) -> ApiVersion:
    return ApiVersion(version=v.version, location=v.location, header=v.header)


def queue_policy(cfg: QueueConfig) -> QueuePolicy:
    """How an integration's queued calls are attempted."""
    return QueuePolicy(schedule=cfg.schedule, jitter=cfg.jitter, max_age=cfg.max_age,
                       concurrency=cfg.concurrency, retryable_4xx=cfg.retryable_4xx)

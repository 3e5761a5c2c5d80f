"""What the Call path needs to know of an integration and its routes: core's own policy
types. The config adapter (``policies`` in the config package) builds them from the
operator's file at start-up and on every reload; nothing here reads a config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.core.resilience.backoff import BackoffPolicy
from sidecar.core.resilience.breaker import BreakerPolicy
from sidecar.core.resilience.rate_limit import RateLimitPolicy
from sidecar.core.resilience.retry_budget import RetryBudgetPolicy


@dataclass(frozen=True)
class Timeouts:
    """Seconds: ``connect`` and ``attempt`` bound one upstream try, ``total`` the call."""

    connect: float
    attempt: float
    total: float


@dataclass(frozen=True)
class RetryPolicy:
    #: Attempts in all, the first included (1 = never retry).
    max_attempts: int
    backoff: BackoffPolicy
    #: Upstream statuses worth another attempt.
    on_status: frozenset[int]
    #: Transport error kinds worth another attempt (``connect``, ``reset``, ...).
    on_errors: frozenset[str]
    #: Wait what Retry-After / RateLimit-Reset say when it fits the deadline.
    honor_retry_after: bool


@dataclass(frozen=True)
class BreakerSettings:
    enabled: bool
    policy: BreakerPolicy
    #: Upstream statuses that count as failures (transport errors always do).
    failure_statuses: frozenset[int]


@dataclass(frozen=True)
class FallbackPolicy:
    #: Answer a GET from the last good response while the breaker is open.
    enabled: bool
    #: Seconds a last good response may be served for.
    max_age: float
    max_entries: int


@dataclass(frozen=True)
class ApiVersion:
    #: The pinned version; empty: none is sent.
    version: str
    #: ``header`` (sent in ``header``) or ``path`` (prefixed to the path).
    location: str
    header: str


@dataclass(frozen=True)
class RouteSpec:
    """Per-route overrides, matched by method (``*``: any) and path pattern; each
    override None inherits the integration's."""

    name: str
    method: str
    path: str
    timeouts: Timeouts | None = None
    retry: RetryPolicy | None = None
    #: A route with its own breaker trips independently of the integration's.
    breaker: BreakerSettings | None = None
    #: A route with its own rate limit has its own bucket.
    rate_limit: RateLimitPolicy | None = None
    fallback: FallbackPolicy | None = None
    #: Never rate limited, whatever the integration's limit.
    unlimited: bool = False


@dataclass(frozen=True)
class IntegrationSpec:
    """One configured upstream, as the Call path sees it."""

    name: str
    base_url: str
    timeouts: Timeouts
    retry: RetryPolicy
    breaker: BreakerSettings
    fallback: FallbackPolicy
    api_version: ApiVersion
    #: Default headers every call sends (the caller's override them).
    headers: tuple[tuple[str, str], ...] = ()
    #: The header credentials go in; empty: no credentials.
    auth_header: str = ""
    #: The header value of a credential that never changes (bearer, API key, Basic).
    static_auth: str | None = field(default=None, repr=False)
    #: Credentials are fetched at run time (OAuth2) from the credential factory.
    fetched_auth: bool = False
    idempotency_header: str = "Idempotency-Key"
    #: Seconds a completed idempotency key is remembered.
    idempotency_retention: float = 24 * 3600.0
    max_request_bytes: int = 4 * 1024 * 1024
    #: None: no budget.
    retry_budget: RetryBudgetPolicy | None = None
    #: None: no local rate limit.
    rate_limit: RateLimitPolicy | None = None
    bulkhead_limit: int = 100
    #: Seconds a call may wait for a bulkhead slot; None: until its deadline.
    bulkhead_max_wait: float | None = None
    routes: tuple[RouteSpec, ...] = ()
    #: ``whsec_`` secrets that sign every request (Standard Webhooks); empty: unsigned.
    signing_secrets: tuple[str, ...] = field(default=(), repr=False)
    #: What the adapter built this from, handed back to the transport and credential
    #: factories, and compared on reload (so a change the Call path does not read
    #: itself, such as TLS files, still builds a new transport).
    source: object = field(default=None, repr=False)

"""Building the Call path: for each integration, one stack of layers per route, in this
order (outermost first):

deadline -> idempotency -> fallback -> deprecation -> retry (+ budget) -> rate limit
-> circuit breaker -> credentials -> bulkhead -> signing -> transport

Why this order: the deadline bounds everything, claims included. A replayed key must
not spend anything, so idempotency comes before the rest; fallback answers only when
the breaker refused and nothing went out, which it sees as a refusal from within.
Retry is outside the per-attempt layers, so that every attempt waits for a token, asks
the breaker and takes a bulkhead slot; credentials are fetched only for an attempt the
breaker lets through, and before a bulkhead slot is held. A layer that is not
configured (no rate limit, no breaker, static credentials) is not in the stack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.clock import Clock
from sidecar.core.calls.context import Handler, Layer, compose
from sidecar.core.calls.credentials import CredentialFactory, CredentialSource
from sidecar.core.calls.layers.breaker import BreakerLayer
from sidecar.core.calls.layers.bulkhead import BulkheadLayer
from sidecar.core.calls.layers.credentials import CredentialsLayer
from sidecar.core.calls.layers.deadline import DeadlineLayer
from sidecar.core.calls.layers.deprecation import DeprecationLayer
from sidecar.core.calls.layers.fallback import FallbackLayer, LastGoodCache
from sidecar.core.calls.layers.idempotency import IdempotencyLayer
from sidecar.core.calls.layers.rate_limit import DrainLayer, RateLimitLayer
from sidecar.core.calls.layers.retry import RetryLayer
from sidecar.core.calls.layers.signing import SigningLayer, signing_keys
from sidecar.core.calls.layers.transport import TransportLayer
from sidecar.core.calls.models import Transport
from sidecar.core.calls.observer import CallObserver
from sidecar.core.calls.paths import route_matches
from sidecar.core.calls.policy import (
    BreakerSettings,
    FallbackPolicy,
    IntegrationSpec,
    RetryPolicy,
    RouteSpec,
    Timeouts,
)
from sidecar.core.idempotency import IdempotencyStore
from sidecar.core.resilience import CircuitBreaker, RetryBudget
from sidecar.core.resilience.bulkhead import Bulkhead
from sidecar.core.resilience.rate_limit import RateLimiter, RateLimitPolicy

log = logging.getLogger("sidecar.calls")

#: Builds the rate limiter for an integration (or ``integration/route``): a local
#: bucket, or one every replica shares.
RateLimiterFactory = Callable[[str, RateLimitPolicy], RateLimiter]


class Closable(Protocol):
    async def close(self) -> None: ...


@dataclass
class Route:
    """A built stack, and what status pages read of it."""

    name: str
    run: Handler
    breaker: CircuitBreaker | None
    #: The layers' names, outermost first (the transport last).
    layers: tuple[str, ...] = ()
    #: One attempt of a queued call: its retries are the queue's schedule, its rate
    #: limit a wait, not a refusal (see ``queued``).
    queued: Handler | None = None


@dataclass
class Integration:
    spec: IntegrationSpec
    transport: Transport
    default: Route
    routes: list[tuple[RouteSpec, Route]]
    credentials: CredentialSource | None = None
    #: Calls running on it; a retired integration closes its transport at zero.
    active: int = 0
    retired: bool = False

    def match(self, method: str, path: str) -> Route:
        """The first route whose method and pattern match ``path`` as it is sent."""
        for spec, route in self.routes:
            if spec.method in ("*", method) and route_matches(spec.path, path):
                return route
        return self.default

    def parts(self) -> list[Closable]:
        """What holds connections, to close when the integration goes."""
        return [self.transport] if self.credentials is None else [self.transport,
                                                                  self.credentials]

    def breakers(self) -> Iterator[CircuitBreaker]:
        for route in (self.default, *(r for _, r in self.routes)):
            if route.breaker is not None:
                yield route.breaker


@dataclass
class _Shared:
    """What the routes of one integration share unless they override it."""

    spec: IntegrationSpec
    transport: Transport
    budget: RetryBudget | None
    bulkhead: Bulkhead
    credentials: CredentialSource | None
    #: HMAC keys that sign every request (empty: unsigned).
    signing: tuple[bytes, ...] = ()
    deprecations_logged: set[str] = field(default_factory=set)


class StackBuilder:
    def __init__(self, store: IdempotencyStore, clock: Clock, observer: CallObserver,
                 rand: Callable[[], float], limiter: RateLimiterFactory,
                 credentials: CredentialFactory | None) -> None:
        self._store = store
        self._clock = clock
        self._observer = observer
        self._rand = rand
        self._limiter = limiter
        self._credentials = credentials

    def integration(self, spec: IntegrationSpec, transport: Transport) -> Integration:
        credentials: CredentialSource | None = None
        if spec.fetched_auth:
            if self._credentials is None:
                raise ValueError(f"integration {spec.name!r} fetches its credentials but "
                                 "the pipeline was built without a credential factory")
            credentials = self._credentials(spec)
        shared = _Shared(
            spec, transport,
            RetryBudget(spec.retry_budget, self._clock) if spec.retry_budget else None,
            Bulkhead(spec.bulkhead_limit, self._clock, name=spec.name), credentials,
            signing_keys(spec.signing_secrets))
        breaker = self._breaker(spec.name, "", spec.breaker)
        bucket = self._limiter(spec.name, spec.rate_limit) if spec.rate_limit else None
        cache = _cache(spec.fallback)
        default = self._route(shared, "", spec.timeouts, spec.retry, breaker,
                              spec.breaker.failure_statuses, bucket, cache)
        routes = []
        for r in spec.routes:
            own = r.breaker is not None
            settings = r.breaker or spec.breaker
            routes.append((r, self._route(
                shared, r.name, r.timeouts or spec.timeouts, r.retry or spec.retry,
                self._breaker(spec.name, r.name, settings) if own else breaker,
                settings.failure_statuses,
                None if r.unlimited
                else self._limiter(f"{spec.name}/{r.name}", r.rate_limit) if r.rate_limit
                else bucket,
                _cache(r.fallback) if r.fallback else cache)))
        return Integration(spec, transport, default, routes, credentials)

    def _route(self, shared: _Shared, name: str, timeouts: Timeouts, retry: RetryPolicy,
               breaker: CircuitBreaker | None, failure_statuses: frozenset[int],
               bucket: RateLimiter | None, cache: LastGoodCache | None) -> Route:
        spec, clock, observer = shared.spec, self._clock, self._observer
        layers: list[Layer] = [
            DeadlineLayer(timeouts.total, clock),
            IdempotencyLayer(self._store, clock, observer, spec.name,
                             total_timeout=timeouts.total,
                             retention=spec.idempotency_retention),
        ]
        if cache is not None:
            layers.append(FallbackLayer(cache, clock))
        layers += [
            DeprecationLayer(observer, spec.name, name, shared.deprecations_logged),
            RetryLayer(retry, shared.budget, clock, self._rand, observer, spec.name, name),
        ]
        if bucket is not None:
            layers.append(RateLimitLayer(bucket, clock, observer, spec.name, name))
        if breaker is not None:
            layers.append(BreakerLayer(breaker, failure_statuses))
        if shared.credentials is not None:
            layers.append(CredentialsLayer(shared.credentials, spec.auth_header, spec.name,
                                           name))
        layers.append(BulkheadLayer(shared.bulkhead, spec.bulkhead_max_wait, clock))
        if shared.signing:
            layers.append(SigningLayer(shared.signing, clock))
        terminal = TransportLayer(shared.transport, timeouts, clock, observer, spec.name, name)
        return Route(name, compose(layers, terminal), breaker,
                     tuple(type(layer).__name__ for layer in (*layers, terminal)),
                     self._queued(shared, name, timeouts, breaker, failure_statuses, bucket,
                                  terminal))

    def _queued(self, shared: _Shared, name: str, timeouts: Timeouts,
                breaker: CircuitBreaker | None, failure_statuses: frozenset[int],
                bucket: RateLimiter | None, terminal: TransportLayer) -> Handler:
        """The stack of one queued attempt: drain (wait for a rate-limit token as long as
        it takes) -> deadline -> deprecation -> breaker -> credentials -> bulkhead ->
        transport. No retry layer (the queue reschedules), no idempotency claim (the
        queue de-duplicates on enqueue; the key still goes upstream as a header), no
        fallback (a stale answer is no outcome for work that must happen)."""
        spec, clock, observer = shared.spec, self._clock, self._observer
        layers: list[Layer] = []
        if bucket is not None:
            layers.append(DrainLayer(bucket, clock, observer, spec.name, name))
        layers += [DeadlineLayer(timeouts.total, clock),
                   DeprecationLayer(observer, spec.name, name, shared.deprecations_logged)]
        if breaker is not None:
            layers.append(BreakerLayer(breaker, failure_statuses))
        if shared.credentials is not None:
            layers.append(CredentialsLayer(shared.credentials, spec.auth_header, spec.name,
                                           name))
        layers.append(BulkheadLayer(shared.bulkhead, spec.bulkhead_max_wait, clock))
        if shared.signing:
            layers.append(SigningLayer(shared.signing, clock))
        return compose(layers, terminal)

    def _breaker(self, integration: str, scope: str,
                 settings: BreakerSettings) -> CircuitBreaker | None:
        if not settings.enabled:
            return None
        breaker = CircuitBreaker(settings.policy, self._clock,
                                 name=f"{integration}/{scope}" if scope else integration)
        observer = self._observer

        def changed(old: object, new: object) -> None:
            state = str(getattr(new, "value", new))
            log.warning("circuit breaker %s", state, extra={
                "integration": integration, "route": scope, "breaker_state": state})
            observer.breaker_changed(integration, scope, state)

        breaker.on_transition(changed)
        observer.breaker_changed(integration, scope, breaker.state.value, initial=True)
        return breaker


def _cache(policy: FallbackPolicy) -> LastGoodCache | None:
    return LastGoodCache(policy.max_entries, policy.max_age) if policy.enabled else None

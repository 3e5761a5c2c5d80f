"""The Call pipeline: one resilient HTTP exchange with a configured integration.

auth -> API version -> idempotency -> per attempt [rate limit -> circuit
breaker -> bulkhead -> timeout -> transport] inside tenacity retries (backoff
with full jitter, Retry-After, retry budget, deadline) -> classification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from sidecar.clock import Clock
from sidecar.config import (
    Config,
    FallbackConfig,
    IntegrationConfig,
    RetryConfig,
    RouteConfig,
    TimeoutsConfig,
)
from sidecar.core.calls.credentials import CredentialFactory, CredentialSource
from sidecar.core.calls.fallback import LastGoodCache
from sidecar.core.calls.models import (
    CallRequest,
    CallResult,
    DeprecationInfo,
    TransportError,
    TransportErrorKind,
    UpstreamRequest,
    UpstreamResponse,
)
from sidecar.core.calls.observer import CallObserver, NullObserver
from sidecar.core.calls.paths import build_url, route_matches, safe_path
from sidecar.core.calls.stored import decode_result, encode_result, fingerprint
from sidecar.core.idempotency import ClaimStatus, IdempotencyStore
from sidecar.core.resilience import (
    BreakerOpenError,
    CircuitBreaker,
    RateLimitedError,
    RetryBudget,
    TokenBucket,
    backoff_delay,
    parse_deprecation,
    parse_link_rel,
    parse_rate_limit_reset,
    parse_retry_after,
    parse_sunset,
    safe_link,
)
from sidecar.core.resilience.breaker import Permit
from sidecar.core.resilience.bulkhead import Bulkhead, BulkheadFullError
from sidecar.core.resilience.rate_limit import RateLimiter, RateLimitPolicy
from sidecar.core.spans import KIND_CLIENT, AttributeValue, Span
from sidecar.core.tracing import TRACEPARENT, TRACESTATE, TraceContext, new_span_id, new_trace
from sidecar.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SidecarError,
    Unavailable,
    UpstreamAuthFailed,
)

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger("sidecar.calls")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: RFC 9110 idempotent methods: safe to retry without a key.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "connection", "keep-alive", "proxy-authenticate", "proxy-connection",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
})
#: Set by the sidecar on each attempt from the call's trace, never by the caller.
TRACE_HEADERS = frozenset({TRACEPARENT, TRACESTATE})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What a header value may not hold (RFC 9110: visible characters, space, tab).
_CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: An API version (a header value or a path prefix) is short.
MAX_API_VERSION = 100
#: An abandoned in-flight idempotency claim (crashed sidecar) frees up this
#: long after the call's total timeout.
CLAIM_MARGIN = 30.0
MAX_HEADERS = 100
#: Attempt outcomes by status class, made once rather than formatted per attempt.
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


class Transport(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def close(self) -> None: ...


class _Closable(Protocol):
    async def close(self) -> None: ...


TransportFactory = Callable[[IntegrationConfig], Transport]
#: Builds the rate limiter for an integration (or ``integration/route``):
#: a local bucket, or one every replica shares.
RateLimiterFactory = Callable[[str, RateLimitPolicy], RateLimiter]


@dataclass
class _Policy:
    """What applies to one route (or the integration's defaults)."""

    name: str
    timeouts: TimeoutsConfig
    retry: RetryConfig
    breaker: CircuitBreaker | None
    failure_statuses: frozenset[int]
    bucket: RateLimiter | None
    fallback: FallbackConfig
    cache: LastGoodCache | None


@dataclass
class _Integration:
    config: IntegrationConfig
    transport: Transport
    default: _Policy
    routes: list[tuple[RouteConfig, _Policy]]
    budget: RetryBudget | None
    bulkhead: Bulkhead
    #: The auth header of a static kind (bearer, API key, Basic), built once.
    static_auth: str | None = None
    #: Where each attempt's auth header comes from when it changes (OAuth2).
    credentials: CredentialSource | None = None
    #: The routes it was built with, to tell on reload whether anything changed.
    route_configs: tuple[RouteConfig, ...] = ()
    deprecations_logged: set[str] = field(default_factory=set)
    #: Calls running on it; a retired integration closes its transport at zero.
    active: int = 0
    retired: bool = False

    def match(self, method: str, path: str) -> _Policy:
        if not self.routes:
            return self.default
        norm = "/" + path.lstrip("/")
        for route, policy in self.routes:
            if route.method in ("*", method) and route_matches(route.path, norm):
                return policy
        return self.default

    def parts(self) -> list[_Closable]:
        """What holds connections, to close when the integration goes."""
        return [self.transport] if self.credentials is None else [self.transport,
                                                                  self.credentials]


@dataclass(frozen=True)
class IntegrationChanges:
    """What a reconfiguration did, by integration name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(slots=True)
class _Attempts:
    """State shared by the attempts of one call."""

    deadline: float
    trace: TraceContext
    attempts: int = 0
    last_response: UpstreamResponse | None = None
    last_retry_reason: str = ""
    #: Parent span id sent with the latest attempt (each attempt is a new hop).
    span_id: str = ""
    #: The Call's span when the trace is recorded (see ``CallRequest.span``).
    span: Span | None = None
    #: The fetched credential the latest attempt sent (OAuth2 only).
    credential: str = ""
    #: A 401 already made the call fetch a new credential (once per call, no loop).
    reauthorized: bool = False
    #: How the latest attempt that went out failed without an answer, if it did.
    last_failure: TransportError | None = None
    #: Whether the upstream may have received the request, over every attempt so far:
    #: ``no``, ``maybe`` or ``yes`` (see ``REACHED``).
    reached: str = "no"

    def went_out(self, outcome: UpstreamResponse | TransportError) -> None:
        """Record an attempt's outcome: an answer, or a failure without one."""
        if isinstance(outcome, TransportError):
            self.last_failure = outcome
            reached = _REACHED_BY_FAILURE.get(outcome.kind, "maybe")
        else:
            self.last_response = outcome
            self.last_failure = None
            reached = "yes"
        if REACHED.index(reached) > REACHED.index(self.reached):
            self.reached = reached

    def annotate(self, error: SidecarError) -> None:
        """What every Call error says of its attempts, so that a caller knows whether
        trying again (or elsewhere) can repeat a side effect."""
        error.metadata["attempts"] = str(self.attempts)
        error.metadata["upstream_reached"] = self.reached


#: ``upstream_reached`` values, from sure-not to sure.
REACHED = ("no", "maybe", "yes")
#: A failure without an answer, and whether the request may have arrived: a refused
#: connection or a failed TLS handshake sent nothing; a reset, a timeout or a
#: malformed answer may have come after the upstream read (and acted on) the request;
#: a body over the limit came after an answer's headers.
_REACHED_BY_FAILURE = {
    TransportErrorKind.CONNECT: "no", TransportErrorKind.TLS: "no",
    TransportErrorKind.RESET: "maybe", TransportErrorKind.TIMEOUT: "maybe",
    TransportErrorKind.PROTOCOL: "maybe", TransportErrorKind.TOO_LARGE: "yes",
}


class CallPipeline:
    def __init__(
        self,
        config: Config,
        storage: IdempotencyStore,
        transport_factory: TransportFactory,
        clock: Clock,
        *,
        observer: CallObserver | None = None,
        rand: Callable[[], float] = random.random,
        rate_limiter: RateLimiterFactory | None = None,
        credentials: CredentialFactory | None = None,
    ) -> None:
        self._storage = storage
        self._credentials = credentials
        self._limiter: RateLimiterFactory = rate_limiter or (
            lambda name, policy: TokenBucket(policy, clock))
        self._clock = clock
        self._observer: CallObserver = observer or NullObserver()
        self._rand = rand
        self._transport_factory = transport_factory
        self._integrations: dict[str, _Integration] = {}
        self._closing: set[asyncio.Task[None]] = set()
        for name, icfg in config.integrations.items():
            routes = [r for r in config.routes if r.integration == name]
            self._integrations[name] = self._build(icfg, routes, transport_factory(icfg))

    def _keeps(self, config: Config, name: str) -> bool:
        old = self._integrations.get(name)
        routes = tuple(r for r in config.routes if r.integration == name)
        return (old is not None and old.config == config.integrations[name]
                and old.route_configs == routes)

    def transports_for(self, config: Config) -> dict[str, Transport]:
        """Transports for the integrations ``reconfigure(config)`` will build.

        Construction only, so it may run in a worker thread: an HTTPS transport
        loads the CA bundle (tens of milliseconds each), which must not stall
        the event loop during a reload.
        """
        return {name: self._transport_factory(icfg) for name, icfg in config.integrations.items()
                if not self._keeps(config, name)}

    def reconfigure(self, config: Config,
                    transports: Mapping[str, Transport] | None = None) -> IntegrationChanges:
        """Swap in ``config``'s integrations for new calls.

        An integration whose config and routes are unchanged keeps everything
        (breaker state, rate-limit bucket, retry budget, bulkhead, fallback
        cache, connection pool). An added or changed one is built new (with a
        transport from ``transports`` when given); a changed or removed one is
        retired: calls already running finish on it, then its connections
        close. Raises (and changes nothing) if building fails.
        """
        spare = dict(transports or {})
        fresh: dict[str, _Integration] = {}
        added: list[str] = []
        changed: list[str] = []
        try:
            for name, icfg in config.integrations.items():
                if self._keeps(config, name):
                    fresh[name] = self._integrations[name]
                    continue
                (added if name not in self._integrations else changed).append(name)
                routes = [r for r in config.routes if r.integration == name]
                transport = spare.pop(name, None) or self._transport_factory(icfg)
                fresh[name] = self._build(icfg, routes, transport)
        except BaseException:
            for name in (*added, *changed):
                if name in fresh:
                    self._close_soon(*fresh[name].parts())
            raise
        finally:
            for transport in spare.values():
                self._close_soon(transport)
        removed = [name for name in self._integrations if name not in fresh]
        retired = [self._integrations[n] for n in (*changed, *removed)]
        self._integrations = fresh
        for integ in retired:
            integ.retired = True
            if not integ.active:
                self._close_soon(*integ.parts())
        return IntegrationChanges(tuple(added), tuple(removed), tuple(changed))

    def _close_soon(self, *parts: _Closable) -> None:
        for part in parts:
            task = asyncio.ensure_future(part.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # ------------------------------------------------------------------ building

    def _breaker(self, integration: str, scope: str,
                 cfg: IntegrationConfig | RouteConfig) -> CircuitBreaker | None:
        bc = cfg.circuit_breaker
        if bc is None or not bc.enabled:
            return None
        breaker = CircuitBreaker(bc.policy, self._clock,
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

    def _build(self, cfg: IntegrationConfig, routes: list[RouteConfig],
               transport: Transport) -> _Integration:
        base_breaker = self._breaker(cfg.name, "", cfg)
        base_bucket = (self._limiter(cfg.name, cfg.rate_limit) if cfg.rate_limit else None)

        def cache(fb: FallbackConfig) -> LastGoodCache | None:
            return LastGoodCache(fb.max_entries, fb.max_age) if fb.enabled else None

        default = _Policy("", cfg.timeouts, cfg.retry, base_breaker,
                          cfg.circuit_breaker.failure_statuses, base_bucket, cfg.fallback,
                          cache(cfg.fallback))
        built: list[tuple[RouteConfig, _Policy]] = []
        for r in routes:
            fallback = r.fallback or cfg.fallback
            breaker = self._breaker(cfg.name, r.name, r) if r.circuit_breaker else base_breaker
            built.append((r, _Policy(
                name=r.name,
                timeouts=r.timeouts or cfg.timeouts,
                retry=r.retry or cfg.retry,
                breaker=breaker,
                failure_statuses=(r.circuit_breaker or cfg.circuit_breaker).failure_statuses,
                bucket=(None if r.unlimited
                        else self._limiter(f"{cfg.name}/{r.name}", r.rate_limit) if r.rate_limit
                        else base_bucket),
                fallback=fallback,
                cache=cache(fallback) if r.fallback else default.cache,
            )))
        credentials: CredentialSource | None = None
        if cfg.auth.oauth2 is not None:
            if self._credentials is None:
                raise ValueError(f"integration {cfg.name!r} uses OAuth2 but the pipeline "
                                 "was built without a credential factory")
            credentials = self._credentials(cfg)
        return _Integration(
            config=cfg, transport=transport, default=default, routes=built,
            budget=RetryBudget(cfg.retry_budget, self._clock) if cfg.retry_budget else None,
            bulkhead=Bulkhead(cfg.bulkhead.max_concurrent, self._clock, name=cfg.name),
            static_auth=cfg.auth.static_value(), credentials=credentials,
            route_configs=tuple(routes),
        )

    def breakers(self) -> Mapping[str, CircuitBreaker]:
        """Every breaker by ``integration`` or ``integration/route``, for status pages."""
        out: dict[str, CircuitBreaker] = {}
        for integ in self._integrations.values():
            for policy in [integ.default, *(p for _, p in integ.routes)]:
                if policy.breaker is not None:
                    out[policy.breaker.name] = policy.breaker
        return out

    async def close(self) -> None:
        await asyncio.gather(*(part.close() for i in self._integrations.values()
                               for part in i.parts()),
                             *self._closing, return_exceptions=True)

    # ------------------------------------------------------------------ the call

    async def call(self, req: CallRequest) -> CallResult:
        start = self._clock.monotonic()
        state = _Attempts(start, req.trace or new_trace(), span=req.span)
        integ = self._integrations.get(req.integration)
        if integ is None:
            error: SidecarError = InvalidArgument.of("integration", "is required")
            if req.integration:
                error = NotFound(f"integration {req.integration!r} is not configured",
                                 reason="INTEGRATION_NOT_FOUND",
                                 metadata={"integration": req.integration})
            state.annotate(error)
            raise error
        integ.active += 1
        try:
            return await self._call(req, integ, start, state)
        except SidecarError as exc:
            state.annotate(exc)
            raise
        finally:
            integ.active -= 1
            if integ.retired and not integ.active:
                self._close_soon(*integ.parts())

    async def _call(self, req: CallRequest, integ: _Integration, start: float,
                    state: _Attempts) -> CallResult:
        method = (req.method or "GET").upper()
        self._validate(req, method, integ.config)
        cfg = integ.config
        version = req.api_version or cfg.api_version.version
        url = build_url(cfg.base_url, req.path, req.query,
                        version if cfg.api_version.location == "path" else "")
        # Routes match the path as it is sent (dot segments resolved), not as written.
        policy = integ.match(method, safe_path(req.path))
        deadline = start + policy.timeouts.total
        if req.deadline is not None:
            deadline = min(deadline, req.deadline)
        state.deadline = deadline
        trace = state.trace
        headers = self._headers(req, integ, version, trace)
        outcome = "error"
        result: CallResult | None = None
        try:
            if req.idempotency_key:
                result = await self._with_key(req, integ, policy, method, url, headers,
                                              state, start)
            else:
                result = await self._execute(req, integ, policy, method, url, headers,
                                             state, start)
            outcome = _outcome(result)
            return result
        except SidecarError as exc:
            outcome = exc.reason
            raise
        finally:
            duration = self._clock.monotonic() - start
            status = result.status if result else 0
            attempts = state.attempts
            self._observer.call_finished(cfg.name, policy.name, outcome, status, attempts,
                                         duration)
            if req.span is not None:
                req.span.attributes.update({"sidecar.route": policy.name,
                                            "sidecar.call.outcome": outcome,
                                            "sidecar.call.attempts": attempts})
            if log.isEnabledFor(logging.INFO):
                log.info("call finished", extra={
                    "integration": cfg.name, "route": policy.name, "method": method,
                    "outcome": outcome, "status": status, "attempts": attempts,
                    "latency_ms": round(duration * 1000, 1), "trace_id": trace.trace_id,
                })

    def _validate(self, req: CallRequest, method: str, cfg: IntegrationConfig) -> None:
        problems: list[FieldViolation] = []
        if method not in METHODS:
            problems.append(FieldViolation("method", f"must be one of {', '.join(sorted(METHODS))}"
                                                     f"; got {req.method!r}"))
        if len(req.headers) > MAX_HEADERS:
            problems.append(FieldViolation("headers", f"at most {MAX_HEADERS} headers"))
        for i, (name, value) in enumerate(req.headers):
            if not _TOKEN.match(name):
                problems.append(FieldViolation(f"headers[{i}].name",
                                               f"invalid header name {name!r}"))
            elif name.lower() in FORBIDDEN_HEADERS:
                problems.append(FieldViolation(f"headers[{i}].name",
                                               f"{name} is set by the sidecar, not the caller"))
            if _CONTROL_IN_VALUE.search(value):
                problems.append(FieldViolation(f"headers[{i}].value",
                                               "must not contain control characters (CR, LF, "
                                               "NUL, ...); a tab is allowed"))
        for i, (name, _) in enumerate(req.query):
            if not name:
                problems.append(FieldViolation(f"query[{i}].name", "is required"))
        if len(req.body) > cfg.max_request_bytes:
            problems.append(FieldViolation(
                "body", f"{len(req.body)} bytes is over the integration's limit of "
                        f"{cfg.max_request_bytes}"))
        if len(req.api_version) > MAX_API_VERSION or _CONTROL.search(req.api_version):
            problems.append(FieldViolation("api_version", f"at most {MAX_API_VERSION} "
                                                          "characters, no control characters"))
        if req.idempotency_key and not _KEY.match(req.idempotency_key):
            problems.append(FieldViolation("idempotency_key",
                                           "must be 1-255 printable ASCII characters"))
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems),
                                  violations=problems)

    def _headers(self, req: CallRequest, integ: _Integration, version: str,
                 trace: TraceContext) -> tuple[tuple[str, str], ...]:
        """Headers every attempt sends; ``traceparent`` (and a fetched credential) is
        added per attempt."""
        cfg = integ.config
        auth = cfg.auth
        if not (cfg.headers or req.headers or trace.tracestate or req.idempotency_key
                or integ.static_auth is not None
                or (version and cfg.api_version.location == "header")):
            return ()  # the common case: nothing to merge
        reserved = TRACE_HEADERS | {auth.header.lower()} if auth.header else TRACE_HEADERS
        out = [(k, v) for k, v in cfg.headers if k.lower() not in TRACE_HEADERS]
        overridden = {k.lower() for k, _ in req.headers}
        out = [(k, v) for k, v in out if k.lower() not in overridden]
        out += [(k, v) for k, v in req.headers if k.lower() not in reserved]
        if trace.tracestate:
            out.append((TRACESTATE, trace.tracestate))
        if version and cfg.api_version.location == "header":
            out = [(k, v) for k, v in out if k.lower() != cfg.api_version.header.lower()]
            out.append((cfg.api_version.header, version))
        if integ.static_auth is not None:
            out.append((auth.header, integ.static_auth))
        elif integ.credentials is not None:
            # The configured default headers must not carry one either.
            out = [(k, v) for k, v in out if k.lower() != auth.header.lower()]
        if req.idempotency_key:
            name = cfg.idempotency.header
            out = [(k, v) for k, v in out if k.lower() != name.lower()]
            out.append((name, req.idempotency_key))
        return tuple(out)

    # ------------------------------------------------------------------ idempotency

    async def _with_key(self, req: CallRequest, integ: _Integration, policy: _Policy,
                        method: str, url: str, headers: tuple[tuple[str, str], ...],
                        state: _Attempts, start: float) -> CallResult:
        cfg = integ.config
        ctype = next((v for k, v in req.headers if k.lower() == "content-type"), "")
        fp = fingerprint(method, url, req.body, ctype)
        now = self._clock.time()
        claim = await self._storage.idempotency_claim(
            cfg.name, req.idempotency_key, fp, now=now,
            lease=policy.timeouts.total + CLAIM_MARGIN)
        meta = {"integration": cfg.name}
        if claim.status is ClaimStatus.COMPLETED and claim.response is not None:
            self._observer.idempotent_replay(cfg.name)
            if state.span is not None:
                state.span.event("sidecar.idempotent_replay")
            stored = decode_result(claim.response)
            return CallResult(stored.status, stored.headers, stored.body, attempts=0,
                              replayed=True, deprecation=stored.deprecation,
                              route=policy.name, duration=self._clock.monotonic() - start)
        if claim.status is ClaimStatus.IN_FLIGHT:
            raise Aborted("a call with this idempotency key is still in flight; retry later",
                          reason="IDEMPOTENCY_IN_FLIGHT", metadata=meta)
        if claim.status is ClaimStatus.CONFLICT:
            raise FailedPrecondition(
                "this idempotency key was already used with a different request",
                reason="IDEMPOTENCY_KEY_REUSED", metadata=meta)
        try:
            result = await self._execute(req, integ, policy, method, url, headers, state,
                                         start)
        except BaseException:
            await _shielded(self._storage.idempotency_release(cfg.name, req.idempotency_key))
            raise
        if result.status >= 500 or result.stale:
            # The upstream may not have acted: let the caller try again with the key.
            await _shielded(self._storage.idempotency_release(cfg.name, req.idempotency_key))
        else:
            await _shielded(self._storage.idempotency_complete(
                cfg.name, req.idempotency_key, encode_result(result),
                now=self._clock.time(), ttl=cfg.idempotency.retention))
        return result

    # ------------------------------------------------------------------ attempts

    async def _execute(self, req: CallRequest, integ: _Integration, policy: _Policy,
                       method: str, url: str, headers: tuple[tuple[str, str], ...],
                       state: _Attempts, start: float) -> CallResult:
        cfg = integ.config
        if integ.budget is not None:
            integ.budget.record_request()
        response: UpstreamResponse | None = None
        try:
            response = await self._run(req, integ, policy, method, url, headers, state)
        except (BreakerOpenError, RateLimitedError, BulkheadFullError, DeadlineExceeded,
                UpstreamAuthFailed) as exc:
            if state.span is not None:
                _refusal_event(state.span, exc)
            # A retry could not go out. An answer from an earlier attempt is still
            # usable; otherwise an open breaker may be served from the fallback.
            if state.last_response is not None:
                response = state.last_response
            else:
                stale = (self._fallback(policy, method, url)
                         if isinstance(exc, BreakerOpenError) else None)
                if stale is not None:
                    if state.span is not None:
                        state.span.event("sidecar.fallback_served")
                    return CallResult(stale.status, stale.headers, stale.body,
                                      attempts=state.attempts, stale=True,
                                      deprecation=stale.deprecation, route=policy.name,
                                      duration=self._clock.monotonic() - start)
                if state.last_failure is None:
                    raise
                # An attempt of this call went out: a refusal of the next one must not
                # read as "nothing was sent". The answer is what happened to it.
                error = self._transport_failure(state.last_failure, cfg.name, state)
                error.metadata["retry_stopped_by"] = exc.reason
                raise error from None
        except TransportError as exc:
            raise self._transport_failure(exc, cfg.name, state) from None
        attempts = state.attempts
        if response is None:
            raise DeadlineExceeded("the deadline passed before any attempt could start",
                                   metadata={"integration": cfg.name})
        result = CallResult(
            status=response.status, headers=response.headers, body=response.body,
            attempts=attempts, deprecation=self._deprecation(integ, policy, response),
            route=policy.name, duration=self._clock.monotonic() - start,
        )
        if policy.cache is not None and method == "GET" and 200 <= response.status < 300:
            policy.cache.put(url, result, self._clock.monotonic())
        return result

    async def _run(self, req: CallRequest, integ: _Integration, policy: _Policy, method: str,
                   url: str, headers: tuple[tuple[str, str], ...],
                   state: _Attempts) -> UpstreamResponse:
        """The attempts of one call. The first goes straight out: most calls need no
        retry, and the retry machinery (tenacity and its callbacks) is only built
        when one does."""
        retry = policy.retry
        may_retry = method in IDEMPOTENT or bool(req.idempotency_key)
        first: UpstreamResponse | None = None
        try:
            first = await self._attempt(integ, policy, state, method, url, headers, req.body)
            failure: BaseException | None = None
        except TransportError as exc:
            failure = exc
        reason = _retry_reason(retry, may_retry, first, failure)
        pause = self._delay(policy, first, 1) if reason else 0.0
        if not reason or self._must_stop(integ, state, retry, 1, pause):
            if failure is not None:
                raise failure
            assert first is not None
            return first
        return await self._retry(req, integ, policy, method, url, headers, state,
                                 may_retry, reason, pause)

    def _delay(self, policy: _Policy, resp: UpstreamResponse | None,
               retry_number: int) -> float:
        if resp is not None and policy.retry.honor_retry_after:
            hinted = self._server_hint(resp, policy)
            if hinted is not None:
                return hinted
        return backoff_delay(policy.retry.backoff, retry_number, self._rand)

    def _must_stop(self, integ: _Integration, state: _Attempts, retry: RetryConfig,
                   attempts_made: int, sleep: float) -> bool:
        if attempts_made >= retry.max_attempts:
            return True
        if self._clock.monotonic() + sleep >= state.deadline:
            return True  # no attempt may start after the deadline
        if integ.budget is not None and not integ.budget.try_spend():
            self._observer.budget_exhausted(integ.config.name)
            log.warning("retry budget exhausted", extra={"integration": integ.config.name})
            return True
        return False

    async def _retry(self, req: CallRequest, integ: _Integration, policy: _Policy,
                     method: str, url: str, headers: tuple[tuple[str, str], ...],
                     state: _Attempts, may_retry: bool, reason: str,
                     pause: float) -> UpstreamResponse:
        """Retries after a first attempt that asked for one (``reason``, ``pause``)."""
        # Imported on the first retry: most processes never retry, and tenacity
        # would be resident memory for nothing.
        from tenacity import AsyncRetrying

        cfg = integ.config
        retry = policy.retry

        async def attempt() -> UpstreamResponse:
            return await self._attempt(integ, policy, state, method, url, headers, req.body)

        def outcome(rs: RetryCallState) -> tuple[UpstreamResponse | None, BaseException | None]:
            assert rs.outcome is not None
            if rs.outcome.failed:
                return None, rs.outcome.exception()
            return rs.outcome.result(), None

        def should_retry(rs: RetryCallState) -> bool:
            state.last_retry_reason = _retry_reason(retry, may_retry, *outcome(rs))
            return bool(state.last_retry_reason)

        def wait(rs: RetryCallState) -> float:
            # tenacity counts from the second overall attempt: its Nth is retry N+1.
            return self._delay(policy, outcome(rs)[0], rs.attempt_number + 1)

        def stop(rs: RetryCallState) -> bool:
            return self._must_stop(integ, state, retry, rs.attempt_number + 1,
                                   rs.upcoming_sleep or 0.0)

        def retrying_after(reason: str, attempts_made: int, pause: float) -> None:
            self._observer.retried(cfg.name, policy.name, reason)
            log.warning("upstream attempt failed; retrying", extra={
                "integration": cfg.name, "route": policy.name, "reason": reason,
                "attempt": attempts_made, "span_id": state.span_id,
                "retry_in_ms": round(pause * 1000, 1)})

        def before_sleep(rs: RetryCallState) -> None:
            retrying_after(state.last_retry_reason, rs.attempt_number + 1,
                           rs.upcoming_sleep or 0.0)

        def final(rs: RetryCallState) -> UpstreamResponse:
            assert rs.outcome is not None
            return rs.outcome.result()  # type: ignore[no-any-return]

        state.last_retry_reason = reason
        retrying_after(reason, 1, pause)
        await self._clock.sleep(pause)
        retrying = AsyncRetrying(
            stop=stop, wait=wait, retry=should_retry, before_sleep=before_sleep,
            sleep=self._clock.sleep, retry_error_callback=final,
        )
        return await retrying(attempt)

    async def _attempt(self, integ: _Integration, policy: _Policy, state: _Attempts,
                       method: str, url: str, headers: tuple[tuple[str, str], ...],
                       body: bytes) -> UpstreamResponse:
        cfg = integ.config
        remaining = state.deadline - self._clock.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before the next attempt",
                                   metadata={"integration": cfg.name})
        if policy.bucket is not None:
            try:
                waited = await policy.bucket.acquire(remaining)
            except RateLimitedError as exc:
                self._observer.rate_limited(cfg.name, policy.name, "rejected")
                exc.metadata.setdefault("integration", cfg.name)
                raise
            if waited > 0:
                self._observer.rate_limited(cfg.name, policy.name, "waited")
                if state.span is not None:
                    state.span.event("sidecar.rate_limit.waited",
                                     {"sidecar.rate_limit.wait_ms": round(waited * 1000, 1)})
        permit: Permit | None = policy.breaker.acquire() if policy.breaker else None
        t0: float | None = None
        client: Span | None = None
        try:
            if integ.credentials is not None:
                # Before the bulkhead: no slot is held while a token is fetched.
                state.credential = await integ.credentials.authorization(state.deadline,
                                                                         state.span)
                sent = (*headers, (cfg.auth.header, state.credential))
            else:
                sent = headers
            if not integ.bulkhead.try_acquire():  # else wait for a slot
                max_wait = state.deadline - self._clock.monotonic()
                if cfg.bulkhead.max_wait is not None:
                    max_wait = min(max_wait, cfg.bulkhead.max_wait)
                await integ.bulkhead.acquire(max_wait)
            try:
                t0 = self._clock.monotonic()
                timeout = min(policy.timeouts.attempt, state.deadline - t0)
                state.span_id = span = new_span_id()
                if state.span is not None:
                    client = state.span.child(method, KIND_CLIENT, span, _client_attributes(
                        cfg.name, policy.name, method, url, state.attempts))
                request = UpstreamRequest(method, url,
                                          (*sent, (TRACEPARENT,
                                                      state.trace.child_traceparent(span))),
                                          body, timeout=timeout,
                                          connect_timeout=min(policy.timeouts.connect, timeout))
                state.attempts += 1
                response = await integ.transport.send(request)
            finally:
                integ.bulkhead.release()
        except TransportError as exc:
            state.went_out(exc)
            duration = self._clock.monotonic() - (t0 or 0.0)
            self._observer.attempt_finished(cfg.name, policy.name, exc.kind.value, duration)
            if permit is not None:
                permit.record(False, duration)
            if client is not None:
                client.fail(exc.kind.value)
                client.end()
            raise
        except BaseException as exc:
            if permit is not None:
                permit.release()  # no exchange happened (or it was cancelled): no verdict
            if client is not None:
                client.fail(type(exc).__name__)
                client.end()
            raise
        duration = self._clock.monotonic() - t0
        status_class = _STATUS_CLASSES.get(response.status // 100)
        self._observer.attempt_finished(cfg.name, policy.name,
                                        status_class or f"{response.status // 100}xx", duration)
        if permit is not None:
            permit.record(response.status not in policy.failure_statuses, duration)
        if client is not None:
            client.attributes["http.response.status_code"] = response.status
            if response.status >= 400:
                client.fail(str(response.status))
            client.end()
        state.went_out(response)
        if response.status == 429 and policy.bucket is not None:
            pause = self._server_hint(response, policy)
            if pause:
                await policy.bucket.pause_for(pause)
        if (response.status == 401 and integ.credentials is not None
                and not state.reauthorized and integ.credentials.invalidate(state.credential)):
            # The token was revoked or expired early: one new token, one more attempt.
            state.reauthorized = True
            log.info("upstream refused the access token; fetching a new one",
                     extra={"integration": cfg.name, "route": policy.name})
            if state.span is not None:
                state.span.event("sidecar.auth.token_refused")
            return await self._attempt(integ, policy, state, method, url, headers, body)
        return response

    def _server_hint(self, resp: UpstreamResponse, policy: _Policy) -> float | None:
        now = self._clock.time()
        value = resp.header("Retry-After")
        if value is not None:
            parsed = parse_retry_after(value, now)
            if parsed is not None:
                return parsed
        if resp.status == 429:
            for name in ("RateLimit-Reset", "X-RateLimit-Reset"):
                value = resp.header(name)
                if value is not None:
                    parsed = parse_rate_limit_reset(value, now)
                    if parsed is not None:
                        return parsed
        return None

    def _fallback(self, policy: _Policy, method: str, url: str) -> CallResult | None:
        if method != "GET" or policy.cache is None:
            return None
        return policy.cache.get(url, self._clock.monotonic())

    def _transport_failure(self, exc: TransportError, integration: str,
                           state: _Attempts) -> SidecarError:
        attempts = state.attempts
        meta = {"integration": integration, "attempts": str(attempts), "cause": exc.kind.value}
        if exc.kind is TransportErrorKind.TIMEOUT:
            if self._clock.monotonic() >= state.deadline - 0.001:
                return DeadlineExceeded(f"deadline passed waiting for {integration!r} "
                                        f"after {attempts} attempt(s)", metadata=meta)
            return DeadlineExceeded(f"{integration!r} did not answer within the attempt timeout "
                                    f"({attempts} attempt(s))", reason="UPSTREAM_TIMEOUT",
                                    metadata=meta)
        if exc.kind is TransportErrorKind.TOO_LARGE:
            return ResourceExhausted(str(exc.detail), reason="RESPONSE_TOO_LARGE", metadata=meta)
        if exc.kind is TransportErrorKind.TLS:
            return Unavailable(f"TLS with {integration!r} failed: {exc.detail}",
                               reason="UPSTREAM_TLS_ERROR", metadata=meta)
        return Unavailable(f"{integration!r} unreachable after {attempts} attempt(s): "
                           f"{exc}", reason="UPSTREAM_UNREACHABLE", metadata=meta)

    def _deprecation(self, integ: _Integration, policy: _Policy,
                     resp: UpstreamResponse) -> DeprecationInfo | None:
        # One pass for both (the first of each, as header() finds): this runs per call.
        dep_header: str | None = None
        sunset_header: str | None = None
        for name, value in resp.headers:
            lname = name.lower()
            if lname == "deprecation":
                if dep_header is None:
                    dep_header = value
            elif lname == "sunset" and sunset_header is None:
                sunset_header = value
        if dep_header is None and sunset_header is None:
            return None
        deprecated, at = parse_deprecation(dep_header) if dep_header else (False, None)
        sunset = parse_sunset(sunset_header) if sunset_header else None
        link = parse_link_rel(resp.header("Link") or "") or ""
        info = DeprecationInfo(deprecated=deprecated, deprecated_at=at, sunset_at=sunset,
                               link=link)
        self._observer.deprecation_seen(integ.config.name, policy.name, info)
        key = policy.name or "*"
        if key not in integ.deprecations_logged:
            integ.deprecations_logged.add(key)
            log.warning("upstream announced deprecation", extra={
                "integration": integ.config.name, "route": policy.name,
                "deprecated_at": at, "sunset_at": sunset, "link": safe_link(link)})
        return info


def _client_attributes(integration: str, route: str, method: str, url: str,
                       resends: int) -> dict[str, AttributeValue]:
    """An attempt's CLIENT span attributes (HTTP semantic conventions). ``url.full``
    leaves out the query and any user info: either may carry a secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    attrs: dict[str, AttributeValue] = {
        "http.request.method": method, "server.address": host,
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        "url.full": f"{parts.scheme}://{netloc}{parts.path}",
        "sidecar.integration": integration, "sidecar.route": route,
    }
    if resends:
        attrs["http.request.resend_count"] = resends
    return attrs


def _refusal_event(span: Span, exc: Exception) -> None:
    """An attempt the pipeline did not let go out, as an event on the Call's span."""
    if isinstance(exc, BreakerOpenError):
        span.event("sidecar.circuit_open")
    elif isinstance(exc, RateLimitedError):
        span.event("sidecar.rate_limit.rejected")
    elif isinstance(exc, BulkheadFullError):
        span.event("sidecar.bulkhead_full")
    elif isinstance(exc, UpstreamAuthFailed):
        span.event("sidecar.auth.failed", {"sidecar.auth.cause": exc.metadata.get("cause", "")})


def _retry_reason(retry: RetryConfig, may_retry: bool, resp: UpstreamResponse | None,
                  exc: BaseException | None) -> str:
    """Why this outcome should be retried, or "" when it should not."""
    if not may_retry:
        return ""
    if exc is not None:
        if isinstance(exc, TransportError) and exc.kind.value in retry.on_errors:
            return exc.kind.value
        return ""
    if resp is not None and resp.status in retry.on_status:
        return f"status_{resp.status}"
    return ""


def _outcome(result: CallResult) -> str:
    if result.replayed:
        return "replayed"
    if result.stale:
        return "stale"
    if result.status >= 500:
        return "server_error"
    if result.status >= 400:
        return "client_error"
    return "success"


async def _shielded(aw: Awaitable[None]) -> None:
    """Finish bookkeeping even when the call itself is being cancelled."""
    task = asyncio.ensure_future(aw)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)
    if not task.done():
        await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.error("idempotency bookkeeping failed: %s", task.exception())


"""The Call path's router: it keeps each configured integration's stacks (built by
``stack``, one per route), sends each call through the stack of the route it matches,
and turns what comes back into the caller's result or error.

The layers themselves live in ``sidecar.core.calls.layers``; ``stack`` shows their
order. Here: validation and URL building before any layer runs, the result and the
error contract after (every error says how many attempts went out and whether the
upstream may have received the request), the one "call finished" record (metrics,
span, log), and reconfiguration on reload.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext, Handler, transport_failure
from sidecar.core.calls.credentials import CredentialFactory
from sidecar.core.calls.models import CallRequest, CallResult, Transport, TransportError
from sidecar.core.calls.observer import CallObserver, NullObserver
from sidecar.core.calls.paths import build_url, safe_path
from sidecar.core.calls.policy import IntegrationSpec
from sidecar.core.calls.request import attempt_headers, validate
from sidecar.core.calls.stack import (
    Closable,
    Integration,
    RateLimiterFactory,
    Route,
    StackBuilder,
)
from sidecar.core.idempotency import IdempotencyStore
from sidecar.core.resilience import CircuitBreaker, TokenBucket
from sidecar.core.tracing import new_trace
from sidecar.errors import InvalidArgument, NotFound, SidecarError

log = logging.getLogger("sidecar.calls")

#: Builds an integration's transport (its connection pool) from its spec.
TransportFactory = Callable[[IntegrationSpec], Transport]


@dataclass(frozen=True)
class IntegrationChanges:
    """What a reconfiguration did, by integration name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


class CallPipeline:
    def __init__(
        self,
        integrations: Mapping[str, IntegrationSpec],
        storage: IdempotencyStore,
        transport_factory: TransportFactory,
        clock: Clock,
        *,
        observer: CallObserver | None = None,
        rand: Callable[[], float] = random.random,
        rate_limiter: RateLimiterFactory | None = None,
        credentials: CredentialFactory | None = None,
    ) -> None:
        self._clock = clock
        self._observer: CallObserver = observer or NullObserver()
        self._transport_factory = transport_factory
        self._builder = StackBuilder(
            storage, clock, self._observer, rand,
            rate_limiter or (lambda name, policy: TokenBucket(policy, clock)), credentials)
        self._integrations: dict[str, Integration] = {
            name: self._builder.integration(spec, transport_factory(spec))
            for name, spec in integrations.items()}
        self._closing: set[asyncio.Task[None]] = set()

    def _keeps(self, name: str, spec: IntegrationSpec) -> bool:
        old = self._integrations.get(name)
        return old is not None and old.spec == spec

    def transports_for(self, integrations: Mapping[str, IntegrationSpec]) -> dict[str, Transport]:
        """Transports for the integrations ``reconfigure(integrations)`` will build.

        Construction only, so it may run in a worker thread: an HTTPS transport
        loads the CA bundle (tens of milliseconds each), which must not stall
        the event loop during a reload.
        """
        return {name: self._transport_factory(spec) for name, spec in integrations.items()
                if not self._keeps(name, spec)}

    def reconfigure(self, integrations: Mapping[str, IntegrationSpec],
                    transports: Mapping[str, Transport] | None = None) -> IntegrationChanges:
        """Swap in ``integrations`` for new calls.

        An integration whose spec (routes included) is unchanged keeps everything
        (breaker state, rate-limit bucket, retry budget, bulkhead, fallback cache,
        connection pool). An added or changed one is built new (with a transport
        from ``transports`` when given); a changed or removed one is retired: calls
        already running finish on it, then its connections close. Raises (and
        changes nothing) if building fails.
        """
        spare = dict(transports or {})
        fresh: dict[str, Integration] = {}
        added: list[str] = []
        changed: list[str] = []
        try:
            for name, spec in integrations.items():
                if self._keeps(name, spec):
                    fresh[name] = self._integrations[name]
                    continue
                (added if name not in self._integrations else changed).append(name)
                transport = spare.pop(name, None) or self._transport_factory(spec)
                fresh[name] = self._builder.integration(spec, transport)
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

    def _close_soon(self, *parts: Closable) -> None:
        for part in parts:
            task = asyncio.ensure_future(part.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def integration_names(self) -> list[str]:
        return list(self._integrations)

    def breakers(self) -> Mapping[str, CircuitBreaker]:
        """Every breaker by ``integration`` or ``integration/route``, for status pages."""
        return {b.name: b for integ in self._integrations.values() for b in integ.breakers()}

    async def close(self) -> None:
        await asyncio.gather(*(part.close() for i in self._integrations.values()
                               for part in i.parts()),
                             *self._closing, return_exceptions=True)

    # ------------------------------------------------------------------ the call

    def check(self, req: CallRequest) -> None:
        """Raise what ``call`` would refuse ``req`` for before any attempt (unknown
        integration, invalid fields, a path that leaves the base URL)."""
        self._target(req, self._integration(req).spec)

    async def call(self, req: CallRequest) -> CallResult:
        """``req`` through its route's stack: retries, breaker, rate limit, ..."""
        return await self._run(req, queued=False)

    async def attempt(self, req: CallRequest) -> CallResult:
        """One attempt of a queued call (the route's queued stack): no retry, and the
        rate limit is waited out, never a refusal."""
        return await self._run(req, queued=True)

    def _integration(self, req: CallRequest) -> Integration:
        integ = self._integrations.get(req.integration)
        if integ is None:
            error: SidecarError = InvalidArgument.of("integration", "is required")
            if req.integration:
                error = NotFound(f"integration {req.integration!r} is not configured",
                                 reason="INTEGRATION_NOT_FOUND",
                                 metadata={"integration": req.integration})
            raise _nothing_sent(error)
        return integ

    @staticmethod
    def _target(req: CallRequest, spec: IntegrationSpec) -> tuple[str, str, str]:
        """(method, API version, URL) of ``req``, or the refusal naming every problem."""
        method = (req.method or "GET").upper()
        try:
            validate(req, method, spec)
            version = req.api_version or spec.api_version.version
            url = build_url(spec.base_url, req.path, req.query,
                            version if spec.api_version.location == "path" else "")
        except SidecarError as exc:
            raise _nothing_sent(exc) from None
        return method, version, url

    def _prepare(self, req: CallRequest, integ: Integration) -> tuple[Route, CallContext]:
        start = self._clock.monotonic()
        spec = integ.spec
        method, version, url = self._target(req, spec)
        # Routes match the path as it is sent (dot segments resolved), not as written.
        route = integ.match(method, "/" + safe_path(req.path).lstrip("/"))
        trace = req.trace or new_trace()
        return route, CallContext(req, spec.name, route.name, method, url,
                                  attempt_headers(req, spec, version, trace), start, math.inf,
                                  trace, req.span)

    async def _run(self, req: CallRequest, *, queued: bool) -> CallResult:
        integ = self._integration(req)
        integ.active += 1
        try:
            route, ctx = self._prepare(req, integ)
            return await self._through(route.queued if queued and route.queued else route.run,
                                       ctx)
        finally:
            integ.active -= 1
            if integ.retired and not integ.active:
                self._close_soon(*integ.parts())

    async def _through(self, run: Handler, ctx: CallContext) -> CallResult:
        outcome = "error"
        result: CallResult | None = None
        try:
            try:
                response = await run(ctx)
            except TransportError as exc:
                raise transport_failure(exc, ctx, self._clock.monotonic()) from None
            result = CallResult(
                status=response.status, headers=response.headers, body=response.body,
                attempts=0 if ctx.served == "replayed" else ctx.attempts,
                replayed=ctx.served == "replayed", stale=ctx.served == "stale",
                deprecation=ctx.deprecation, route=ctx.route,
                duration=self._clock.monotonic() - ctx.start)
            outcome = ctx.served or _outcome(result.status)
            return result
        except SidecarError as exc:
            outcome = exc.reason
            ctx.annotate(exc)
            raise
        finally:
            self._finished(ctx, outcome, result.status if result else 0)

    def _finished(self, ctx: CallContext, outcome: str, status: int) -> None:
        """The call's one record: metrics, span attributes, the "call finished" line."""
        duration = self._clock.monotonic() - ctx.start
        self._observer.call_finished(ctx.integration, ctx.route, outcome, status,
                                     ctx.attempts, duration)
        if ctx.span is not None:
            ctx.span.attributes.update({"sidecar.route": ctx.route,
                                        "sidecar.call.outcome": outcome,
                                        "sidecar.call.attempts": ctx.attempts})
        if log.isEnabledFor(logging.INFO):
            log.info("call finished", extra={
                "integration": ctx.integration, "route": ctx.route, "method": ctx.method,
                "outcome": outcome, "status": status, "attempts": ctx.attempts,
                "latency_ms": round(duration * 1000, 1), "trace_id": ctx.trace.trace_id,
            })


def _nothing_sent(error: SidecarError) -> SidecarError:
    """A refusal before any layer ran: no attempt, nothing reached the upstream."""
    error.metadata["attempts"] = "0"
    error.metadata["upstream_reached"] = "no"
    return error


def _outcome(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "success"

"""Rate limit: an attempt takes a token from the route's bucket (waiting for one up to
the deadline, else ``RATE_LIMITED``), and a 429 that says when to come back pauses the
bucket for every call until then."""

from __future__ import annotations

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import UpstreamResponse
from sidecar.core.calls.observer import CallObserver
from sidecar.core.resilience import parse_rate_limit_reset, parse_retry_after
from sidecar.core.resilience.rate_limit import RateLimitedError, RateLimiter


def server_hint(response: UpstreamResponse, now: float) -> float | None:
    """Seconds the upstream asked to wait: ``Retry-After``, or on a 429 the
    ``RateLimit-Reset`` / ``X-RateLimit-Reset`` it sent."""
    value = response.header("Retry-After")
    if value is not None:
        parsed = parse_retry_after(value, now)
        if parsed is not None:
            return parsed
    if response.status == 429:
        for name in ("RateLimit-Reset", "X-RateLimit-Reset"):
            value = response.header(name)
            if value is not None:
                parsed = parse_rate_limit_reset(value, now)
                if parsed is not None:
                    return parsed
    return None


class RateLimitLayer:
    def __init__(self, bucket: RateLimiter, clock: Clock, observer: CallObserver,
                 integration: str, route: str) -> None:
        self._bucket = bucket
        self._clock = clock
        self._observer = observer
        self._integration = integration
        self._route = route

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        waited = await self._take(ctx)
        if waited > 0:
            self._observer.rate_limited(self._integration, self._route, "waited")
            if ctx.span is not None:
                ctx.span.event("sidecar.rate_limit.waited",
                               {"sidecar.rate_limit.wait_ms": round(waited * 1000, 1)})
        response = await next(ctx)
        if response.status == 429:
            pause = server_hint(response, self._clock.time())
            if pause:
                await self._bucket.pause_for(pause)
        return response

    async def _take(self, ctx: CallContext) -> float:
        """Seconds waited for a token; refused when it would pass the deadline."""
        try:
            return await self._bucket.acquire(ctx.remaining(self._clock.monotonic()))
        except RateLimitedError as exc:
            self._observer.rate_limited(self._integration, self._route, "rejected")
            exc.metadata.setdefault("integration", self._integration)
            raise


#: How long a queued attempt may wait for a token (the queue leases only as many calls
#: as an integration may run at once, so a wait this long means a stalled limiter).
MAX_DRAIN_WAIT = 3600.0


class DrainLayer(RateLimitLayer):
    """The rate limit as a queue's drain rate: a queued attempt waits for its token as
    long as that takes, before its deadline starts; the limit never fails it."""

    async def _take(self, ctx: CallContext) -> float:
        return await self._bucket.acquire(MAX_DRAIN_WAIT)

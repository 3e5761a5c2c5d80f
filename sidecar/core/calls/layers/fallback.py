"""Fallback: while the breaker is open and nothing of the call went out, a GET is
answered (marked stale) from the last good response to the same URL, kept in a bounded
LRU for a bounded time."""

from __future__ import annotations

import collections

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import CallResult, UpstreamResponse
from sidecar.core.resilience import BreakerOpenError


class LastGoodCache:
    """Bounded LRU of (url -> result, stored-at) entries."""

    def __init__(self, max_entries: int, max_age: float) -> None:
        self._max = max_entries
        self._max_age = max_age
        self._entries: collections.OrderedDict[str, tuple[CallResult, float]] = (
            collections.OrderedDict())

    def put(self, url: str, result: CallResult, now: float) -> None:
        self._entries[url] = (result, now)
        self._entries.move_to_end(url)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def get(self, url: str, now: float) -> CallResult | None:
        entry = self._entries.get(url)
        if entry is None:
            return None
        result, stored = entry
        if now - stored > self._max_age:
            del self._entries[url]
            return None
        self._entries.move_to_end(url)
        return result

    def __len__(self) -> int:
        return len(self._entries)


class FallbackLayer:
    def __init__(self, cache: LastGoodCache, clock: Clock) -> None:
        self.cache = cache
        self._clock = clock

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        if ctx.method != "GET":
            return await next(ctx)
        try:
            response = await next(ctx)
        except BreakerOpenError:
            stale = self.cache.get(ctx.url, self._clock.monotonic())
            if stale is None:
                raise
            if ctx.span is not None:
                ctx.span.event("sidecar.fallback_served")
            ctx.served = "stale"
            ctx.deprecation = stale.deprecation
            return UpstreamResponse(stale.status, stale.headers, stale.body)
        if 200 <= response.status < 300:
            self.cache.put(ctx.url, CallResult(
                response.status, response.headers, response.body, attempts=ctx.attempts,
                deprecation=ctx.deprecation, route=ctx.route), self._clock.monotonic())
        return response

"""Bulkhead: at most so many upstream exchanges of an integration in flight at once; a
call waits for a slot up to its deadline (or the configured ``max_wait``), then is
refused with ``BULKHEAD_FULL``."""

from __future__ import annotations

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import UpstreamResponse
from sidecar.core.resilience.bulkhead import Bulkhead


class BulkheadLayer:
    def __init__(self, bulkhead: Bulkhead, max_wait: float | None, clock: Clock) -> None:
        self._bulkhead = bulkhead
        self._max_wait = max_wait
        self._clock = clock

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        bulkhead = self._bulkhead
        if not bulkhead.try_acquire():  # else wait for a slot
            max_wait = ctx.remaining(self._clock.monotonic())
            if self._max_wait is not None:
                max_wait = min(max_wait, self._max_wait)
            await bulkhead.acquire(max_wait)
        try:
            return await next(ctx)
        finally:
            bulkhead.release()

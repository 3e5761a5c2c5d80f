"""Circuit breaker: an attempt goes out only with the breaker's permit (else
``CIRCUIT_OPEN``), and its outcome is the breaker's verdict: a transport failure or a
configured failure status counts against the upstream, an exchange that never
happened (cancelled, refused further in) counts neither way."""

from __future__ import annotations

from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import TransportError, UpstreamResponse
from sidecar.core.resilience.breaker import CircuitBreaker


class BreakerLayer:
    def __init__(self, breaker: CircuitBreaker, failure_statuses: frozenset[int]) -> None:
        self.breaker = breaker
        self._failures = failure_statuses

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        permit = self.breaker.acquire()
        try:
            response = await next(ctx)
        except TransportError:
            permit.record(False, ctx.attempt_duration)
            raise
        except BaseException:
            permit.release()
            raise
        permit.record(response.status not in self._failures, ctx.attempt_duration)
        return response

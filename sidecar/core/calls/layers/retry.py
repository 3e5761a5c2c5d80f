"""Retry: the one place that decides whether a call gets another attempt.

An outcome is retried when the method may be repeated (RFC 9110 idempotent, or the
call has an idempotency key), the route lists its status or transport error, and the
pause (Retry-After when the upstream sent one and the policy honours it, else backoff
with full jitter) still ends before the deadline, the attempts left and the
integration's retry budget allow it. The first attempt goes straight out; tenacity
drives the rest, asking the same ``decide``. A refusal of a later attempt (breaker
open, rate limit, bulkhead, deadline, credentials) ends the call with what the
earlier attempts got, never as if nothing had been sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext, Handler, transport_failure
from sidecar.core.calls.layers.rate_limit import server_hint
from sidecar.core.calls.models import TransportError, UpstreamResponse
from sidecar.core.calls.observer import CallObserver
from sidecar.core.calls.policy import RetryPolicy
from sidecar.core.resilience import BreakerOpenError, RateLimitedError, RetryBudget, backoff_delay
from sidecar.core.resilience.bulkhead import BulkheadFullError
from sidecar.core.spans import Span
from sidecar.errors import DeadlineExceeded, UpstreamAuthFailed

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger("sidecar.calls")

#: RFC 9110 idempotent methods: safe to retry without a key.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Why an attempt did not go out.
REFUSALS = (BreakerOpenError, RateLimitedError, BulkheadFullError, DeadlineExceeded,
            UpstreamAuthFailed)
Outcome = UpstreamResponse | BaseException


class RetryLayer:
    def __init__(self, policy: RetryPolicy, budget: RetryBudget | None, clock: Clock,
                 rand: Callable[[], float], observer: CallObserver, integration: str,
                 route: str) -> None:
        self._policy = policy
        self._budget = budget
        self._clock = clock
        self._rand = rand
        self._observer = observer
        self._integration = integration
        self._route = route

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        if self._budget is not None:
            self._budget.record_request()
        try:
            return await self._attempts(ctx, next)
        except REFUSALS as exc:
            if ctx.span is not None:
                _refusal_event(ctx.span, exc)
            if ctx.last_response is not None:
                return ctx.last_response  # an earlier answer is still the answer
            if ctx.last_failure is None:
                raise  # nothing of this call went out
            error = transport_failure(ctx.last_failure, ctx, self._clock.monotonic())
            error.metadata["retry_stopped_by"] = exc.reason
            raise error from None

    def decide(self, ctx: CallContext, outcome: Outcome, attempts_made: int
               ) -> tuple[str, float] | None:
        """Why and after what pause to try again, or None to stop with ``outcome``."""
        reason = self._reason(ctx, outcome)
        if not reason:
            return None
        pause = None
        if isinstance(outcome, UpstreamResponse) and self._policy.honor_retry_after:
            pause = server_hint(outcome, self._clock.time())
        if pause is None:
            pause = backoff_delay(self._policy.backoff, attempts_made, self._rand)
        if attempts_made >= self._policy.max_attempts:
            return None
        if self._clock.monotonic() + pause >= ctx.deadline:
            return None  # no attempt may start after the deadline
        if self._budget is not None and not self._budget.try_spend():
            self._observer.budget_exhausted(self._integration)
            log.warning("retry budget exhausted", extra={"integration": self._integration})
            return None
        return reason, pause

    def _reason(self, ctx: CallContext, outcome: Outcome) -> str:
        """Why this outcome is worth another attempt, or "" when it is not."""
        if not (ctx.method in IDEMPOTENT or ctx.request.idempotency_key):
            return ""
        if isinstance(outcome, UpstreamResponse):
            return f"status_{outcome.status}" if outcome.status in self._policy.on_status else ""
        if isinstance(outcome, TransportError) and outcome.kind.value in self._policy.on_errors:
            return outcome.kind.value
        return ""

    async def _attempt(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        if ctx.remaining(self._clock.monotonic()) <= 0:
            raise DeadlineExceeded("the deadline passed before the next attempt",
                                   metadata={"integration": self._integration})
        return await next(ctx)

    async def _attempts(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        # Most calls need no retry: the first attempt goes out without tenacity, which
        # is imported (resident memory) and built only when a retry is due.
        try:
            first: Outcome = await self._attempt(ctx, next)
        except TransportError as exc:
            first = exc
        decision = self.decide(ctx, first, 1)
        if decision is None:
            if isinstance(first, BaseException):
                raise first
            return first
        from tenacity import AsyncRetrying

        pending: list[tuple[str, float] | None] = [decision]

        def retry(rs: RetryCallState) -> bool:
            assert rs.outcome is not None
            outcome: Outcome = (rs.outcome.result() if not rs.outcome.failed
                                else rs.outcome.exception() or RuntimeError("no outcome"))
            # tenacity counts the attempts it made; the first was made before it.
            pending[0] = self.decide(ctx, outcome, rs.attempt_number + 1)
            return pending[0] is not None

        def wait(rs: RetryCallState) -> float:
            return pending[0][1] if pending[0] else 0.0

        def before_sleep(rs: RetryCallState) -> None:
            self._retrying(ctx, pending[0], rs.attempt_number + 1)

        self._retrying(ctx, decision, 1)
        await self._clock.sleep(decision[1])
        retrying = AsyncRetrying(retry=retry, wait=wait, before_sleep=before_sleep,
                                 sleep=self._clock.sleep, reraise=True)
        return await retrying(self._attempt, ctx, next)

    def _retrying(self, ctx: CallContext, decision: tuple[str, float] | None,
                  attempts_made: int) -> None:
        reason, pause = decision or ("", 0.0)
        self._observer.retried(self._integration, self._route, reason)
        log.warning("upstream attempt failed; retrying", extra={
            "integration": self._integration, "route": self._route, "reason": reason,
            "attempt": attempts_made, "span_id": ctx.span_id,
            "retry_in_ms": round(pause * 1000, 1)})


def _refusal_event(span: Span, exc: Exception) -> None:
    """An attempt the stack did not let go out, as an event on the Call's span."""
    if isinstance(exc, BreakerOpenError):
        span.event("sidecar.circuit_open")
    elif isinstance(exc, RateLimitedError):
        span.event("sidecar.rate_limit.rejected")
    elif isinstance(exc, BulkheadFullError):
        span.event("sidecar.bulkhead_full")
    elif isinstance(exc, UpstreamAuthFailed):
        span.event("sidecar.auth.failed", {"sidecar.auth.cause": exc.metadata.get("cause", "")})

"""Deadline: the call's time runs out at the route's total timeout or at the caller's
deadline, whichever comes first. Layers further in start no attempt after it and cut
each attempt's timeout to fit."""

from __future__ import annotations

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import UpstreamResponse


class DeadlineLayer:
    """Outermost in a call's stack, so its total counts from the call's start; in a
    queued attempt's, from the moment the attempt got its rate-limit token."""

    def __init__(self, total: float, clock: Clock) -> None:
        self._total = total
        self._clock = clock

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        deadline = self._clock.monotonic() + self._total
        if ctx.request.deadline is not None:
            deadline = min(deadline, ctx.request.deadline)
        ctx.deadline = deadline
        return await next(ctx)

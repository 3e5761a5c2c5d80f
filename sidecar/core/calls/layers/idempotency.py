"""Idempotency: a call with a key claims it with the request's fingerprint before any
attempt. A completed key answers from the stored response (``replayed``), a key in
flight or used for a different request is refused; a key whose call failed, got a 5xx
or was served stale is released, so that the caller may try again with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import CallResult, UpstreamResponse
from sidecar.core.calls.observer import CallObserver
from sidecar.core.calls.stored import decode_result, encode_result, fingerprint
from sidecar.core.idempotency import ClaimStatus, IdempotencyStore
from sidecar.errors import Aborted, FailedPrecondition

log = logging.getLogger("sidecar.calls")

#: An abandoned in-flight claim (crashed sidecar) frees up this long after the call's
#: total timeout.
CLAIM_MARGIN = 30.0


class IdempotencyLayer:
    def __init__(self, store: IdempotencyStore, clock: Clock, observer: CallObserver,
                 integration: str, *, total_timeout: float, retention: float) -> None:
        self._store = store
        self._clock = clock
        self._observer = observer
        self._integration = integration
        self._lease = total_timeout + CLAIM_MARGIN
        self._retention = retention

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        key = ctx.request.idempotency_key
        if not key:
            return await next(ctx)
        name = self._integration
        ctype = next_value(ctx.request.headers, "content-type")
        claim = await self._store.idempotency_claim(
            name, key, fingerprint(ctx.method, ctx.url, ctx.request.body, ctype),
            now=self._clock.time(), lease=self._lease)
        if claim.status is ClaimStatus.COMPLETED and claim.response is not None:
            self._observer.idempotent_replay(name)
            if ctx.span is not None:
                ctx.span.event("sidecar.idempotent_replay")
            stored = decode_result(claim.response)
            ctx.served = "replayed"
            ctx.deprecation = stored.deprecation
            return UpstreamResponse(stored.status, stored.headers, stored.body)
        meta = {"integration": name}
        if claim.status is ClaimStatus.IN_FLIGHT:
            raise Aborted("a call with this idempotency key is still in flight; retry later",
                          reason="IDEMPOTENCY_IN_FLIGHT", metadata=meta)
        if claim.status is ClaimStatus.CONFLICT:
            raise FailedPrecondition(
                "this idempotency key was already used with a different request",
                reason="IDEMPOTENCY_KEY_REUSED", metadata=meta)
        try:
            response = await next(ctx)
        except BaseException:
            await _shielded(self._store.idempotency_release(name, key))
            raise
        if response.status >= 500 or ctx.served == "stale":
            # The upstream may not have acted: let the caller try again with the key.
            await _shielded(self._store.idempotency_release(name, key))
        else:
            result = CallResult(response.status, response.headers, response.body,
                                attempts=ctx.attempts, deprecation=ctx.deprecation,
                                route=ctx.route)
            await _shielded(self._store.idempotency_complete(
                name, key, encode_result(result), now=self._clock.time(),
                ttl=self._retention))
        return response


def next_value(headers: tuple[tuple[str, str], ...], name: str) -> str:
    """The first value of header ``name`` (lower case), or ""."""
    return next((v for k, v in headers if k.lower() == name), "")


async def _shielded(aw: Awaitable[None]) -> None:
    """Finish bookkeeping even when the call itself is being cancelled."""
    task = asyncio.ensure_future(aw)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)
    if not task.done():
        await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.error("idempotency bookkeeping failed: %s", task.exception())

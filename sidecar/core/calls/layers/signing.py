"""Signing: every request the integration sends carries a Standard Webhooks signature
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), made right before it
goes out, so the timestamp is the attempt's own. ``webhook-id`` stays the same across
a call's attempts (a queued call's id, else one per call), so a receiver can drop a
repeat. With it the queue is an outbound-webhook sender."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import UpstreamResponse
from sidecar.core.webhooks.schemes.standard import secret_key, sign


def signing_keys(secrets_: Sequence[str]) -> tuple[bytes, ...]:
    """The HMAC keys of ``whsec_`` secrets (the config refused any that is not one)."""
    return tuple(key for key in map(secret_key, secrets_) if key is not None)


class SigningLayer:
    def __init__(self, keys: tuple[bytes, ...], clock: Clock) -> None:
        self._keys = keys
        self._clock = clock

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        if not ctx.message_id:
            ctx.message_id = ctx.request.message_id or f"msg_{secrets.token_hex(12)}"
        timestamp = int(self._clock.time())
        before = ctx.attempt_headers
        ctx.attempt_headers = (
            *before, ("webhook-id", ctx.message_id), ("webhook-timestamp", str(timestamp)),
            ("webhook-signature", sign(self._keys, ctx.message_id, timestamp,
                                       ctx.request.body)))
        try:
            return await next(ctx)
        finally:
            ctx.attempt_headers = before

"""Credentials fetched at run time (OAuth2): each attempt carries the current access
token, fetched only once the breaker has let the attempt through; a 401 for a token
the source agrees is stale fetches a new one and sends the request again, once per
call, as part of the same attempt (same permit, same rate-limit token: a refused token
says nothing of the upstream's health)."""

from __future__ import annotations

import logging

from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.credentials import CredentialSource
from sidecar.core.calls.models import UpstreamResponse
from sidecar.errors import DeadlineExceeded, UpstreamAuthFailed

log = logging.getLogger("sidecar.calls")


class CredentialsLayer:
    def __init__(self, source: CredentialSource, header: str, integration: str,
                 route: str) -> None:
        self._source = source
        self._header = header
        self._integration = integration
        self._route = route

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        credential = await self._source.authorization(ctx.deadline, ctx.span)
        ctx.attempt_headers = ((self._header, credential),)
        response = await next(ctx)
        if (response.status != 401 or ctx.reauthorized
                or not self._source.invalidate(credential)):
            return response
        # The token was revoked or expired early: one new token, one more request.
        ctx.reauthorized = True
        log.info("upstream refused the access token; fetching a new one",
                 extra={"integration": self._integration, "route": self._route})
        if ctx.span is not None:
            ctx.span.event("sidecar.auth.token_refused")
        try:
            credential = await self._source.authorization(ctx.deadline, ctx.span)
        except (UpstreamAuthFailed, DeadlineExceeded) as exc:
            if ctx.span is not None and isinstance(exc, UpstreamAuthFailed):
                ctx.span.event("sidecar.auth.failed",
                               {"sidecar.auth.cause": exc.metadata.get("cause", "")})
            return response  # the upstream's own answer stands
        ctx.attempt_headers = ((self._header, credential),)
        return await next(ctx)

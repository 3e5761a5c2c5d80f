"""Credentials that change while the sidecar runs (OAuth2 access tokens): the seam the
Call pipeline asks for an ``Authorization`` value per attempt.

Static kinds (bearer, API key, Basic) never come here: their header is built once
with the integration. An implementation that fails raises ``UpstreamAuthFailed``,
or ``DeadlineExceeded`` when the call's deadline ran out while it waited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sidecar.core.calls.policy import IntegrationSpec
from sidecar.core.spans import Span


class CredentialSource(Protocol):
    async def authorization(self, deadline: float, span: Span | None = None) -> str:
        """The header value to send now; waits at most until ``deadline`` (the
        pipeline's monotonic clock). ``span``: the Call's span, for an event when
        a new credential had to be fetched."""

    def invalidate(self, value: str) -> bool:
        """The upstream refused ``value`` (401): forget it, unless a newer one has
        already replaced it. False: a new credential would not help now (fresh ones
        keep being refused), so the 401 is the answer."""

    async def close(self) -> None: ...


#: Builds the source of an integration whose credentials are fetched at run time.
CredentialFactory = Callable[[IntegrationSpec], CredentialSource]

"""The innermost layer: one HTTP exchange with the upstream, as a CLIENT span, timed
and counted, its outcome recorded on the context (``went_out``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from sidecar.clock import Clock
from sidecar.core.calls.context import CallContext
from sidecar.core.calls.models import Transport, TransportError, UpstreamRequest, UpstreamResponse
from sidecar.core.calls.observer import CallObserver
from sidecar.core.calls.policy import Timeouts
from sidecar.core.spans import KIND_CLIENT, AttributeValue, Span
from sidecar.core.tracing import TRACEPARENT, new_span_id
from sidecar.errors import DeadlineExceeded

#: Attempt outcomes by status class, made once rather than formatted per attempt.
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


class TransportLayer:
    def __init__(self, transport: Transport, timeouts: Timeouts, clock: Clock,
                 observer: CallObserver, integration: str, route: str) -> None:
        self._transport = transport
        self._timeouts = timeouts
        self._clock = clock
        self._observer = observer
        self._integration = integration
        self._route = route

    async def __call__(self, ctx: CallContext) -> UpstreamResponse:
        t0 = self._clock.monotonic()
        timeout = min(self._timeouts.attempt, ctx.deadline - t0)
        if timeout <= 0:
            raise DeadlineExceeded("the deadline passed before the next attempt",
                                   metadata={"integration": self._integration})
        ctx.span_id = span_id = new_span_id()
        client: Span | None = None
        if ctx.span is not None:
            client = ctx.span.child(ctx.method, KIND_CLIENT, span_id, _client_attributes(
                self._integration, self._route, ctx.method, ctx.url, ctx.attempts))
        request = UpstreamRequest(
            ctx.method, ctx.url,
            (*ctx.headers, *ctx.attempt_headers,
             (TRACEPARENT, ctx.trace.child_traceparent(span_id))),
            ctx.request.body, timeout=timeout,
            connect_timeout=min(self._timeouts.connect, timeout))
        ctx.attempts += 1
        try:
            response = await self._transport.send(request)
        except TransportError as exc:
            ctx.attempt_duration = self._clock.monotonic() - t0
            ctx.went_out(exc)
            self._observer.attempt_finished(self._integration, self._route, exc.kind.value,
                                            ctx.attempt_duration)
            if client is not None:
                client.fail(exc.kind.value)
                client.end()
            raise
        except BaseException as exc:
            if client is not None:
                client.fail(type(exc).__name__)
                client.end()
            raise
        ctx.attempt_duration = self._clock.monotonic() - t0
        status_class = _STATUS_CLASSES.get(response.status // 100)
        self._observer.attempt_finished(self._integration, self._route,
                                        status_class or f"{response.status // 100}xx",
                                        ctx.attempt_duration)
        if client is not None:
            client.attributes["http.response.status_code"] = response.status
            if response.status >= 400:
                client.fail(str(response.status))
            client.end()
        ctx.went_out(response)
        return response


def _client_attributes(integration: str, route: str, method: str, url: str,
                       resends: int) -> dict[str, AttributeValue]:
    """An attempt's CLIENT span attributes (HTTP semantic conventions). ``url.full``
    leaves out the query and any user info: either may carry a secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    attrs: dict[str, AttributeValue] = {
        "http.request.method": method, "server.address": host,
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        "url.full": f"{parts.scheme}://{netloc}{parts.path}",
        "sidecar.integration": integration, "sidecar.route": route,
    }
    if resends:
        attrs["http.request.resend_count"] = resends
    return attrs

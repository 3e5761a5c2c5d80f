"""The one signature of the Call path: ``layer(context, next)``.

A call runs through a stack of small layers, built once per route (see ``stack``).
Each takes the call's ``CallContext`` and the rest of the stack (``next``), and
answers with the upstream's response or raises; the innermost, the transport, has no
``next``. The context carries what the layers share: the prepared request, the
deadline, and the record of the attempts that went out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from sidecar.core.calls.models import (
    CallRequest,
    DeprecationInfo,
    Headers,
    TransportError,
    TransportErrorKind,
    UpstreamResponse,
)
from sidecar.core.spans import Span
from sidecar.core.tracing import TraceContext
from sidecar.errors import DeadlineExceeded, ResourceExhausted, SidecarError, Unavailable

#: ``upstream_reached`` values, from sure-not to sure.
REACHED = ("no", "maybe", "yes")
#: A failure without an answer, and whether the request may have arrived: a refused
#: connection or a failed TLS handshake sent nothing; a reset, a timeout or a
#: malformed answer may have come after the upstream read (and acted on) the request;
#: a body over the limit came after an answer's headers.
_REACHED_BY_FAILURE = {
    TransportErrorKind.CONNECT: "no", TransportErrorKind.TLS: "no",
    TransportErrorKind.RESET: "maybe", TransportErrorKind.TIMEOUT: "maybe",
    TransportErrorKind.PROTOCOL: "maybe", TransportErrorKind.TOO_LARGE: "yes",
}


@dataclass(slots=True, eq=False)
class CallContext:
    """One call on its way through the stack."""

    request: CallRequest
    integration: str
    route: str
    #: Upper-case method, the full URL and the headers every attempt sends (a fetched
    #: credential and ``traceparent`` are added per attempt).
    method: str
    url: str
    headers: Headers
    #: Monotonic seconds on the pipeline's clock.
    start: float
    deadline: float
    trace: TraceContext
    #: The Call's span when the trace is recorded.
    span: Span | None = None
    #: Headers the next attempt adds (a fetched credential), set by a layer.
    attempt_headers: Headers = ()
    #: Attempts that went out (or began to).
    attempts: int = 0
    #: Seconds the latest attempt's exchange took (what a breaker times).
    attempt_duration: float = 0.0
    #: Parent span id sent with the latest attempt (each attempt is a new hop).
    span_id: str = ""
    #: A 401 already made the call fetch a new credential (once per call, no loop).
    reauthorized: bool = False
    #: The id a signed request carries, the same on every attempt (``webhook-id``).
    message_id: str = ""
    last_response: UpstreamResponse | None = None
    #: How the latest attempt that went out failed without an answer, if it did.
    last_failure: TransportError | None = None
    #: Whether the upstream may have received the request, over every attempt so far.
    reached: str = "no"
    #: The answer did not come from the upstream now: ``replayed`` (idempotency) or
    #: ``stale`` (fallback).
    served: str = ""
    deprecation: DeprecationInfo | None = None

    def remaining(self, now: float) -> float:
        return self.deadline - now

    def went_out(self, outcome: UpstreamResponse | TransportError) -> None:
        """Record an attempt's outcome: an answer, or a failure without one."""
        if isinstance(outcome, TransportError):
            self.last_failure = outcome
            reached = _REACHED_BY_FAILURE.get(outcome.kind, "maybe")
        else:
            self.last_response = outcome
            self.last_failure = None
            reached = "yes"
        if REACHED.index(reached) > REACHED.index(self.reached):
            self.reached = reached

    def annotate(self, error: SidecarError) -> None:
        """What every Call error says of its attempts, so that a caller knows whether
        trying again (or elsewhere) can repeat a side effect."""
        error.metadata["attempts"] = str(self.attempts)
        error.metadata["upstream_reached"] = self.reached


Handler = Callable[[CallContext], Awaitable[UpstreamResponse]]


class Layer(Protocol):
    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse: ...


def compose(layers: list[Layer], terminal: Handler) -> Handler:
    """``layers`` (outermost first) around ``terminal``, bound once."""
    handler = terminal
    for layer in reversed(layers):
        handler = partial(layer, next=handler)
    return handler


def transport_failure(exc: TransportError, ctx: CallContext, now: float) -> SidecarError:
    """The Call error for attempts that ended without an answer."""
    name, attempts = ctx.integration, ctx.attempts
    meta = {"integration": name, "attempts": str(attempts), "cause": exc.kind.value}
    if exc.kind is TransportErrorKind.TIMEOUT:
        if now >= ctx.deadline - 0.001:
            return DeadlineExceeded(f"deadline passed waiting for {name!r} "
                                    f"after {attempts} attempt(s)", metadata=meta)
        return DeadlineExceeded(f"{name!r} did not answer within the attempt timeout "
                                f"({attempts} attempt(s))", reason="UPSTREAM_TIMEOUT",
                                metadata=meta)
    if exc.kind is TransportErrorKind.TOO_LARGE:
        return ResourceExhausted(str(exc.detail), reason="RESPONSE_TOO_LARGE", metadata=meta)
    if exc.kind is TransportErrorKind.TLS:
        return Unavailable(f"TLS with {name!r} failed: {exc.detail}",
                           reason="UPSTREAM_TLS_ERROR", metadata=meta)
    return Unavailable(f"{name!r} unreachable after {attempts} attempt(s): {exc}",
                       reason="UPSTREAM_UNREACHABLE", metadata=meta)

"""Plain data the Call pipeline speaks: requests, results, upstream exchanges (immutable:
see ``sidecar.core.values``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.core.spans import Span
from sidecar.core.tracing import TraceContext
from sidecar.core.values import value_type

Headers = tuple[tuple[str, str], ...]


@value_type
class CallRequest:
    integration: str
    method: str = "GET"
    path: str = ""
    query: tuple[tuple[str, str], ...] = ()
    headers: Headers = ()
    body: bytes = b""
    idempotency_key: str = ""
    api_version: str = ""
    #: Absolute deadline on the pipeline's clock (monotonic seconds), or None.
    deadline: float | None = None
    #: The caller's W3C trace (or one the adapter started). Each upstream attempt
    #: gets its trace id with a new parent span id; None: the pipeline starts one.
    trace: TraceContext | None = None
    #: The Call's SERVER span when the trace is recorded: attempts become its
    #: CLIENT children, and what the pipeline decides (breaker, rate limit,
    #: replay, fallback) its events.
    span: Span | None = None
    #: What a signed request's ``webhook-id`` says: a queued call's id; empty: one is
    #: made per call.
    message_id: str = ""


@value_type
class DeprecationInfo:
    deprecated: bool = False
    deprecated_at: float | None = None
    sunset_at: float | None = None
    link: str = ""


@value_type
class CallResult:
    status: int
    headers: Headers
    body: bytes
    attempts: int
    replayed: bool = False
    stale: bool = False
    deprecation: DeprecationInfo | None = None
    route: str = ""
    duration: float = 0.0


@value_type
class UpstreamRequest:
    method: str
    url: str
    headers: Headers
    body: bytes
    #: Seconds for the whole attempt (connect + send + read).
    timeout: float
    connect_timeout: float


@value_type
class UpstreamResponse:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


class TransportErrorKind(enum.StrEnum):
    CONNECT = "connect"      # could not connect (refused, DNS, unreachable)
    RESET = "reset"          # connection dropped mid-exchange
    TIMEOUT = "timeout"      # the attempt's time ran out
    TLS = "tls"              # certificate or handshake failure
    PROTOCOL = "protocol"    # malformed HTTP from the upstream
    TOO_LARGE = "too_large"  # response body over the integration's limit


@dataclass
class TransportError(Exception):
    """An attempt produced no HTTP answer. ``detail`` never holds secrets."""

    kind: TransportErrorKind
    detail: str = field(default="")

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value


class Transport(Protocol):
    """The port to the upstream: one HTTP exchange per ``send``."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """The upstream's answer, or ``TransportError`` when there was none."""

    async def close(self) -> None: ...

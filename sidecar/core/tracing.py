"""W3C trace context: parse, validate and start ``traceparent`` / ``tracestate``,
and the trace of the request being handled (a context variable the log lines read).

Malformed input is never an error for the caller: it is treated as absent and
the sidecar starts a trace of its own, as the W3C recommendation asks.
"""

from __future__ import annotations

import contextvars
import random
import re
from collections.abc import Iterable, Mapping

from sidecar.core.values import value_type

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Trace flags the sidecar keeps from a caller: sampled (0x01) and random
#: trace id (0x02, trace context level 2); both stay true of the trace id it
#: forwards. Other bits are unknown to version 00 and are cleared.
KEPT_FLAGS = 0x03
#: tracestate limits from the recommendation: at most 32 list members, and at
#: least 512 characters propagated (members over 128 are dropped first).
TRACESTATE_MAX_MEMBERS = 32
TRACESTATE_MAX_CHARS = 512
TRACESTATE_LONG_MEMBER = 128

_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
#: Ids as OpenTelemetry's SDKs make them: random, unique, cheap on the Call path.
#: They identify, they protect nothing, so a CSPRNG is not needed.
_bits = random.getrandbits
_TS_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}"
    r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}")
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


@value_type
class TraceContext:
    """One trace as the sidecar carries it: ids in lower-case hex."""

    trace_id: str
    #: The span the next hop should name as its parent: the caller's span, or
    #: the sidecar's own when it started the trace.
    span_id: str
    flags: int = 0
    #: Normalised ``tracestate`` ("" when none), passed on unchanged.
    tracestate: str = ""
    #: True when the sidecar started this trace (the caller sent none or a bad one).
    started: bool = False

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child_traceparent(self, span_id: str | None = None) -> str:
        """``traceparent`` for a new hop: same trace, a new parent span id."""
        return f"00-{self.trace_id}-{span_id or new_span_id()}-{self.flags:02x}"

    def attributes(self) -> dict[str, str]:
        """The event attributes that carry this context."""
        if self.tracestate:
            return {TRACEPARENT: self.traceparent, TRACESTATE: self.tracestate}
        return {TRACEPARENT: self.traceparent}


def new_span_id() -> str:
    return f"{_bits(64) or 1:016x}"  # all zeros is the one invalid id


def new_trace(flags: int = 0) -> TraceContext:
    """A fresh trace; not sampled (flags 00) unless the sidecar records spans and its
    sampler chose this trace (``sidecar.core.spans.start_trace``)."""
    return TraceContext(f"{_bits(128) or 1:032x}", new_span_id(), flags, "", True)


def parse_traceparent(value: str) -> tuple[str, str, int] | None:
    """``(trace_id, parent_id, flags)`` from a ``traceparent`` value, or None if invalid.

    Version 00 must be exactly 55 characters. A higher version is read by its
    first four fields (the spec's forward compatibility) and is forwarded as
    version 00; version ff is invalid.
    """
    m = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (rest is not None and version == "00"):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, int(flags, 16) & KEPT_FLAGS


def parse_tracestate(values: Iterable[str]) -> str:
    """Normalised ``tracestate`` from one or more header values; "" if none or invalid.

    An invalid member, a repeated key or more than 32 members discard the
    whole header (it must not be propagated half-understood); over 512
    characters, members longer than 128 go first, then members from the end.
    """
    members: list[str] = []
    keys: set[str] = set()
    for value in values:
        for raw in value.split(","):
            member = raw.strip(" \t")
            if not member:
                continue
            key, eq, val = member.partition("=")
            if not eq or not _TS_KEY.fullmatch(key) or not _TS_VALUE.fullmatch(val):
                return ""
            if key in keys:
                return ""
            keys.add(key)
            members.append(member)
    if len(members) > TRACESTATE_MAX_MEMBERS:
        return ""
    text = ",".join(members)
    if len(text) <= TRACESTATE_MAX_CHARS:
        return text
    members = [m for m in members if len(m) <= TRACESTATE_LONG_MEMBER]
    while members and len(",".join(members)) > TRACESTATE_MAX_CHARS:
        members.pop()
    return ",".join(members)


def from_headers(headers: Iterable[tuple[str, str]]) -> TraceContext | None:
    """The caller's trace from headers or metadata (names compared case-insensitively).

    None when there is no ``traceparent``, more than one, or it is malformed;
    ``tracestate`` is then dropped too.
    """
    parents: list[str] = []
    states: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname == TRACEPARENT:
            parents.append(value)
        elif lname == TRACESTATE:
            states.append(value)
    if len(parents) != 1:
        return None
    parsed = parse_traceparent(parents[0])
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    return TraceContext(trace_id, span_id, flags, parse_tracestate(states) if states else "")


def continue_or_start(headers: Iterable[tuple[str, str]]) -> TraceContext:
    """The caller's trace when it sent a valid one, else a new trace."""
    return from_headers(headers) or new_trace()


def with_trace(attributes: Mapping[str, str], fallback: TraceContext | None
               ) -> tuple[dict[str, str], TraceContext]:
    """Event attributes carrying a valid trace context, and that context.

    The attributes' own ``traceparent`` wins when valid; otherwise ``fallback``
    (the publisher's metadata), otherwise a new trace. An invalid
    ``traceparent`` or an orphan ``tracestate`` is replaced, never stored.
    """
    own = from_headers([(k, attributes[k]) for k in (TRACEPARENT, TRACESTATE)
                        if k in attributes])
    trace = own or fallback or new_trace()
    out = dict(attributes)
    out.pop(TRACESTATE, None)
    out.update(trace.attributes())
    return out, trace


#: The trace of the request this task is handling; log lines carry its id.
current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "sidecar_trace", default=None)


def current_trace_id() -> str:
    trace = current.get()
    return trace.trace_id if trace is not None else ""


__all__ = [
    "TRACEPARENT", "TRACESTATE", "TraceContext", "continue_or_start", "current",
    "current_trace_id", "from_headers", "new_span_id", "new_trace", "parse_traceparent",
    "parse_tracestate", "with_trace",
]

"""The sidecar's own spans: what the core records (``Span``) and where they go
(``SpanRecorder``, implemented by the OTLP exporter in ``sidecar.otlp``).

Spans exist only when export is on and the trace is sampled: everywhere else the
recorder is ``None`` and a ``Span`` is never made.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.core.tracing import TraceContext, new_span_id, new_trace

#: OTLP ``Span.SpanKind`` values.
KIND_SERVER = 2
KIND_CLIENT = 3
#: OTLP ``Status.StatusCode`` values.
STATUS_UNSET = 0
STATUS_ERROR = 2
SAMPLED = 0x01

AttributeValue = str | int | float | bool


class SpanRecorder(Protocol):
    def sample(self) -> bool:
        """Whether a trace the sidecar starts itself is sampled (recorded)."""

    def now_ns(self) -> int:
        """Wall-clock time in nanoseconds since the Unix epoch."""

    def record(self, span: Span) -> None:
        """Take a finished span for export; must not block or raise."""


class Span:
    """One operation of the sidecar in a sampled trace; ``end()`` hands it to the recorder."""

    __slots__ = ("_recorder", "attributes", "end_ns", "events", "kind", "name", "parent_id",
                 "span_id", "start_ns", "status_code", "status_message", "trace_id",
                 "tracestate")

    def __init__(self, recorder: SpanRecorder, trace_id: str, span_id: str, parent_id: str,
                 name: str, kind: int, attributes: dict[str, AttributeValue] | None = None,
                 tracestate: str = "") -> None:
        self._recorder = recorder
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.attributes: dict[str, AttributeValue] = attributes if attributes is not None else {}
        self.tracestate = tracestate
        self.events: list[tuple[int, str, dict[str, AttributeValue]]] = []
        self.status_code = STATUS_UNSET
        self.status_message = ""
        self.start_ns = recorder.now_ns()
        self.end_ns = 0

    def child(self, name: str, kind: int, span_id: str = "",
              attributes: dict[str, AttributeValue] | None = None) -> Span:
        return Span(self._recorder, self.trace_id, span_id or new_span_id(), self.span_id,
                    name, kind, attributes, self.tracestate)

    def event(self, name: str, attributes: dict[str, AttributeValue] | None = None) -> None:
        self.events.append((self._recorder.now_ns(), name, attributes or {}))

    def fail(self, error_type: str) -> None:
        """Status ERROR with ``error.type``: a stable reason or kind, never a message
        (messages can carry what a caller sent)."""
        self.status_code = STATUS_ERROR
        self.status_message = error_type
        self.attributes["error.type"] = error_type

    def end(self) -> None:
        if not self.end_ns:
            self.end_ns = self._recorder.now_ns()
            self._recorder.record(self)


def start_trace(recorder: SpanRecorder) -> TraceContext:
    """A trace the sidecar starts, sampled (flag 01) when the recorder's ratio says so."""
    return new_trace(SAMPLED if recorder.sample() else 0)


def server_span(recorder: SpanRecorder, trace: TraceContext, name: str,
                attributes: dict[str, AttributeValue]) -> tuple[Span | None, TraceContext]:
    """The SERVER span of a request in ``trace`` (None when the trace is not sampled),
    and the context to pass on: the same trace with this span as the next hop's parent.

    A trace the sidecar started has its span id already (the one it hands back):
    that span is the root.
    """
    if not trace.flags & SAMPLED:
        return None, trace
    if trace.started:
        span = Span(recorder, trace.trace_id, trace.span_id, "", name, KIND_SERVER,
                    attributes, trace.tracestate)
        return span, trace
    span = Span(recorder, trace.trace_id, new_span_id(), trace.span_id, name, KIND_SERVER,
                attributes, trace.tracestate)
    return span, TraceContext(trace.trace_id, span.span_id, trace.flags, trace.tracestate)


__all__ = ["KIND_CLIENT", "KIND_SERVER", "STATUS_ERROR", "STATUS_UNSET", "Span", "SpanRecorder",
           "server_span", "start_trace"]

"""Call requests and responses between protos and core, and errors to statuses: what
every RPC adapter module shares."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import timestamp_pb2
from integration_sidecar.v1 import sidecar_pb2 as pb

from sidecar.clock import Clock
from sidecar.core.calls.models import CallRequest, CallResult
from sidecar.core.spans import Span, SpanRecorder, start_trace
from sidecar.core.tracing import (
    TRACEPARENT,
    TRACESTATE,
    TraceContext,
    current,
    from_headers,
    new_trace,
)
from sidecar.errors import SidecarError
from sidecar.rpc.guard import unexpected_error
from sidecar.rpc.status import abort_with

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SidecarService"].full_name


async def fail(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    trace = current.get()
    # Errors carry the trace too: that is when the caller most needs to find the logs.
    extra = ((TRACEPARENT, trace.traceparent),) if trace is not None else ()
    if isinstance(exc, SidecarError):
        await abort_with(context, exc, extra)
    await abort_with(context, unexpected_error(SERVICE_NAME), extra)


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


_TRACE_KEYS = frozenset((TRACEPARENT, TRACESTATE))


def call_trace(request: pb.CallRequest, metadata: Sequence[tuple[str, str | bytes]],
               recorder: SpanRecorder | None = None) -> TraceContext:
    """Metadata is the place for trace context; a caller that put it in the
    request's headers instead is understood too. Else the sidecar starts a trace
    (sampled per ``recorder`` when spans are exported)."""
    found = [(k, v) for k, v in metadata
             if k in _TRACE_KEYS and isinstance(v, str)]
    return ((found and from_headers(found))
            or (request.headers and from_headers((h.name, h.value) for h in request.headers))
            or (new_trace() if recorder is None else start_trace(recorder)))


def call_request(request: pb.CallRequest, context: grpc.aio.ServicerContext,
                 metadata: Sequence[tuple[str, str | bytes]], clock: Clock,
                 trace: TraceContext, span: Span | None = None) -> CallRequest:
    remaining = context.time_remaining()
    key = request.idempotency_key
    if not key:
        key = next((v for k, v in metadata if k == "idempotency-key" and isinstance(v, str)),
                   "")
    # Most calls carry no query and no headers: no generator for those.
    query, headers = request.query, request.headers
    return CallRequest(
        integration=request.integration,
        method=request.method,
        path=request.path,
        query=tuple((q.name, q.value) for q in query) if query else (),
        headers=tuple((h.name, h.value) for h in headers) if headers else (),
        body=request.body,
        idempotency_key=key,
        api_version=request.api_version,
        deadline=None if remaining is None else clock.monotonic() + remaining,
        trace=trace,
        span=span,
    )


def call_response(result: CallResult) -> pb.CallResponse:
    resp = pb.CallResponse(
        status=result.status,
        body=result.body,
        attempts=result.attempts,
        replayed=result.replayed,
        stale=result.stale,
        route=result.route,
        duration_ms=max(0, round(result.duration * 1000)),
    )
    # Built in place: a list of Header messages would be made, then copied in.
    add_header = resp.headers.add
    for name, value in result.headers:
        add_header(name=name, value=value)
    dep = result.deprecation
    if dep is not None:
        resp.deprecation.deprecated = dep.deprecated
        resp.deprecation.link = dep.link
        if (at := timestamp(dep.deprecated_at)) is not None:
            resp.deprecation.deprecated_at.CopyFrom(at)
        if (sunset := timestamp(dep.sunset_at)) is not None:
            resp.deprecation.sunset_at.CopyFrom(sunset)
    return resp



"""SidecarService over gRPC: converts protos to domain calls and errors to statuses.

RPCs whose feature has not landed answer UNIMPLEMENTED naming what is missing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping

import grpc
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar import __version__
from sidecar.clock import Clock, SystemClock
from sidecar.core.calls.pipeline import CallPipeline
from sidecar.core.calls.queue.runner import CallQueue
from sidecar.core.events.feed import FrameCache, Gap
from sidecar.core.events.groups import ConsumerGroups
from sidecar.core.events.live import LiveBus
from sidecar.core.events.models import AckOutcome, StoredEvent
from sidecar.core.events.presence import Presence
from sidecar.core.events.topics import validate_topic
from sidecar.core.spans import AttributeValue, Span, SpanRecorder, server_span, start_trace
from sidecar.core.tracing import (
    TRACEPARENT,
    TRACESTATE,
    TraceContext,
    current,
    from_headers,
    new_trace,
    with_trace,
)
from sidecar.core.webhooks.ingest import WebhookIngest
from sidecar.core.webhooks.verdict import VerifyResult, WebhookRequest
from sidecar.errors import InvalidArgument, NotImplementedYet, SidecarError
from sidecar.rpc.calls import (
    SERVICE_NAME,
    call_request,
    call_response,
    call_trace,
    fail,
    timestamp,
)
from sidecar.rpc.queued_calls import QueuedCallsRpc
from sidecar.rpc.status import grpc_code

log = logging.getLogger("sidecar.rpc")



def _not_yet(rpc: str, what: str) -> NotImplementedYet:
    return NotImplementedYet(
        f"{rpc} is not implemented in integration-sidecar {__version__}: {what}",
        metadata={"rpc": rpc},
    )


def _span_failed(span: Span, exc: Exception) -> None:
    """The RPC's status on its span: the gRPC code and the ErrorInfo reason, no message."""
    if isinstance(exc, SidecarError):
        span.attributes["rpc.grpc.status_code"] = grpc_code(exc).value[0]
        span.fail(exc.reason)
    else:
        span.attributes["rpc.grpc.status_code"] = grpc.StatusCode.INTERNAL.value[0]
        span.fail("INTERNAL")


def _metadata(context: grpc.aio.ServicerContext, *names: str) -> list[tuple[str, str]]:
    out = []
    for key, value in context.invocation_metadata() or ():
        if key in names and isinstance(value, str):
            out.append((key, value))
    return out


def _caller_trace(context: grpc.aio.ServicerContext) -> TraceContext | None:
    """The caller's valid W3C trace context from metadata; malformed counts as absent."""
    return from_headers(_metadata(context, TRACEPARENT, TRACESTATE))


@contextlib.contextmanager
def _traced(trace: TraceContext) -> Iterator[TraceContext]:
    """Log lines emitted inside carry ``trace``'s id."""
    token = current.set(trace)
    try:
        yield trace
    finally:
        # A stream closed from elsewhere runs this in another context: nothing to undo.
        with contextlib.suppress(ValueError):
            current.reset(token)


def _trailer(context: grpc.aio.ServicerContext, trace: TraceContext) -> None:
    """Hand the trace back (trailing metadata ``traceparent``), e.g. when the sidecar started it."""
    context.set_trailing_metadata(((TRACEPARENT, trace.traceparent),))


_VERIFY_RESULTS = {
    VerifyResult.VALID: pb.VERIFY_RESULT_VALID,
    VerifyResult.MISSING_SIGNATURE: pb.VERIFY_RESULT_MISSING_SIGNATURE,
    VerifyResult.INVALID_SIGNATURE: pb.VERIFY_RESULT_INVALID_SIGNATURE,
    VerifyResult.STALE_TIMESTAMP: pb.VERIFY_RESULT_STALE_TIMESTAMP,
    VerifyResult.FUTURE_TIMESTAMP: pb.VERIFY_RESULT_FUTURE_TIMESTAMP,
    VerifyResult.MALFORMED: pb.VERIFY_RESULT_MALFORMED,
}
_START_POSITIONS = {
    pb.START_POSITION_UNSPECIFIED: "latest",
    pb.START_POSITION_LATEST: "latest",
    pb.START_POSITION_EARLIEST: "earliest",
    pb.START_POSITION_AFTER_OFFSET: "after_offset",
    pb.START_POSITION_AFTER_EVENT_ID: "after_event_id",
}
_ACK_OUTCOMES = {
    pb.ACK_OUTCOME_SUCCESS: AckOutcome.SUCCESS,
    pb.ACK_OUTCOME_RETRY: AckOutcome.RETRY,
    pb.ACK_OUTCOME_DEAD_LETTER: AckOutcome.DEAD_LETTER,
}


def event_message(event: StoredEvent, attempt: int = 0) -> pb.Event:
    msg = pb.Event(id=event.id, topic=event.topic, type=event.type, data=event.data,
                   content_type=event.content_type, attributes=event.attributes,
                   offset=event.offset, delivery_attempt=attempt)
    msg.time.FromNanoseconds(int(event.time * 1e9))
    return msg


def _heartbeat() -> pb.SubscribeResponse:
    beat = pb.SubscribeResponse()
    beat.heartbeat.time.GetCurrentTime()
    return beat


class SubscribeFrames:
    """Subscribe's wire format for live feeds: an event's response is built and
    serialised once for every stream it goes to (Subscribe's serialiser passes bytes
    through: see ``rpc.interceptors``)."""

    def __init__(self, entries: int = 256, data_bytes: int = 8 * 1024 * 1024) -> None:
        self.event = FrameCache(_event_response, entries, data_bytes)

    @staticmethod
    def gap(gap: Gap) -> pb.SubscribeResponse:
        return pb.SubscribeResponse(gap=pb.Gap(
            topic=gap.topic, from_offset=gap.from_offset, to_offset=gap.to_offset,
            reason=pb.GAP_REASON_RETENTION if gap.reason == "retention"
            else pb.GAP_REASON_SLOW_CONSUMER))

    @staticmethod
    def subscribed(offsets: Mapping[str, int]) -> pb.SubscribeResponse:
        return pb.SubscribeResponse(subscribed=pb.Subscribed(offsets=offsets))

    heartbeat = staticmethod(_heartbeat)


def _event_response(event: StoredEvent) -> bytes:
    return pb.SubscribeResponse(event=event_message(event)).SerializeToString()


class SidecarServicer(QueuedCallsRpc, pb_grpc.SidecarServiceServicer):
    def __init__(self, *, calls: CallPipeline | None = None,
                 webhooks: WebhookIngest | None = None, groups: ConsumerGroups | None = None,
                 live: LiveBus | None = None, presence: Presence | None = None,
                 clock: Clock | None = None, recorder: SpanRecorder | None = None,
                 queue: CallQueue | None = None) -> None:
        #: Where the RPCs' spans go when export is on; None (the default): no spans.
        self._recorder = recorder
        self._live = live
        self._frames = SubscribeFrames()
        self._presence = presence
        self._calls = calls
        self._webhooks = webhooks
        self._groups = groups
        self._queue = queue
        self._clock = clock or SystemClock()

    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext
                   ) -> pb.CallResponse:
        metadata = context.invocation_metadata() or ()
        span: Span | None = None
        if self._recorder is None:
            trace = call_trace(request, metadata)
        else:
            span, trace = self._rpc_span("Call", call_trace(request, metadata, self._recorder),
                                         {"sidecar.integration": request.integration})
        token = current.set(trace)
        try:
            if self._calls is None:
                raise _not_yet("Call", "no call pipeline is configured")
            result = await self._calls.call(call_request(request, context, metadata,
                                                         self._clock, trace, span))
            _trailer(context, trace)
            return call_response(result)
        except Exception as exc:
            if span is not None:
                _span_failed(span, exc)
            await fail(context, exc)
            raise
        finally:
            current.reset(token)
            if span is not None:
                span.end()

    def _new_trace(self) -> TraceContext:
        return new_trace() if self._recorder is None else start_trace(self._recorder)

    def _rpc_span(self, method: str, trace: TraceContext,
                  attributes: dict[str, AttributeValue]) -> tuple[Span | None, TraceContext]:
        """The RPC's SERVER span when spans are exported and ``trace`` is sampled."""
        if self._recorder is None:
            return None, trace
        return server_span(self._recorder, trace, f"{SERVICE_NAME}/{method}", {
            "rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method,
            "rpc.grpc.status_code": 0, **attributes})

    async def VerifyWebhook(self, request: pb.VerifyWebhookRequest,
                            context: grpc.aio.ServicerContext) -> pb.VerifyWebhookResponse:
        span, trace = self._rpc_span("VerifyWebhook", _caller_trace(context) or self._new_trace(),
                                     {"sidecar.webhook.source": request.source})
        with _traced(trace):
            try:
                return await self._verify_webhook(request, context, trace, span)
            finally:
                if span is not None:
                    span.end()

    async def _verify_webhook(self, request: pb.VerifyWebhookRequest,
                              context: grpc.aio.ServicerContext,
                              trace: TraceContext, span: Span | None) -> pb.VerifyWebhookResponse:
        try:
            if self._webhooks is None:
                raise _not_yet("VerifyWebhook", "no webhook sources are configured")
            if not request.source:
                raise InvalidArgument.of("source", "is required")
            source = self._webhooks.source(request.source)
            if len(request.body) > source.max_body_bytes:
                raise InvalidArgument.of("body", f"{len(request.body)} bytes is over the "
                                                 f"source's limit of {source.max_body_bytes}")
            outcome = await self._webhooks.receive(
                request.source,
                WebhookRequest(tuple((h.name, h.value) for h in request.headers), request.body,
                               request.url),
                record=request.record, trace=trace)
            # The webhook's own trace (its traceparent header) when it has one.
            _trailer(context, outcome.trace or trace)
            verdict = outcome.verdict
            if span is not None:
                span.attributes["sidecar.webhook.result"] = outcome.result
            resp = pb.VerifyWebhookResponse(
                result=_VERIFY_RESULTS[verdict.result], reason=verdict.reason,
                event_id=verdict.event_id, event_type=verdict.event_type,
                duplicate=outcome.duplicate,
                recorded=outcome.stored is not None and not outcome.duplicate)
            if (ts := timestamp(verdict.timestamp)) is not None:
                resp.timestamp.CopyFrom(ts)
            return resp
        except Exception as exc:
            if span is not None:
                _span_failed(span, exc)
            await fail(context, exc)
            raise

    async def Publish(self, request: pb.PublishRequest, context: grpc.aio.ServicerContext
                      ) -> pb.PublishResponse:
        # Trace context in the attributes wins, then the metadata's; else a new trace.
        caller = _caller_trace(context)
        if self._recorder is not None and caller is None:
            caller = start_trace(self._recorder)
        attributes, trace = with_trace(request.attributes, caller)
        span, trace = self._rpc_span("Publish", trace, {
            "messaging.system": "sidecar", "messaging.destination.name": request.topic,
            "messaging.operation.type": "send"})
        if span is not None:
            # Subscribers see the Publish span as the event's parent.
            attributes.update(trace.attributes())
        with _traced(trace):
            try:
                if self._live is None:
                    raise _not_yet("Publish", "the event bus is not configured")
                published = await self._live.publish(
                    request.topic, request.type, request.data, request.content_type,
                    attributes, request.idempotency_key)
                _trailer(context, trace)
                if span is not None:
                    span.attributes.update({"messaging.message.id": published.event_id,
                                            "sidecar.event.offset": published.offset,
                                            "sidecar.event.replayed": published.replayed})
                return pb.PublishResponse(event_id=published.event_id, offset=published.offset,
                                          replayed=published.replayed)
            except Exception as exc:
                if span is not None:
                    _span_failed(span, exc)
                await fail(context, exc)
                raise
            finally:
                if span is not None:
                    span.end()

    # Live events come serialised once for every stream (bytes): GrpcServer registers
    # Subscribe with a serialiser that passes bytes through (rpc.interceptors._rewrap).
    async def Subscribe(  # type: ignore[override]
            self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse | bytes]:
        with _traced(_caller_trace(context) or new_trace()):
            try:
                if not request.group:
                    if self._live is None:
                        raise _not_yet("Subscribe", "the event bus is not configured")
                    # The feed's frames straight to the stream.
                    async for frame in self._live.subscribe(
                            # A value this proto does not know is refused by the bus.
                            list(request.topics), start=_START_POSITIONS.get(
                                request.start, f"START_POSITION {request.start}"),
                            after_offsets=dict(request.after_offsets),
                            after_event_id=request.after_event_id, transport="grpc",
                            announce=True, encoder=self._frames):
                        yield frame
                    return
                if self._groups is None:
                    raise _not_yet("Subscribe", "durable groups are not configured")
                async for delivery in self._groups.consume(
                        request.group, list(request.topics), consumer=request.consumer,
                        max_in_flight=request.max_in_flight):
                    if delivery is None:
                        yield _heartbeat()
                    else:
                        yield pb.SubscribeResponse(event=event_message(delivery.event,
                                                                       delivery.attempt))
            except Exception as exc:
                await fail(context, exc)
                raise

    async def Ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext
                  ) -> pb.AckResponse:
        with _traced(_caller_trace(context) or new_trace()):
            return await self._ack(request, context)

    async def _ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext
                   ) -> pb.AckResponse:
        try:
            if self._groups is None:
                raise _not_yet("Ack", "durable groups are not configured")
            outcome = _ACK_OUTCOMES.get(request.outcome)
            if outcome is None:
                raise InvalidArgument.of("outcome", "must be SUCCESS, RETRY or DEAD_LETTER")
            settled, unknown = await self._groups.ack(request.group, list(request.event_ids),
                                                      outcome, request.error)
            return pb.AckResponse(settled=settled, unknown_event_ids=unknown)
        except Exception as exc:
            await fail(context, exc)
            raise

    async def GetPresence(self, request: pb.GetPresenceRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetPresenceResponse:
        try:
            if self._presence is None:
                raise _not_yet("GetPresence", "the WebSocket edge is not configured")
            problems = validate_topic(request.topic)
            if problems:
                raise InvalidArgument.of("topic", problems[0].description)
            stats = self._presence.stats(request.topic)
            return pb.GetPresenceResponse(topic=stats.topic, connections=stats.connections,
                                          users=stats.users)
        except Exception as exc:
            await fail(context, exc)
            raise

"""EnqueueCall, GetQueuedCall and CancelQueuedCall over gRPC, and a queued call in
its proto3 JSON form (the data of its outcome event)."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from integration_sidecar.v1 import sidecar_pb2 as pb

from sidecar.clock import Clock
from sidecar.core.calls.queue.models import QueuedCall, QueuedState
from sidecar.core.calls.queue.runner import CallQueue
from sidecar.core.tracing import current
from sidecar.errors import NotImplementedYet
from sidecar.rpc.calls import call_request, call_response, call_trace, fail, timestamp

_STATES = {
    QueuedState.QUEUED: pb.QUEUED_CALL_STATE_QUEUED,
    QueuedState.RUNNING: pb.QUEUED_CALL_STATE_RUNNING,
    QueuedState.SUCCEEDED: pb.QUEUED_CALL_STATE_SUCCEEDED,
    QueuedState.FAILED: pb.QUEUED_CALL_STATE_FAILED,
    QueuedState.DEAD: pb.QUEUED_CALL_STATE_DEAD,
    QueuedState.CANCELLED: pb.QUEUED_CALL_STATE_CANCELLED,
}


def queued_call_message(call: QueuedCall) -> pb.QueuedCall:
    msg = pb.QueuedCall(
        id=call.id, integration=call.integration, state=_STATES[call.state],
        attempts=call.attempts, last_status=call.last_status, last_error=call.last_error,
        result_topic=call.result_topic, ordering_key=call.ordering_key,
        idempotency_key=call.idempotency_key)
    for field, seconds in (("created_at", call.created_at),
                           ("next_attempt_at", call.next_attempt_at),
                           ("finished_at", call.finished_at)):
        if (ts := timestamp(seconds)) is not None:
            getattr(msg, field).CopyFrom(ts)
    if call.response is not None:
        msg.response.CopyFrom(call_response(call.response))
    return msg


def queued_call_json(call: QueuedCall) -> dict[str, object]:
    """The QueuedCall in the proto3 JSON mapping, as a dict."""
    doc: dict[str, object] = json_format.MessageToDict(queued_call_message(call))
    return doc


def outcome_data(call: QueuedCall) -> bytes:
    """The outcome event's data: the QueuedCall in the proto3 JSON mapping."""
    return json_format.MessageToJson(queued_call_message(call), indent=None).encode()


class QueuedCallsRpc:
    """The queued-call RPCs of ``SidecarServicer`` (``_queue`` None: not available)."""

    _queue: CallQueue | None
    _clock: Clock

    def _queued(self) -> CallQueue:
        if self._queue is None:
            raise NotImplementedYet(
                "this sidecar's storage keeps no queued calls",
                reason="NOT_IMPLEMENTED", metadata={"rpc": "EnqueueCall"})
        return self._queue

    async def EnqueueCall(self, request: pb.EnqueueCallRequest,
                          context: grpc.aio.ServicerContext) -> pb.EnqueueCallResponse:
        metadata = context.invocation_metadata() or ()
        trace = call_trace(request.call, metadata)
        token = current.set(trace)
        try:
            req = call_request(request.call, context, metadata, self._clock, trace)
            # Read as numbers, not ToNanoseconds(): any int64 the wire carries is a
            # time core can judge (far past: due now; past max_age: refused).
            ts = request.not_before
            not_before = ts.seconds + ts.nanos / 1e9 if request.HasField("not_before") else None
            call, duplicate = await self._queued().enqueue(
                req, not_before=not_before, result_topic=request.result_topic,
                ordering_key=request.ordering_key)
            return pb.EnqueueCallResponse(id=call.id, duplicate=duplicate)
        except Exception as exc:
            await fail(context, exc)
            raise
        finally:
            current.reset(token)

    async def GetQueuedCall(self, request: pb.GetQueuedCallRequest,
                            context: grpc.aio.ServicerContext) -> pb.QueuedCall:
        try:
            return queued_call_message(await self._queued().get(request.id))
        except Exception as exc:
            await fail(context, exc)
            raise

    async def CancelQueuedCall(self, request: pb.CancelQueuedCallRequest,
                               context: grpc.aio.ServicerContext) -> pb.QueuedCall:
        try:
            return queued_call_message(await self._queued().cancel(request.id))
        except Exception as exc:
            await fail(context, exc)
            raise

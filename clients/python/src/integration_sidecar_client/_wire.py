"""Protobuf at the edge: requests built from Python arguments, responses turned into
the dataclasses of ``models``. Shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from integration_sidecar.v1 import sidecar_pb2 as pb

from integration_sidecar_client.models import (
    AckOutcome,
    AckResult,
    CallResponse,
    Deprecation,
    EnqueuedCall,
    Event,
    Gap,
    GapReason,
    Presence,
    PublishResult,
    QueuedCall,
    QueuedCallState,
    Subscribed,
    VerifyResult,
    WebhookVerdict,
)

Headers = Mapping[str, str] | Iterable[tuple[str, str]]

_ACK_OUTCOMES = {
    AckOutcome.SUCCESS: pb.ACK_OUTCOME_SUCCESS,
    AckOutcome.RETRY: pb.ACK_OUTCOME_RETRY,
    AckOutcome.DEAD_LETTER: pb.ACK_OUTCOME_DEAD_LETTER,
}
_VERIFY_RESULTS = {
    pb.VERIFY_RESULT_VALID: VerifyResult.VALID,
    pb.VERIFY_RESULT_MISSING_SIGNATURE: VerifyResult.MISSING_SIGNATURE,
    pb.VERIFY_RESULT_INVALID_SIGNATURE: VerifyResult.INVALID_SIGNATURE,
    pb.VERIFY_RESULT_STALE_TIMESTAMP: VerifyResult.STALE_TIMESTAMP,
    pb.VERIFY_RESULT_FUTURE_TIMESTAMP: VerifyResult.FUTURE_TIMESTAMP,
    pb.VERIFY_RESULT_MALFORMED: VerifyResult.MALFORMED,
}
_GAP_REASONS = {
    pb.GAP_REASON_RETENTION: GapReason.RETENTION,
    pb.GAP_REASON_SLOW_CONSUMER: GapReason.SLOW_CONSUMER,
}
_QUEUED_CALL_STATES = {
    pb.QUEUED_CALL_STATE_QUEUED: QueuedCallState.QUEUED,
    pb.QUEUED_CALL_STATE_RUNNING: QueuedCallState.RUNNING,
    pb.QUEUED_CALL_STATE_SUCCEEDED: QueuedCallState.SUCCEEDED,
    pb.QUEUED_CALL_STATE_FAILED: QueuedCallState.FAILED,
    pb.QUEUED_CALL_STATE_DEAD: QueuedCallState.DEAD,
    pb.QUEUED_CALL_STATE_CANCELLED: QueuedCallState.CANCELLED,
}


def _pairs(items: Headers | None) -> list[tuple[str, str]]:
    if items is None:
        return []
    if isinstance(items, Mapping):
        return [(str(k), str(v)) for k, v in items.items()]
    return [(str(k), str(v)) for k, v in items]


def _time(msg: Any, name: str) -> datetime | None:
    if not msg.HasField(name):
        return None
    stamp = getattr(msg, name)
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC)


# ---------------------------------------------------------------------- requests


def call_request(integration: str, method: str, path: str, *, query: Headers | None,
                 headers: Headers | None, body: bytes, idempotency_key: str | None,
                 api_version: str | None) -> Any:
    return pb.CallRequest(
        integration=integration, method=method.upper(), path=path,
        query=[pb.QueryParam(name=k, value=v) for k, v in _pairs(query)],
        headers=[pb.Header(name=k, value=v) for k, v in _pairs(headers)],
        body=body, idempotency_key=idempotency_key or "", api_version=api_version or "")


def enqueue_call_request(integration: str, method: str, path: str, *, query: Headers | None,
                         headers: Headers | None, body: bytes, idempotency_key: str,
                         api_version: str | None, not_before: datetime | None,
                         result_topic: str, ordering_key: str) -> Any:
    call = call_request(integration, method, path, query=query, headers=headers, body=body,
                        idempotency_key=idempotency_key, api_version=api_version)
    request = pb.EnqueueCallRequest(call=call, result_topic=result_topic,
                                    ordering_key=ordering_key)
    if not_before is not None:
        if not_before.tzinfo is None:
            # A naive time is ambiguous (local? UTC?): a call must not run hours early.
            raise ValueError("not_before must be timezone-aware, e.g. datetime.now(UTC)")
        request.not_before.FromDatetime(not_before)
    return request


def queued_call_request(call_id: str) -> Any:
    return pb.GetQueuedCallRequest(id=call_id)


def cancel_queued_call_request(call_id: str) -> Any:
    return pb.CancelQueuedCallRequest(id=call_id)


def verify_request(source: str, headers: Headers, body: bytes, url: str, record: bool) -> Any:
    return pb.VerifyWebhookRequest(
        source=source, headers=[pb.Header(name=k, value=v) for k, v in _pairs(headers)],
        body=body, url=url, record=record)


def publish_request(topic: str, data: bytes, *, type: str, content_type: str,
                    attributes: Mapping[str, str] | None, idempotency_key: str | None) -> Any:
    return pb.PublishRequest(topic=topic, type=type, data=data, content_type=content_type,
                             attributes=dict(attributes or {}),
                             idempotency_key=idempotency_key or "")


def ack_request(group: str, event_ids: Iterable[str], outcome: AckOutcome, error: str) -> Any:
    return pb.AckRequest(group=group, event_ids=list(event_ids),
                         outcome=_ACK_OUTCOMES[outcome], error=error)


def presence_request(topic: str) -> Any:
    return pb.GetPresenceRequest(topic=topic)


def live_subscribe_request(topics: list[str], *, earliest: bool,
                           after_offsets: Mapping[str, int] | None,
                           after_event_id: str | None) -> Any:
    if after_event_id:
        return pb.SubscribeRequest(topics=topics, start=pb.START_POSITION_AFTER_EVENT_ID,
                                   after_event_id=after_event_id)
    if after_offsets is not None:
        return pb.SubscribeRequest(topics=topics, start=pb.START_POSITION_AFTER_OFFSET,
                                   after_offsets=dict(after_offsets))
    return pb.SubscribeRequest(
        topics=topics, start=pb.START_POSITION_EARLIEST if earliest else pb.START_POSITION_LATEST)


def group_subscribe_request(topics: list[str], group: str, consumer: str,
                            max_in_flight: int) -> Any:
    return pb.SubscribeRequest(topics=topics, group=group, consumer=consumer,
                               max_in_flight=max_in_flight)


# ---------------------------------------------------------------------- responses


def call_response(msg: Any) -> CallResponse:
    deprecation = None
    if msg.HasField("deprecation"):
        d = msg.deprecation
        deprecation = Deprecation(deprecated=bool(d.deprecated),
                                  deprecated_at=_time(d, "deprecated_at"),
                                  sunset_at=_time(d, "sunset_at"), link=str(d.link))
    return CallResponse(
        status=int(msg.status), headers=tuple((str(h.name), str(h.value)) for h in msg.headers),
        body=bytes(msg.body), attempts=int(msg.attempts), replayed=bool(msg.replayed),
        stale=bool(msg.stale), deprecation=deprecation, route=str(msg.route),
        duration=int(msg.duration_ms) / 1000.0)


def enqueued_call(msg: Any) -> EnqueuedCall:
    return EnqueuedCall(id=str(msg.id), duplicate=bool(msg.duplicate))


def queued_call(msg: Any) -> QueuedCall:
    return QueuedCall(
        id=str(msg.id), integration=str(msg.integration),
        state=_QUEUED_CALL_STATES.get(msg.state, QueuedCallState.UNSPECIFIED),
        attempts=int(msg.attempts), created_at=_time(msg, "created_at"),
        next_attempt_at=_time(msg, "next_attempt_at"), finished_at=_time(msg, "finished_at"),
        last_status=int(msg.last_status), last_error=str(msg.last_error),
        response=call_response(msg.response) if msg.HasField("response") else None,
        result_topic=str(msg.result_topic), ordering_key=str(msg.ordering_key),
        idempotency_key=str(msg.idempotency_key))


def queued_call_json(data: bytes | str) -> QueuedCall:
    """A QueuedCall from its proto3 JSON mapping (an outcome event's data). Fields
    this client does not know yet are ignored; raises ValueError for anything else
    that does not parse."""
    msg = pb.QueuedCall()
    try:
        json_format.Parse(data, msg, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a QueuedCall in the proto3 JSON mapping: {exc}") from None
    return queued_call(msg)


def verdict(msg: Any) -> WebhookVerdict:
    return WebhookVerdict(
        result=_VERIFY_RESULTS.get(msg.result, VerifyResult.UNSPECIFIED),
        reason=str(msg.reason), event_id=str(msg.event_id), event_type=str(msg.event_type),
        timestamp=_time(msg, "timestamp"), duplicate=bool(msg.duplicate),
        recorded=bool(msg.recorded))


def publish_result(msg: Any) -> PublishResult:
    return PublishResult(event_id=str(msg.event_id), offset=int(msg.offset),
                         replayed=bool(msg.replayed))


def ack_result(msg: Any) -> AckResult:
    return AckResult(settled=int(msg.settled),
                     unknown_event_ids=tuple(str(i) for i in msg.unknown_event_ids))


def presence(msg: Any) -> Presence:
    return Presence(topic=str(msg.topic), connections=int(msg.connections),
                    users=int(msg.users))


def event(msg: Any) -> Event:
    return Event(
        id=str(msg.id), topic=str(msg.topic), type=str(msg.type), data=bytes(msg.data),
        content_type=str(msg.content_type), offset=int(msg.offset),
        time=_time(msg, "time") or datetime.fromtimestamp(0, UTC),
        attributes={str(k): str(v) for k, v in msg.attributes.items()},
        delivery_attempt=int(msg.delivery_attempt))


def stream_item(msg: Any) -> Event | Gap | Subscribed | None:
    """An event, a gap, a live stream's opening, or None for a heartbeat."""
    kind = msg.WhichOneof("message")
    if kind == "event":
        return event(msg.event)
    if kind == "gap":
        g = msg.gap
        return Gap(topic=str(g.topic), reason=_GAP_REASONS.get(g.reason, GapReason.UNSPECIFIED),
                   from_offset=int(g.from_offset), to_offset=int(g.to_offset))
    if kind == "subscribed":
        return Subscribed({str(t): int(o) for t, o in msg.subscribed.offsets.items()})
    return None

"""The blocking client (sync grpc): the same calls as ``AsyncSidecarClient``, and a
resuming live subscription as a plain iterator."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import grpc
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from integration_sidecar_client import _wire, config
from integration_sidecar_client.config import DEFAULT, Timeout
from integration_sidecar_client.errors import error_from_rpc
from integration_sidecar_client.models import (
    AckOutcome,
    AckResult,
    CallResponse,
    EnqueuedCall,
    Event,
    Gap,
    Presence,
    PublishResult,
    QueuedCall,
    StartPosition,
    WebhookVerdict,
)
from integration_sidecar_client.reconnect import Reconnect, ResumePoint
from integration_sidecar_client.streams import resumable_sync


class SidecarClient:
    """Blocking twin of ``AsyncSidecarClient`` (same arguments, same defaults);
    use it as ``with SidecarClient() as sidecar: ...`` or call ``close()``."""

    def __init__(self, target: str | None = None, *, api_token: str | None = None,
                 timeout: float | None = config.DEFAULT_TIMEOUT,
                 reconnect: Reconnect | None = None,
                 wait_for_ready: bool = False,
                 options: Sequence[tuple[str, Any]] = (),
                 channel: grpc.Channel | None = None) -> None:
        self.target = config.resolve_target(target)
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self.reconnect = reconnect or Reconnect()
        self._metadata = config.auth_metadata(config.resolve_token(api_token))
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else grpc.insecure_channel(
            self.target, options=config.channel_options(options))
        self._stub: Any = pb_grpc.SidecarServiceStub(self._channel)

    def __repr__(self) -> str:  # never the token
        return f"SidecarClient(target={self.target!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def _md(self, extra: Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
        return (*self._metadata, *(extra or ()))

    def _unary(self, method: Any, request: Any, timeout: Timeout,
               metadata: Iterable[tuple[str, str]] | None = None) -> Any:
        try:
            return method(request, timeout=config.deadline(timeout, self.timeout),
                          wait_for_ready=self.wait_for_ready,
                          metadata=self._md(metadata))
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def call(self, integration: str, method: str = "GET", path: str = "", *,
             query: _wire.Headers | None = None, headers: _wire.Headers | None = None,
             body: bytes = b"", idempotency_key: str | None = None,
             api_version: str | None = None, timeout: Timeout = DEFAULT,
             metadata: Iterable[tuple[str, str]] | None = None) -> CallResponse:
        """See ``AsyncSidecarClient.call``."""
        request = _wire.call_request(integration, method, path, query=query, headers=headers,
                                     body=body, idempotency_key=idempotency_key,
                                     api_version=api_version)
        return _wire.call_response(self._unary(self._stub.Call, request, timeout, metadata))

    def enqueue_call(self, integration: str, method: str, path: str, *,
                     idempotency_key: str, query: _wire.Headers | None = None,
                     headers: _wire.Headers | None = None, body: bytes = b"",
                     api_version: str | None = None, not_before: datetime | None = None,
                     result_topic: str = "", ordering_key: str = "",
                     timeout: Timeout = DEFAULT,
                     metadata: Iterable[tuple[str, str]] | None = None) -> EnqueuedCall:
        """See ``AsyncSidecarClient.enqueue_call``."""
        request = _wire.enqueue_call_request(
            integration, method, path, query=query, headers=headers, body=body,
            idempotency_key=idempotency_key, api_version=api_version, not_before=not_before,
            result_topic=result_topic, ordering_key=ordering_key)
        return _wire.enqueued_call(self._unary(self._stub.EnqueueCall, request, timeout,
                                               metadata))

    def get_queued_call(self, call_id: str, *, timeout: Timeout = DEFAULT) -> QueuedCall:
        """See ``AsyncSidecarClient.get_queued_call``."""
        return _wire.queued_call(self._unary(
            self._stub.GetQueuedCall, _wire.queued_call_request(call_id), timeout))

    def cancel_queued_call(self, call_id: str, *, timeout: Timeout = DEFAULT) -> QueuedCall:
        """See ``AsyncSidecarClient.cancel_queued_call``."""
        return _wire.queued_call(self._unary(
            self._stub.CancelQueuedCall, _wire.cancel_queued_call_request(call_id), timeout))

    def verify_webhook(self, source: str, headers: _wire.Headers, body: bytes, *,
                       url: str = "", record: bool = False,
                       timeout: Timeout = DEFAULT) -> WebhookVerdict:
        """See ``AsyncSidecarClient.verify_webhook``."""
        request = _wire.verify_request(source, headers, body, url, record)
        return _wire.verdict(self._unary(self._stub.VerifyWebhook, request, timeout))

    def publish(self, topic: str, data: bytes = b"", *, type: str = "",
                content_type: str = "", attributes: Mapping[str, str] | None = None,
                idempotency_key: str | None = None, timeout: Timeout = DEFAULT,
                metadata: Iterable[tuple[str, str]] | None = None) -> PublishResult:
        """See ``AsyncSidecarClient.publish``."""
        request = _wire.publish_request(topic, data, type=type, content_type=content_type,
                                        attributes=attributes, idempotency_key=idempotency_key)
        return _wire.publish_result(self._unary(self._stub.Publish, request, timeout,
                                                metadata))

    def ack(self, group: str, event_ids: str | Iterable[str],
            outcome: AckOutcome = AckOutcome.SUCCESS, *, error: str = "",
            timeout: Timeout = DEFAULT) -> AckResult:
        """See ``AsyncSidecarClient.ack``."""
        ids = [event_ids] if isinstance(event_ids, str) else list(event_ids)
        request = _wire.ack_request(group, ids, outcome, error)
        return _wire.ack_result(self._unary(self._stub.Ack, request, timeout))

    def get_presence(self, topic: str, *, timeout: Timeout = DEFAULT) -> Presence:
        """See ``AsyncSidecarClient.get_presence``."""
        return _wire.presence(self._unary(self._stub.GetPresence,
                                          _wire.presence_request(topic), timeout))

    def subscribe(self, topics: str | Iterable[str], *,
                  start: StartPosition = StartPosition.LATEST,
                  after_offsets: Mapping[str, int] | None = None,
                  after_event_id: str | None = None,
                  reconnect: Reconnect | None = None) -> SyncSubscription:
        """See ``AsyncSidecarClient.subscribe``; iterate with ``for`` (or ``with``),
        stop with ``close()`` from the iterating thread."""
        names = [topics] if isinstance(topics, str) else list(topics)
        point = ResumePoint(names, start, after_offsets, after_event_id)
        return SyncSubscription(self._open_stream, point, reconnect or self.reconnect)

    def _open_stream(self, request: Any) -> Any:
        return self._stub.Subscribe(request, metadata=self._md(None))


class SyncSubscription:
    """A live subscription for the blocking client (an iterator of Event and Gap)."""

    def __init__(self, open_stream: Callable[[Any], Any], point: ResumePoint,
                 reconnect: Reconnect) -> None:
        self._point = point
        self._items = resumable_sync(open_stream, point.request, reconnect, point.accept)

    @property
    def offsets(self) -> dict[str, int]:
        """Per topic, the last offset yielded: persist it to resume in a later run."""
        return self._point.offsets

    def __iter__(self) -> Iterator[Event | Gap]:
        return self._items

    def __next__(self) -> Event | Gap:
        return next(self._items)

    def close(self) -> None:
        self._items.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

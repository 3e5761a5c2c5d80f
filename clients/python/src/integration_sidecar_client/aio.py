"""The asyncio client (grpc.aio): unary calls with a default deadline, and live
subscriptions that resume after the stream breaks."""

# ``timeout`` is the gRPC deadline sent to the sidecar, which bounds its work (retries,
# backoff) by it; an asyncio.timeout around the call could not tell the sidecar.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import grpc
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from integration_sidecar_client import _wire, config
from integration_sidecar_client.config import DEFAULT, Timeout
from integration_sidecar_client.consumer import consume
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
from integration_sidecar_client.outcomes import consume_call_outcomes
from integration_sidecar_client.reconnect import Reconnect, ResumePoint
from integration_sidecar_client.streams import resumable

Handler = Callable[[Event], Awaitable[None]]


class AsyncSidecarClient:
    """Talks to the sidecar over one grpc.aio channel.

    ``target``: ``host:port`` or ``unix:///path``; default ``$SIDECAR_ADDRESS`` or
    ``127.0.0.1:50051``. ``api_token``: sent as ``authorization: Bearer ...`` on every
    call; default ``$SIDECAR_API_TOKEN``. ``timeout``: seconds, the deadline of every
    unary call unless the call passes its own (None: no deadline). ``reconnect``: how
    subscriptions wait before resubscribing. ``wait_for_ready``: a unary call made
    while the sidecar is unreachable (starting, restarting) waits for it within the
    deadline instead of failing at once with ``SidecarUnreachableError``.
    ``options``: extra grpc channel options. ``channel``: an existing channel to use
    (then ``target`` and ``options`` are ignored and closing the client leaves it open).

    Use it as ``async with AsyncSidecarClient() as sidecar: ...`` or call ``close()``.
    """

    def __init__(self, target: str | None = None, *, api_token: str | None = None,
                 timeout: float | None = config.DEFAULT_TIMEOUT,
                 reconnect: Reconnect | None = None,
                 wait_for_ready: bool = False,
                 options: Sequence[tuple[str, Any]] = (),
                 channel: grpc.aio.Channel | None = None) -> None:
        self.target = config.resolve_target(target)
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self.reconnect = reconnect or Reconnect()
        self._metadata = config.auth_metadata(config.resolve_token(api_token))
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else grpc.aio.insecure_channel(
            self.target, options=config.channel_options(options))
        self._stub: Any = pb_grpc.SidecarServiceStub(self._channel)

    def __repr__(self) -> str:  # never the token
        return f"AsyncSidecarClient(target={self.target!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    def _md(self, extra: Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
        return (*self._metadata, *(extra or ()))

    async def _unary(self, method: Any, request: Any, timeout: Timeout,
                     metadata: Iterable[tuple[str, str]] | None = None) -> Any:
        try:
            return await method(request, timeout=config.deadline(timeout, self.timeout),
                                wait_for_ready=self.wait_for_ready,
                                metadata=self._md(metadata))
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    async def call(self, integration: str, method: str = "GET", path: str = "", *,
                   query: _wire.Headers | None = None, headers: _wire.Headers | None = None,
                   body: bytes = b"", idempotency_key: str | None = None,
                   api_version: str | None = None, timeout: Timeout = DEFAULT,
                   metadata: Iterable[tuple[str, str]] | None = None) -> CallResponse:
        """One HTTP request to a configured integration, through the sidecar's retries,
        breaker, rate limit and idempotency. Any upstream status is a CallResponse;
        a SidecarError means no usable answer exists. ``metadata`` carries extra gRPC
        metadata such as ``traceparent``."""
        request = _wire.call_request(integration, method, path, query=query, headers=headers,
                                     body=body, idempotency_key=idempotency_key,
                                     api_version=api_version)
        return _wire.call_response(await self._unary(self._stub.Call, request, timeout,
                                                     metadata))

    async def enqueue_call(self, integration: str, method: str, path: str, *,
                           idempotency_key: str, query: _wire.Headers | None = None,
                           headers: _wire.Headers | None = None, body: bytes = b"",
                           api_version: str | None = None, not_before: datetime | None = None,
                           result_topic: str = "", ordering_key: str = "",
                           timeout: Timeout = DEFAULT,
                           metadata: Iterable[tuple[str, str]] | None = None) -> EnqueuedCall:
        """Store a call for asynchronous delivery; the answer comes once it is durable.

        The sidecar attempts it through the same pipeline as ``call``, retrying on a
        long schedule, and appends the outcome to ``result_topic`` (default
        ``calls.<integration>``; read it with ``consume_call_outcomes``).
        ``idempotency_key`` is required: it identifies the queued call (the same key
        and request again answer the same id with ``duplicate=True``; the same key
        with another request raises ``IdempotencyKeyReusedError``) and goes upstream on
        every attempt. Derive it from the operation (``idempotency_key_for``) so a
        retried enqueue cannot queue the call twice. ``not_before``: a timezone-aware
        time before which it is not attempted. ``ordering_key``: calls with the same
        key run one at a time, in enqueue order.
        """
        request = _wire.enqueue_call_request(
            integration, method, path, query=query, headers=headers, body=body,
            idempotency_key=idempotency_key, api_version=api_version, not_before=not_before,
            result_topic=result_topic, ordering_key=ordering_key)
        return _wire.enqueued_call(await self._unary(self._stub.EnqueueCall, request, timeout,
                                                     metadata))

    async def get_queued_call(self, call_id: str, *, timeout: Timeout = DEFAULT) -> QueuedCall:
        """Where queued call ``call_id`` stands (``NotFoundError``, reason
        ``QUEUED_CALL_NOT_FOUND``, when there is none)."""
        return _wire.queued_call(await self._unary(
            self._stub.GetQueuedCall, _wire.queued_call_request(call_id), timeout))

    async def cancel_queued_call(self, call_id: str, *,
                                 timeout: Timeout = DEFAULT) -> QueuedCall:
        """Stop queued call ``call_id``: a QUEUED call ends CANCELLED at once; a RUNNING
        one after its attempt, unless that attempt succeeded; a finished call is
        returned unchanged."""
        return _wire.queued_call(await self._unary(
            self._stub.CancelQueuedCall, _wire.cancel_queued_call_request(call_id), timeout))

    async def verify_webhook(self, source: str, headers: _wire.Headers, body: bytes, *,
                             url: str = "", record: bool = False,
                             timeout: Timeout = DEFAULT) -> WebhookVerdict:
        """Check a webhook the app received itself (``body``: the exact raw bytes)."""
        request = _wire.verify_request(source, headers, body, url, record)
        return _wire.verdict(await self._unary(self._stub.VerifyWebhook, request, timeout))

    async def publish(self, topic: str, data: bytes = b"", *, type: str = "",
                      content_type: str = "", attributes: Mapping[str, str] | None = None,
                      idempotency_key: str | None = None, timeout: Timeout = DEFAULT,
                      metadata: Iterable[tuple[str, str]] | None = None) -> PublishResult:
        """Append one event to ``topic`` and fan it out to live subscribers."""
        request = _wire.publish_request(topic, data, type=type, content_type=content_type,
                                        attributes=attributes, idempotency_key=idempotency_key)
        return _wire.publish_result(await self._unary(self._stub.Publish, request, timeout,
                                                      metadata))

    async def ack(self, group: str, event_ids: str | Iterable[str],
                  outcome: AckOutcome = AckOutcome.SUCCESS, *, error: str = "",
                  timeout: Timeout = DEFAULT) -> AckResult:
        """Settle events delivered to a durable group (``error``: why, for RETRY and
        DEAD_LETTER, up to 2000 characters)."""
        ids = [event_ids] if isinstance(event_ids, str) else list(event_ids)
        request = _wire.ack_request(group, ids, outcome, error)
        return _wire.ack_result(await self._unary(self._stub.Ack, request, timeout))

    async def get_presence(self, topic: str, *, timeout: Timeout = DEFAULT) -> Presence:
        """WebSocket connections and distinct users in room ``topic`` on this sidecar."""
        return _wire.presence(await self._unary(self._stub.GetPresence,
                                                _wire.presence_request(topic), timeout))

    def subscribe(self, topics: str | Iterable[str], *,
                  start: StartPosition = StartPosition.LATEST,
                  after_offsets: Mapping[str, int] | None = None,
                  after_event_id: str | None = None,
                  reconnect: Reconnect | None = None) -> Subscription:
        """A live subscription: an async iterator of ``Event`` and ``Gap`` items.

        When the stream breaks (sidecar restart, SHUTTING_DOWN, connection reset,
        SLOW_CONSUMER) it resubscribes after a backoff from the last offset it yielded
        per topic, so no event is lost or repeated. Heartbeats are swallowed. A ``Gap``
        says events of a topic will not arrive (the log no longer holds them, or they
        were dropped for a slow consumer). ``after_offsets`` (per topic, the last
        offset already had) and ``after_event_id`` override ``start``. The stream
        opens when iteration starts.
        """
        names = [topics] if isinstance(topics, str) else list(topics)
        point = ResumePoint(names, start, after_offsets, after_event_id)
        return Subscription(self._open_stream, point, reconnect or self.reconnect)

    def _open_stream(self, request: Any) -> Any:
        return self._stub.Subscribe(request, metadata=self._md(None))

    async def subscribe_group(self, group: str, consumer: str, topics: str | Iterable[str],
                              *, max_in_flight: int = 10, reconnect: Reconnect | None = None
                              ) -> AsyncGenerator[Event, None]:
        """Events delivered to member ``consumer`` of durable ``group``, for apps that
        ack by hand with ``ack()`` (``consume`` does it for you). At most
        ``max_in_flight`` unacked events are outstanding; the stream is reopened after
        a backoff when it breaks (the sidecar then redelivers what was not acked)."""
        names = [topics] if isinstance(topics, str) else list(topics)
        request = _wire.group_subscribe_request(names, group, consumer, max_in_flight)
        async for item in resumable(self._open_stream, lambda: request,
                                    reconnect or self.reconnect):
            if isinstance(item, Event):  # groups send no gaps
                yield item

    async def consume(self, group: str, consumer: str, topics: str | Iterable[str],
                      handler: Handler, *, max_in_flight: int = 10,
                      reconnect: Reconnect | None = None,
                      on_settled: Callable[[Event, AckOutcome], None] | None = None) -> None:
        """Run ``handler`` for every event delivered to ``consumer`` of durable ``group``
        until cancelled; see ``integration_sidecar_client.consumer.consume``."""
        await consume(self, group, consumer, topics, handler, max_in_flight=max_in_flight,
                      reconnect=reconnect, on_settled=on_settled)

    async def consume_call_outcomes(self, group: str, consumer: str,
                                    topics: str | Iterable[str],
                                    handler: Callable[[QueuedCall], Awaitable[None]], *,
                                    max_in_flight: int = 10, reconnect: Reconnect | None = None,
                                    on_settled: Callable[[Event, AckOutcome], None] | None = None
                                    ) -> None:
        """``consume`` for queued-call result topics: ``handler`` gets every outcome as
        a ``QueuedCall`` (at least once: key on its ``id``); see
        ``integration_sidecar_client.outcomes.consume_call_outcomes``."""
        await consume_call_outcomes(self, group, consumer, topics, handler,
                                    max_in_flight=max_in_flight, reconnect=reconnect,
                                    on_settled=on_settled)


class Subscription:
    """A live subscription (``AsyncSidecarClient.subscribe``): iterate it with
    ``async for``; ``offsets`` says where it is; ``aclose()`` (or ``async with``)
    ends the stream."""

    def __init__(self, open_stream: Callable[[Any], Any], point: ResumePoint,
                 reconnect: Reconnect) -> None:
        self._point = point
        self._items = resumable(open_stream, point.request, reconnect, point.accept)

    @property
    def offsets(self) -> dict[str, int]:
        """Per topic, the last offset yielded: persist it to resume in a later run."""
        return self._point.offsets

    def __aiter__(self) -> AsyncIterator[Event | Gap]:
        return self._items

    async def __anext__(self) -> Event | Gap:
        return await anext(self._items)

    async def aclose(self) -> None:
        await self._items.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

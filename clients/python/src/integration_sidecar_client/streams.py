"""Subscribe streams that survive the sidecar: read a stream, and when it breaks
(or ends) reopen it after a backoff with a fresh request (the resume point)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

import grpc

from integration_sidecar_client import _wire
from integration_sidecar_client.errors import (
    InvalidArgumentError,
    SidecarError,
    SlowConsumerError,
    UnavailableError,
    error_from_rpc,
)
from integration_sidecar_client.models import Event, Gap, Subscribed
from integration_sidecar_client.reconnect import Reconnect

log = logging.getLogger("integration_sidecar_client")


def reconnectable(error: SidecarError, reconnecting: bool) -> bool:
    """Whether resubscribing may help: the sidecar is unreachable, restarting or
    stopping (UNAVAILABLE), the stream was cut for a slow consumer, or (only while
    reconnecting) the sidecar still holds the previous stream's group member."""
    if isinstance(error, UnavailableError | SlowConsumerError):
        return True
    if error.code is grpc.StatusCode.INTERNAL and not error.reason:
        return True  # the connection died mid-stream (RST_STREAM, GOAWAY)
    return reconnecting and isinstance(error, InvalidArgumentError) and any(
        v.field == "consumer" for v in error.field_violations)


class _Attempts:
    """Counts failed attempts in a row and says how long to wait before the next."""

    def __init__(self, reconnect: Reconnect) -> None:
        self._reconnect = reconnect
        self._failed = 0

    def succeeded(self) -> None:
        self._failed = 0

    def failed(self, err: grpc.RpcError | None) -> float:
        """Seconds to wait before reopening the stream that ended with ``err`` (None:
        it ended normally); raises the typed error when reopening cannot help."""
        failure = error_from_rpc(err) if err is not None else None
        if failure is not None and not reconnectable(failure, self._failed > 0):
            raise failure
        self._failed += 1
        if self._reconnect.gives_up(self._failed):
            raise failure or UnavailableError("the subscription stream ended",
                                              code=grpc.StatusCode.UNAVAILABLE)
        delay = self._reconnect.delay(self._failed)
        log.info("subscription stream broke (%s); resubscribing in %.3fs",
                 (failure.reason or failure.code.name) if failure else "ended", delay)
        return delay


Item = Event | Gap | Subscribed


def _keep_all(item: Item) -> bool:
    return True


async def resumable(open_stream: Callable[[Any], Any], request: Callable[[], Any],
                    reconnect: Reconnect, accept: Callable[[Item], bool] = _keep_all
                    ) -> AsyncGenerator[Event | Gap, None]:
    """Events and gaps from ``open_stream(request())`` that ``accept`` keeps, reopened
    until a non-reconnectable error or ``reconnect.max_attempts`` failures in a row.
    ``accept`` also sees each stream's opening (``Subscribed``), which is not yielded."""
    attempts = _Attempts(reconnect)
    while True:
        call = open_stream(request())
        error: grpc.RpcError | None = None
        try:
            async for msg in call:
                attempts.succeeded()
                if (item := _wire.stream_item(msg)) is not None and accept(item) \
                        and not isinstance(item, Subscribed):
                    yield item
        except grpc.RpcError as err:
            error = err
        finally:
            call.cancel()
        await reconnect.sleep(attempts.failed(error))


def resumable_sync(open_stream: Callable[[Any], Any], request: Callable[[], Any],
                   reconnect: Reconnect, accept: Callable[[Item], bool] = _keep_all
                   ) -> Generator[Event | Gap, None, None]:
    """``resumable`` for the sync client (blocking reads, ``reconnect.sync_sleep``)."""
    attempts = _Attempts(reconnect)
    while True:
        call = open_stream(request())
        error: grpc.RpcError | None = None
        try:
            for msg in call:
                attempts.succeeded()
                if (item := _wire.stream_item(msg)) is not None and accept(item) \
                        and not isinstance(item, Subscribed):
                    yield item
        except grpc.RpcError as err:
            error = err
        finally:
            call.cancel()
        reconnect.sync_sleep(attempts.failed(error))

"""Server interceptors: gRPC metrics for every RPC, and the optional API token."""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import ServerInterceptor

from sidecar.errors import Unauthenticated
from sidecar.metrics import Metrics
from sidecar.rpc.status import abort_with

HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


_CODE_BY_INT = {c.value[0]: c.name for c in grpc.StatusCode}


def _final_code(context: grpc.aio.ServicerContext, failed: BaseException | None) -> str:
    """The status the RPC ended with, whichever way the handler ended it."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int) and code != 0:
        return str(_CODE_BY_INT.get(code, "UNKNOWN"))
    if failed is None:
        return "OK"
    if isinstance(failed, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


def _rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Any], Any],
    stream: Callable[[Any], Any],
) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behaviour is wrapped (unary or streaming response)."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kw)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kw)


class MetricsInterceptor(ServerInterceptor):  # type: ignore[misc]
    """Records grpc_server_started/handled/handling_seconds/msg_sent for every RPC."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        # method -> (the handler we wrapped, its wrapper): registered handlers are
        # the same object on every call, so each is wrapped once, not per RPC.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(details.method, handler)
        if len(self._wrapped) < 1000:  # bounded: method names come from clients
            self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, method = _split(full_method)
        labels = (_rpc_type(handler), service, method)
        m = self._m
        started = m.grpc_started.labels(*labels)

        def finish(context: grpc.aio.ServicerContext, start: float,
                   failed: BaseException | None) -> None:
            code = _final_code(context, failed)
            m.grpc_handled.labels(*labels, code).inc()
            m.grpc_handling_seconds.labels(*labels, code).observe(time.perf_counter() - start)

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started.inc()
                start = time.perf_counter()
                failed: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    failed = exc
                    raise
                finally:
                    finish(context, start, failed)

            return wrapped

        def stream(behavior: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
            # A streaming handler is either an async generator or a coroutine that
            # calls context.write() itself (grpc_health's Watch); serve both.
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> None:
                started.inc()
                start = time.perf_counter()
                failed: BaseException | None = None
                sent = m.grpc_msg_sent.labels(*labels)
                try:
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            await context.write(item)
                            sent.inc()
                    else:
                        await result
                except BaseException as exc:
                    failed = exc
                    raise
                finally:
                    finish(context, start, failed)

            return wrapped

        return _rewrap(handler, unary, stream)


class ApiTokenInterceptor(ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without ``authorization: Bearer <token>`` (health is exempt for probes)."""

    def __init__(self, token: str, metrics: Metrics) -> None:
        self._token = token.encode()
        self._m = metrics

    def _authorised(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else bytes(value)
                scheme, _, token = raw.partition(b" ")
                if scheme.lower() == b"bearer":
                    # Constant time, so the token cannot be guessed byte by byte.
                    return hmac.compare_digest(token.strip(), self._token)
        return False

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_SERVICE_PREFIX):
            return handler
        if self._authorised(details):
            return handler
        self._m.grpc_auth_failures.inc()
        error = Unauthenticated(
            "missing or invalid API token: send metadata 'authorization: Bearer <token>'"
        )

        def unary(_: Any) -> Callable[..., Awaitable[Any]]:
            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await abort_with(context, error)

            return refuse

        def stream(_: Any) -> Callable[..., AsyncIterator[Any]]:
            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[
                    Any]:
                await abort_with(context, error)
                yield  # pragma: no cover - makes this an async generator

            return refuse

        return _rewrap(handler, unary, stream)

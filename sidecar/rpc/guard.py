"""No RPC answers ``UNKNOWN`` or shows an exception's text (a handler wrapper).

grpc.aio answers a request it cannot decode (garbage bytes, a string field that is not
UTF-8) with ``UNKNOWN`` and the deserialiser's exception text, and an exception a
handler did not expect the same way. Here the first is ``INVALID_ARGUMENT``
(``MALFORMED_REQUEST``) and the second ``INTERNAL``; both carry ErrorInfo, and the
second a correlation id that the log line with its stack trace also has.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from sidecar.errors import Internal, InvalidArgument
from sidecar.rpc.status import abort_with

log = logging.getLogger("sidecar.rpc")

#: The reason a request that is not a valid message of its RPC's type gets.
MALFORMED_REQUEST = "MALFORMED_REQUEST"


class _Undecodable:
    """Stands in for a request whose bytes did not decode."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _decoding(deserializer: Callable[[bytes], Any] | None
              ) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # whatever the message library raises for bad bytes
            return _Undecodable(type(exc).__name__)

    return deserialize


def _malformed(method: str) -> InvalidArgument:
    error = InvalidArgument(
        f"the request is not a valid {method.rsplit('/', 1)[-1]} request message (bad "
        "protobuf bytes, or a string field that is not UTF-8)", reason="MALFORMED_REQUEST")
    error.metadata = {"method": method}
    return error


def unexpected_error(method: str) -> Internal:
    """Log the exception being handled with a fresh correlation id (and its stack), and
    return the INTERNAL error that names the same id. Call from an ``except`` block.
    ``method``: the RPC, or the service when the caller does not know which."""
    correlation = secrets.token_hex(8)
    log.exception("unexpected error in RPC handler",
                  extra={"method": method, "correlation_id": correlation})
    return Internal(f"internal error (correlation id {correlation}); see the sidecar's log",
                    metadata={"correlation_id": correlation, "method": method})


async def _internal(context: grpc.aio.ServicerContext, method: str) -> None:
    await abort_with(context, unexpected_error(method))


class RequestGuard:
    """Wraps every handler: undecodable requests are refused before the handler runs,
    and what escapes a handler is ``INTERNAL`` with details. Install it innermost, so
    the other wrappers (metrics, the API token) see the status it sets."""

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kw = {"request_deserializer": _decoding(handler.request_deserializer),
              "response_serializer": handler.response_serializer}

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if type(request) is _Undecodable:
                    await abort_with(context, _malformed(full_method))
                try:
                    return await behavior(request, context)
                except Exception as exc:
                    if _ended(context, exc):
                        raise
                    await _internal(context, full_method)

            return guarded

        def stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if type(request) is _Undecodable:
                    await abort_with(context, _malformed(full_method))
                try:
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                except Exception as exc:
                    if _ended(context, exc):
                        raise
                    await _internal(context, full_method)

            return guarded

        if handler.request_streaming:
            return handler  # no client-streaming RPCs: nothing to guard
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kw)


def _ended(context: grpc.aio.ServicerContext, exc: Exception) -> bool:
    """Whether ``exc`` is how the RPC already ended (an abort, with its status set)."""
    if isinstance(exc, grpc.aio.AbortError | grpc.aio.UsageError):
        return True
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK and code != 0

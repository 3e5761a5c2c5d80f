"""Every failed RPC becomes one of these, built from the gRPC status and its
``google.rpc`` details (ErrorInfo, RetryInfo, BadRequest) at the client boundary.

    SidecarError                         any failed RPC: code, reason, metadata, ...
    ├── InvalidArgumentError             INVALID_ARGUMENT (field_violations)
    ├── NotFoundError                    NOT_FOUND
    │                                    (INTEGRATION_NOT_FOUND, WEBHOOK_SOURCE_NOT_FOUND,
    │                                     CONSUMER_GROUP_NOT_FOUND, QUEUED_CALL_NOT_FOUND)
    ├── UnauthenticatedError             UNAUTHENTICATED (API_TOKEN_INVALID)
    ├── UnavailableError                 UNAVAILABLE
    │   ├── CircuitOpenError             CIRCUIT_OPEN (retry_delay)
    │   ├── UpstreamUnreachableError     UPSTREAM_UNREACHABLE, UPSTREAM_TLS_ERROR
    │   ├── StorageUnavailableError      STORAGE_UNAVAILABLE
    │   ├── ShuttingDownError            SHUTTING_DOWN
    │   └── SidecarUnreachableError      no answer from the sidecar itself (reason "")
    ├── ResourceExhaustedError           RESOURCE_EXHAUSTED
    │   ├── RateLimitedError             RATE_LIMITED (retry_delay)
    │   ├── BulkheadFullError            BULKHEAD_FULL
    │   ├── ResponseTooLargeError        RESPONSE_TOO_LARGE
    │   └── SlowConsumerError            SLOW_CONSUMER
    ├── DeadlineExceededError            DEADLINE_EXCEEDED (the sidecar's or this client's)
    │   └── UpstreamTimeoutError         UPSTREAM_TIMEOUT
    ├── AbortedError                     ABORTED
    │   └── IdempotencyInFlightError     IDEMPOTENCY_IN_FLIGHT
    ├── FailedPreconditionError          FAILED_PRECONDITION
    │   └── IdempotencyKeyReusedError    IDEMPOTENCY_KEY_REUSED
    ├── UnimplementedError               UNIMPLEMENTED (NOT_IMPLEMENTED)
    ├── CancelledRpcError                CANCELLED
    └── InternalError                    INTERNAL, UNKNOWN and any other code

The class is chosen by reason first (when the sidecar sent an ``ErrorInfo`` in its
domain), then by gRPC code. Messages come from the sidecar, which never puts a
secret in them; the client adds only the code and reason (never metadata it sent,
such as the API token).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The ``ErrorInfo.domain`` of every error the sidecar itself reports.
ERROR_DOMAIN = "integration-sidecar"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request, from ``google.rpc.BadRequest``; ``field`` is a
    dotted path such as ``path`` or ``topics[1]``."""

    field: str
    description: str


class SidecarError(Exception):
    """Root of every error this client raises for a failed RPC.

    ``code`` is the gRPC status code; ``reason`` the sidecar's stable UPPER_SNAKE
    reason (empty when the failure did not come from the sidecar, e.g. it is not
    running or the client's deadline passed); ``metadata`` the ErrorInfo metadata;
    ``retry_delay`` the seconds the sidecar suggests waiting (RetryInfo) or None;
    ``field_violations`` the invalid fields (BadRequest).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        self.message = message
        self.code = code
        self.reason = reason
        self.domain = domain
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.retry_delay = retry_delay
        self.field_violations = field_violations
        label = reason or code.name
        super().__init__(f"{label}: {message}" if message else label)

    @property
    def upstream_reached(self) -> str:
        """For a failed ``call``: whether the upstream may have received the request,
        ``"no"``, ``"maybe"`` or ``"yes"``. ``"no"`` means trying again (or another
        way) cannot repeat a side effect. Errors that did not come from the sidecar's
        Call (it was unreachable, this client's deadline passed) say ``"maybe"``."""
        return self.metadata.get("upstream_reached", "maybe")

    @property
    def attempts(self) -> int | None:
        """For a failed ``call``: how many attempts the sidecar sent; None if unknown."""
        value = self.metadata.get("attempts", "")
        return int(value) if value.isdigit() else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r})"


class InvalidArgumentError(SidecarError):
    pass


class NotFoundError(SidecarError):
    pass


class UnauthenticatedError(SidecarError):
    pass


class UnavailableError(SidecarError):
    pass


class CircuitOpenError(UnavailableError):
    pass


class UpstreamUnreachableError(UnavailableError):
    pass


class StorageUnavailableError(UnavailableError):
    pass


class ShuttingDownError(UnavailableError):
    pass


class SidecarUnreachableError(UnavailableError):
    """The sidecar did not answer at all (not running, restarting, wrong address)."""


class ResourceExhaustedError(SidecarError):
    pass


class RateLimitedError(ResourceExhaustedError):
    pass


class BulkheadFullError(ResourceExhaustedError):
    pass


class ResponseTooLargeError(ResourceExhaustedError):
    pass


class SlowConsumerError(ResourceExhaustedError):
    pass


class DeadlineExceededError(SidecarError):
    pass


class UpstreamTimeoutError(DeadlineExceededError):
    pass


class AbortedError(SidecarError):
    pass


class IdempotencyInFlightError(AbortedError):
    pass


class FailedPreconditionError(SidecarError):
    pass


class IdempotencyKeyReusedError(FailedPreconditionError):
    pass


class UnimplementedError(SidecarError):
    pass


class CancelledRpcError(SidecarError):
    pass


class InternalError(SidecarError):
    pass


_BY_REASON: dict[str, type[SidecarError]] = {
    "CIRCUIT_OPEN": CircuitOpenError,
    "UPSTREAM_UNREACHABLE": UpstreamUnreachableError,
    "UPSTREAM_TLS_ERROR": UpstreamUnreachableError,
    "STORAGE_UNAVAILABLE": StorageUnavailableError,
    "SHUTTING_DOWN": ShuttingDownError,
    "RATE_LIMITED": RateLimitedError,
    "BULKHEAD_FULL": BulkheadFullError,
    "RESPONSE_TOO_LARGE": ResponseTooLargeError,
    "SLOW_CONSUMER": SlowConsumerError,
    "UPSTREAM_TIMEOUT": UpstreamTimeoutError,
    "IDEMPOTENCY_IN_FLIGHT": IdempotencyInFlightError,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReusedError,
}

_BY_CODE: dict[grpc.StatusCode, type[SidecarError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.CANCELLED: CancelledRpcError,
}


def _error_class(code: grpc.StatusCode, reason: str) -> type[SidecarError]:
    cls = _BY_REASON.get(reason)
    # A reason only refines the class its code maps to, so `except UnavailableError`
    # holds whatever the reason table says.
    base = _BY_CODE.get(code, InternalError)
    if cls is not None and issubclass(cls, base):
        return cls
    if code is grpc.StatusCode.UNAVAILABLE and not reason:
        return SidecarUnreachableError
    return base


def _status_details(trailing: Any) -> Any:
    status = status_pb2.Status()
    for key, value in trailing or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status.ParseFromString(value)
    return status


def error_from_rpc(err: grpc.RpcError) -> SidecarError:
    """The typed error for a failed RPC (sync or asyncio), with its rich details."""
    code: grpc.StatusCode = err.code() if callable(getattr(err, "code", None)) \
        else grpc.StatusCode.UNKNOWN
    message = str(err.details() or "") if callable(getattr(err, "details", None)) else ""
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) \
        else ()
    reason = domain = ""
    metadata: dict[str, str] = {}
    delay: float | None = None
    violations: list[FieldViolation] = []
    for detail in _status_details(trailing).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            domain = str(info.domain)
            # Reasons from other domains (a proxy, grpc itself) are kept but not
            # used to pick a class: only the sidecar's reasons are stable.
            reason = str(info.reason)
            metadata = {str(k): str(v) for k, v in info.metadata.items()}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(str(v.field), str(v.description))
                              for v in bad.field_violations)
    cls = _error_class(code, reason if domain == ERROR_DOMAIN else "")
    return cls(message, code=code, reason=reason, domain=domain, metadata=metadata,
               retry_delay=delay, field_violations=tuple(violations))

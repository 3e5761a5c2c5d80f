"""The one table from sidecar errors to gRPC status codes with ``google.rpc`` details."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from sidecar import errors

#: Every ErrorInfo carries this domain, so callers can tell our reasons apart.
ERROR_DOMAIN = "integration-sidecar"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

GRPC_CODES: dict[type[errors.SidecarError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotImplementedYet: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def grpc_code(error: errors.SidecarError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in GRPC_CODES:
            return GRPC_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: errors.SidecarError) -> tuple[grpc.StatusCode, str, bytes]:
    """The gRPC code, message and serialised ``google.rpc.Status`` for ``error``."""
    code = grpc_code(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    info.metadata.update(error.metadata)
    status.details.add().Pack(info)
    if isinstance(error, errors.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest()
        for v in error.violations:
            bad.field_violations.add(field=v.field, description=v.description)
        status.details.add().Pack(bad)
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(max(0.0, error.retry_after) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return code, error.message, status.SerializeToString()


async def abort_with(context: grpc.aio.ServicerContext, error: errors.SidecarError,
                     metadata: tuple[tuple[str, str], ...] = ()) -> None:
    """End the RPC with ``error``'s status and rich details, plus ``metadata`` (raises)."""
    code, message, details = to_status(error)
    await context.abort(code, message,
                        trailing_metadata=((STATUS_DETAILS_KEY, details), *metadata))

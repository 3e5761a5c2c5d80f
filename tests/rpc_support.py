"""Helpers for asserting on gRPC errors and their google.rpc details."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass
class RichError:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]
    retry_delay: float | None


def rich_error(err: grpc.aio.AioRpcError) -> RichError:
    status = status_pb2.Status()
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status.ParseFromString(value)
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    retry = error_details_pb2.RetryInfo()
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    delay = None
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return RichError(err.code(), err.details() or "", reason, domain, metadata, violations,
                     delay)

"""The sidecar's error hierarchy: one root, one stable reason per error.

Adapters translate these into transport answers in one table each
(``sidecar.rpc.status`` for gRPC); the core raises nothing else.

    SidecarError
    ├── InvalidArgument           INVALID_ARGUMENT (field violations)
    ├── NotFound                  INTEGRATION_NOT_FOUND, WEBHOOK_SOURCE_NOT_FOUND, ...
    ├── Unauthenticated           API_TOKEN_INVALID
    ├── Unavailable               CIRCUIT_OPEN, UPSTREAM_UNREACHABLE, STORAGE_UNAVAILABLE, ...
    │   └── UpstreamAuthFailed    UPSTREAM_AUTH_FAILED
    ├── ResourceExhausted         RATE_LIMITED, BULKHEAD_FULL, ...
    ├── DeadlineExceeded          DEADLINE_EXCEEDED
    ├── Aborted                   IDEMPOTENCY_IN_FLIGHT
    ├── FailedPrecondition        IDEMPOTENCY_KEY_REUSED
    ├── NotImplementedYet         NOT_IMPLEMENTED
    └── Internal                  INTERNAL
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: ``field`` is a dotted path."""

    field: str
    description: str


class SidecarError(Exception):
    """Root of every error the sidecar reports to a caller.

    ``reason`` is a stable UPPER_SNAKE identifier callers may switch on;
    ``message`` is for humans and never contains a secret.
    """

    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        #: Seconds after which retrying may succeed, when known.
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message})"


class InvalidArgument(SidecarError):
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: list[FieldViolation] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = list(violations or [])

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"{field}: {description}", violations=[FieldViolation(field, description)])


class NotFound(SidecarError):
    default_reason = "NOT_FOUND"


class Unauthenticated(SidecarError):
    default_reason = "API_TOKEN_INVALID"


class Unavailable(SidecarError):
    default_reason = "UNAVAILABLE"


class ResourceExhausted(SidecarError):
    default_reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(SidecarError):
    default_reason = "DEADLINE_EXCEEDED"


class Aborted(SidecarError):
    default_reason = "ABORTED"


class FailedPrecondition(SidecarError):
    default_reason = "FAILED_PRECONDITION"


class NotImplementedYet(SidecarError):
    """A documented capability this build does not provide yet."""

    default_reason = "NOT_IMPLEMENTED"


class Internal(SidecarError):
    default_reason = "INTERNAL"


class StorageUnavailable(Unavailable):
    default_reason = "STORAGE_UNAVAILABLE"


class UpstreamAuthFailed(Unavailable):
    """No credential for the upstream (its OAuth2 token endpoint failed). UNAVAILABLE,
    not UNAUTHENTICATED: the caller's own credentials are fine, and the condition is
    the sidecar's to clear (endpoint back, secret fixed), so retrying later helps."""

    default_reason = "UPSTREAM_AUTH_FAILED"

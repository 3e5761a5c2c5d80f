"""Typed Python client for the integration sidecar's gRPC API.

``AsyncSidecarClient`` (asyncio) and ``SidecarClient`` (blocking) make calls with a
default deadline; failures raise the ``SidecarError`` hierarchy (``errors``);
``subscribe`` resumes after the sidecar restarts; ``consume`` runs a durable-group
consumer with acks and retries. ``enqueue_call`` queues a call for durable asynchronous
delivery; ``consume_call_outcomes`` (or ``queued_call_outcome`` on any event) reads how
queued calls ended.
"""

from integration_sidecar_client.aio import AsyncSidecarClient, Subscription
from integration_sidecar_client.config import DEFAULT, DEFAULT_TARGET, DEFAULT_TIMEOUT
from integration_sidecar_client.consumer import DeadLetter
from integration_sidecar_client.errors import (
    AbortedError,
    BulkheadFullError,
    CancelledRpcError,
    CircuitOpenError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    IdempotencyInFlightError,
    IdempotencyKeyReusedError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    RateLimitedError,
    ResourceExhaustedError,
    ResponseTooLargeError,
    ShuttingDownError,
    SidecarError,
    SidecarUnreachableError,
    SlowConsumerError,
    StorageUnavailableError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from integration_sidecar_client.idempotency import idempotency_key_for, new_idempotency_key
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
    StartPosition,
    VerifyResult,
    WebhookVerdict,
)
from integration_sidecar_client.outcomes import (
    OUTCOME_TYPES,
    default_result_topic,
    queued_call_outcome,
)
from integration_sidecar_client.reconnect import Reconnect
from integration_sidecar_client.sync import SidecarClient, SyncSubscription

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "OUTCOME_TYPES",
    "AbortedError",
    "AckOutcome",
    "AckResult",
    "AsyncSidecarClient",
    "BulkheadFullError",
    "CallResponse",
    "CancelledRpcError",
    "CircuitOpenError",
    "DeadLetter",
    "DeadlineExceededError",
    "Deprecation",
    "EnqueuedCall",
    "Event",
    "FailedPreconditionError",
    "FieldViolation",
    "Gap",
    "GapReason",
    "IdempotencyInFlightError",
    "IdempotencyKeyReusedError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "Presence",
    "PublishResult",
    "QueuedCall",
    "QueuedCallState",
    "RateLimitedError",
    "Reconnect",
    "ResourceExhaustedError",
    "ResponseTooLargeError",
    "ShuttingDownError",
    "SidecarClient",
    "SidecarError",
    "SidecarUnreachableError",
    "SlowConsumerError",
    "StartPosition",
    "StorageUnavailableError",
    "Subscription",
    "SyncSubscription",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UpstreamTimeoutError",
    "UpstreamUnreachableError",
    "VerifyResult",
    "WebhookVerdict",
    "default_result_topic",
    "idempotency_key_for",
    "new_idempotency_key",
    "queued_call_outcome",
]

"""What the client returns: small frozen dataclasses and enums, so callers never
handle protobuf messages (``_wire`` converts at the boundary)."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class StartPosition(enum.Enum):
    """Where a live subscription begins (``subscribe(start=...)``)."""

    #: Only events published after the subscription starts.
    LATEST = "latest"
    #: Every event the topic's log still retains, then live events.
    EARLIEST = "earliest"


class AckOutcome(enum.Enum):
    """How a durable-group event was settled."""

    #: Processed; never deliver again.
    SUCCESS = "success"
    #: Not processed; deliver again after the group's retry backoff.
    RETRY = "retry"
    #: Cannot be processed; dead-letter now (an operator may replay it).
    DEAD_LETTER = "dead_letter"


class VerifyResult(enum.Enum):
    """The verdict of ``verify_webhook``."""

    UNSPECIFIED = "unspecified"
    VALID = "valid"
    MISSING_SIGNATURE = "missing_signature"
    INVALID_SIGNATURE = "invalid_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    MALFORMED = "malformed"


class GapReason(enum.Enum):
    """Why a subscription skipped events."""

    UNSPECIFIED = "unspecified"
    #: The requested start is older than what the log retains.
    RETENTION = "retention"
    #: Events were dropped because the subscriber fell behind.
    SLOW_CONSUMER = "slow_consumer"


class QueuedCallState(enum.Enum):
    """Where a queued call stands (``enqueue_call``, ``get_queued_call``)."""

    UNSPECIFIED = "unspecified"
    #: Waiting for its next attempt (``next_attempt_at``).
    QUEUED = "queued"
    #: An attempt is in flight.
    RUNNING = "running"
    #: A 2xx answer, in ``response``.
    SUCCEEDED = "succeeded"
    #: An answer no retry can change (a 4xx other than 408/409/425/429, a 3xx), in
    #: ``response``; or the integration can no longer take the call.
    FAILED = "failed"
    #: The retry schedule or the call's maximum age ran out.
    DEAD = "dead"
    #: Cancelled before it finished.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the state can no longer change (short of an operator's replay)."""
        return self in _FINISHED


_FINISHED = frozenset({QueuedCallState.SUCCEEDED, QueuedCallState.FAILED,
                       QueuedCallState.DEAD, QueuedCallState.CANCELLED})


def _header_values(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    wanted = name.lower()
    return [v for k, v in headers if k.lower() == wanted]


@dataclass(frozen=True)
class Deprecation:
    """What the upstream announced about the API's lifetime (RFC 9745, RFC 8594)."""

    deprecated: bool
    deprecated_at: datetime | None
    sunset_at: datetime | None
    link: str


@dataclass(frozen=True)
class CallResponse:
    """The upstream's final HTTP answer to ``call`` (any status: 4xx/5xx included)."""

    status: int
    #: (name, value) pairs in order; a name may repeat.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: Upstream attempts made (0 when replayed or served from the fallback).
    attempts: int
    #: Replayed from the idempotency store: the upstream was not called again.
    replayed: bool
    #: The breaker was open and this is the last good answer (fallback).
    stale: bool
    deprecation: Deprecation | None
    #: The configured route that matched, or "".
    route: str
    #: Seconds the sidecar spent on the call, retries included.
    duration: float

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = _header_values(self.headers, name)
        return values[0] if values else None

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def text(self, encoding: str = "utf-8") -> str:
        return self.body.decode(encoding)


@dataclass(frozen=True)
class WebhookVerdict:
    """The answer of ``verify_webhook``: an invalid signature is a verdict, not an error."""

    result: VerifyResult
    #: Human-readable detail; never a secret or an expected signature.
    reason: str
    event_id: str
    event_type: str
    timestamp: datetime | None
    #: With ``record=True``: the event id was already stored (nothing stored again).
    duplicate: bool
    #: With ``record=True``: the event was stored by this call.
    recorded: bool

    @property
    def valid(self) -> bool:
        return self.result is VerifyResult.VALID


@dataclass(frozen=True)
class PublishResult:
    event_id: str
    #: Position in the topic's log (from 1, +1 per event).
    offset: int
    #: The idempotency key was seen before: nothing was published.
    replayed: bool


@dataclass(frozen=True)
class Event:
    """One event from a subscription (a published event or a received webhook)."""

    id: str
    topic: str
    type: str
    data: bytes
    content_type: str
    offset: int
    time: datetime
    attributes: Mapping[str, str] = field(default_factory=dict)
    #: Durable groups: 1 on first delivery, more on redelivery; 0 for live streams.
    delivery_attempt: int = 0

    def json(self) -> Any:
        """``data`` parsed as JSON."""
        return json.loads(self.data)


@dataclass(frozen=True)
class Gap:
    """Events ``from_offset``..``to_offset`` (inclusive) of ``topic`` will not arrive."""

    topic: str
    reason: GapReason
    from_offset: int
    to_offset: int


@dataclass(frozen=True)
class Subscribed:
    """A live stream's first message: per topic, the offset the stream continues after
    (consumed by the subscription's resume point, never yielded)."""

    offsets: Mapping[str, int]


@dataclass(frozen=True)
class AckResult:
    #: How many of the given events this call settled.
    settled: int
    #: Ids the group did not hold as in flight (unknown, settled, or redelivered).
    unknown_event_ids: tuple[str, ...]


@dataclass(frozen=True)
class Presence:
    """WebSocket connections and distinct users in a room, on this sidecar."""

    topic: str
    connections: int
    users: int


@dataclass(frozen=True)
class EnqueuedCall:
    """The answer of ``enqueue_call``: the call is stored durably."""

    #: The queued call's id (``qc_...``), for ``get_queued_call`` and outcome events.
    id: str
    #: The idempotency key was already enqueued with the same request: ``id`` is that
    #: call's, and nothing new was queued.
    duplicate: bool


@dataclass(frozen=True)
class QueuedCall:
    """A queued call and where it stands; also what an outcome event carries."""

    id: str
    integration: str
    state: QueuedCallState
    #: Attempts that went out so far.
    attempts: int
    created_at: datetime | None
    #: When the next attempt is due; None unless QUEUED.
    next_attempt_at: datetime | None
    #: None until it finished.
    finished_at: datetime | None
    #: HTTP status of the last attempt's answer; 0 when it got none.
    last_status: int
    #: Reason of the last attempt that got no answer (``UPSTREAM_UNREACHABLE``) or of a
    #: refusal (``CIRCUIT_OPEN``); "" otherwise.
    last_error: str
    #: The final answer, once SUCCEEDED (or FAILED with one); else None.
    response: CallResponse | None
    result_topic: str
    ordering_key: str
    idempotency_key: str

    @property
    def finished(self) -> bool:
        return self.state.finished

"""What a queued call is, and the policy that schedules its attempts."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sidecar.core.calls.models import CallRequest, CallResult


class QueuedState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({QueuedState.SUCCEEDED, QueuedState.FAILED, QueuedState.DEAD,
                    QueuedState.CANCELLED})
#: The outcome event's type for each final state that announces one.
EVENT_TYPES = {QueuedState.SUCCEEDED: "call.succeeded", QueuedState.FAILED: "call.failed",
               QueuedState.DEAD: "call.dead"}


@dataclass(frozen=True)
class QueuedCall:
    """One queued call and where it stands. Times are Unix seconds."""

    id: str
    request: CallRequest
    #: What makes two enqueues "the same" for the idempotency key.
    fingerprint: str
    created_at: float
    result_topic: str
    ordering_key: str = ""
    state: QueuedState = QueuedState.QUEUED
    attempts: int = 0
    #: When the next attempt is due (QUEUED), else None.
    next_attempt_at: float | None = None
    finished_at: float | None = None
    #: The last attempt's HTTP status, 0 when it got none.
    last_status: int = 0
    #: The last attempt's error reason (``UPSTREAM_UNREACHABLE``, ...), or "".
    last_error: str = ""
    #: The final answer once SUCCEEDED or FAILED with one.
    response: CallResult | None = None
    #: CancelQueuedCall came while an attempt ran: no further attempt.
    cancel_requested: bool = False
    #: The outcome event was appended to ``result_topic``.
    announced: bool = False

    @property
    def integration(self) -> str:
        return self.request.integration

    @property
    def idempotency_key(self) -> str:
        return self.request.idempotency_key

    def moved(self, **changes: object) -> QueuedCall:
        return replace(self, **changes)  # type: ignore[arg-type]


#: About 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Stripe's and Svix's spirit).
DEFAULT_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: Answers that end a call as FAILED at once: a 4xx, except those that say "later".
DEFAULT_RETRYABLE_4XX = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class QueuePolicy:
    """How one integration's queued calls are attempted."""

    #: Seconds before each retry (the first attempt goes at once): its length is the
    #: number of retries.
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    #: Each pause is drawn from [1 - jitter, 1] of its step.
    jitter: float = 0.2
    #: Seconds after enqueue past which no attempt starts (the call is DEAD).
    max_age: float = 3 * 24 * 3600.0
    #: Attempts of this integration's queued calls in flight at once.
    concurrency: int = 8
    #: 4xx statuses that are retried rather than FAILED.
    retryable_4xx: frozenset[int] = field(default=DEFAULT_RETRYABLE_4XX)

    def pause(self, retry: int, rand: Callable[[], float] = random.random) -> float | None:
        """Seconds before retry number ``retry`` (1 = the first), None past the end."""
        if retry > len(self.schedule):
            return None
        step = self.schedule[retry - 1]
        return step * (1.0 - self.jitter * rand())

    def failed_for_good(self, status: int) -> bool:
        return 400 <= status < 500 and status not in self.retryable_4xx

"""Plain data for the event log and durable consumer groups."""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field


def new_event_id(now: float | None = None) -> str:
    """``evt_`` + 48-bit milliseconds + 80 random bits, hex: unique and roughly time-sorted."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    return f"evt_{ms:012x}{os.urandom(10).hex()}"


@dataclass(frozen=True)
class NewEvent:
    id: str
    topic: str
    type: str = ""
    data: bytes = b""
    content_type: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEvent:
    id: str
    topic: str
    offset: int
    type: str
    data: bytes
    content_type: str
    attributes: dict[str, str]
    #: Unix seconds when the sidecar accepted the event.
    time: float


@dataclass(frozen=True)
class IngestResult:
    event: StoredEvent
    #: True when the source already stored this provider event id (nothing stored).
    duplicate: bool


class DeliveryStatus(enum.StrEnum):
    """Where an event stands for one consumer group."""

    PENDING = "pending"        # not handed to a member yet
    DELIVERED = "delivered"    # handed to a member, awaiting its ack
    FAILED = "failed"          # acked with retry (or ack timed out); redelivery scheduled
    COMPLETED = "completed"    # acked with success
    DEAD = "dead"              # gave up: max attempts, or acked as dead-letter


class AckOutcome(enum.StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Delivery:
    event: StoredEvent
    #: 1 on the first delivery to the group.
    attempt: int


@dataclass(frozen=True)
class DeliveryRecord:
    """One event's state in one group, for listing and replay."""

    group: str
    event_id: str
    topic: str
    offset: int
    type: str
    status: DeliveryStatus
    attempts: int
    consumer: str
    last_error: str
    #: Unix seconds: when an in-flight delivery times out, or a retry is due.
    due_at: float | None
    received_at: float


@dataclass(frozen=True)
class GroupPolicy:
    """How a durable group redelivers."""

    #: Seconds a member has to ack before the event goes to another delivery.
    ack_timeout: float = 30.0
    #: Deliveries before the event is dead-lettered.
    max_attempts: int = 10
    #: Where a new group starts on a topic: "earliest" (every retained event)
    #: or "latest" (only events after it was created).
    start: str = "earliest"

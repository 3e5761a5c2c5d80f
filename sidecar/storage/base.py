"""The storage interface every backend implements (SQLite and Redis): the ports core
declares (idempotency records, the event log, durable groups, webhook records, queued
calls) plus
what operators and the process need.

Times are Unix seconds passed in by the caller, so backends never read a clock of
their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from sidecar.core.calls.queue.store import QueueStore
from sidecar.core.events.groups import GroupStore
from sidecar.core.events.models import DeliveryRecord, DeliveryStatus, NewEvent, StoredEvent
from sidecar.core.idempotency import ClaimStatus, IdempotencyClaim, IdempotencyStore
from sidecar.core.webhooks.ingest import EventStore


class Storage(EventStore, GroupStore, IdempotencyStore, QueueStore, Protocol):
    """Durable state shared by the sidecar's features."""

    #: Short name for logs and metrics, e.g. ``sqlite``.
    backend: str

    async def open(self) -> None:
        """Connect and bring the schema up to date (runs migrations)."""

    async def close(self) -> None:
        """Flush and release everything; safe to call twice."""

    async def check(self) -> None:
        """Raise ``StorageUnavailable`` when the backend cannot serve."""

    async def schema_version(self) -> int:
        """The schema version the store is at."""

    async def append_event(self, event: NewEvent, *, now: float,
                           durable: bool = True) -> StoredEvent:
        """Append to the event's topic, assigning the next offset. ``durable=False``:
        answering before the write is safe from power loss is acceptable."""

    async def read_events(self, topic: str, *, after: int, limit: int) -> list[StoredEvent]:
        """Events of ``topic`` with offsets above ``after``, oldest first."""

    async def topic_bounds(self, topic: str) -> tuple[int, int]:
        """(first retained offset, last offset)."""

    async def list_deliveries(self, *, group: str | None = None, topic: str | None = None,
                              status: DeliveryStatus | None = None,
                              limit: int = 100) -> list[DeliveryRecord]:
        """Events' states in durable groups, for operators."""

    async def count_deliveries(self) -> dict[tuple[str, str, str], int]:
        """(group, topic, status) -> count."""

    async def requeue(self, group: str, *, event_ids: Sequence[str] = (),
                      statuses: Sequence[DeliveryStatus] = (DeliveryStatus.DEAD,),
                      now: float) -> int:
        """Replay dead (or failed) events: due now, attempts reset."""

    async def prune(self, *, now: float, limit: int = 1000,
                    events_before: float | None = None,
                    durable_topics: Mapping[str, float] | None = None,
                    max_per_topic: int | None = None) -> int:
        """Delete at most ``limit`` expired records per kind; events older than
        ``events_before`` or beyond ``max_per_topic`` per topic, except topics in
        ``durable_topics``, which keep events until their own cutoff (a time).
        Returns how many records went."""


__all__ = ["ClaimStatus", "IdempotencyClaim", "Storage"]

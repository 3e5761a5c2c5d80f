"""The storage interface every backend implements (SQLite now, Redis later).

It holds idempotency records now; webhook events and the event log join it
with the features that need them. Times are Unix seconds passed in by the
caller, so backends never read a clock of their own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class ClaimStatus(enum.Enum):
    #: The key was free (or its old in-flight lease ran out): the caller owns it.
    CLAIMED = "claimed"
    #: Another call with this key and request is still running.
    IN_FLIGHT = "in_flight"
    #: The key was used with a different request fingerprint.
    CONFLICT = "conflict"
    #: The key completed before with this request; ``response`` holds the answer.
    COMPLETED = "completed"


@dataclass(frozen=True)
class IdempotencyClaim:
    status: ClaimStatus
    response: bytes | None = None


class Storage(Protocol):
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

    async def idempotency_claim(
        self, scope: str, key: str, fingerprint: str, *, now: float, lease: float
    ) -> IdempotencyClaim:
        """Atomically claim ``key`` in ``scope`` for a request with ``fingerprint``.

        A claim is in flight for ``lease`` seconds (so a crashed caller does not
        block the key forever).
        """

    async def idempotency_complete(
        self, scope: str, key: str, response: bytes, *, now: float, ttl: float
    ) -> None:
        """Store the final response for a claimed key."""

    async def idempotency_release(self, scope: str, key: str) -> None:
        """Drop an in-flight claim whose call produced no storable answer."""

    async def prune(self, *, now: float, limit: int = 1000) -> int:
        """Delete at most ``limit`` expired records; returns how many went."""

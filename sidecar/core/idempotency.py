"""Idempotency records: the port the Call pipeline and Publish need from storage.

A caller's idempotency key is claimed atomically with the request's fingerprint; the
first caller runs the operation and completes the claim with its answer, which later
callers with the same key and request get back. The storage backends (SQLite, Redis)
implement :class:`IdempotencyStore`; core never imports them.
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


class IdempotencyStore(Protocol):
    """Idempotency records; times are Unix seconds passed in by the caller."""

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

"""Retry budget: retries may add at most a fixed fraction to an upstream's load.

Per-call attempt limits cannot stop a retry storm when every call fails; a
budget shared by all calls to one integration can (as in Finagle and Envoy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sidecar.clock import Clock

#: Retries may add 20% to the request rate, Finagle's and Linkerd's default.
DEFAULT_RATIO = 0.2
#: Retries per second allowed regardless of traffic, so a quiet integration can
#: still retry a lone failure; small enough not to matter to a busy upstream.
DEFAULT_MIN_RETRIES_PER_SECOND = 1.0
#: Seconds of history the ratio is measured over.
DEFAULT_WINDOW = 10.0
#: The window moves in steps of window / WINDOW_BUCKETS: memory stays constant
#: and an old request stops counting between 90% and 100% of the window later.
WINDOW_BUCKETS = 10

# Absorbs float error in ratio * requests (0.2 * 3 is 0.6000000000000001).
_EPSILON = 1e-9


@dataclass(frozen=True)
class RetryBudgetPolicy:
    """Within any ``window``: retries <= ratio x requests + min_retries_per_second x window."""

    ratio: float = DEFAULT_RATIO
    #: Retries per second.
    min_retries_per_second: float = DEFAULT_MIN_RETRIES_PER_SECOND
    #: Seconds.
    window: float = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.ratio < 0:
            raise ValueError("ratio must be >= 0")
        if self.min_retries_per_second < 0:
            raise ValueError("min_retries_per_second must be >= 0")
        if self.window <= 0:
            raise ValueError("window must be > 0")


class RetryBudget:
    """Counts first attempts and retries over a sliding window; not thread-safe."""

    def __init__(self, policy: RetryBudgetPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._width = policy.window / WINDOW_BUCKETS
        self._floor = policy.min_retries_per_second * policy.window
        # Per bucket: [requests, retries]; the ring is indexed by bucket number.
        self._buckets = [[0, 0] for _ in range(WINDOW_BUCKETS)]
        self._head = math.floor(clock.monotonic() / self._width)
        self._requests = 0
        self._retries = 0

    @property
    def policy(self) -> RetryBudgetPolicy:
        return self._policy

    def record_request(self) -> None:
        """Count one call (its first attempt); each one earns ``ratio`` of a retry."""
        self._current()[0] += 1
        self._requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False means do not retry."""
        bucket = self._current()
        if self._retries + 1 > self._allowance():
            return False
        bucket[1] += 1
        self._retries += 1
        return True

    @property
    def available(self) -> int:
        """Retries that could be spent right now."""
        self._current()
        return max(0, self._allowance() - self._retries)

    def _allowance(self) -> int:
        return math.floor(self._policy.ratio * self._requests + self._floor + _EPSILON)

    def _current(self) -> list[int]:
        """The bucket for now, after dropping buckets that left the window."""
        index = math.floor(self._clock.monotonic() / self._width)
        if index > self._head:
            # Only the buckets stepped over are cleared, at most the whole ring.
            for stale in range(self._head + 1, min(index, self._head + WINDOW_BUCKETS) + 1):
                bucket = self._buckets[stale % WINDOW_BUCKETS]
                self._requests -= bucket[0]
                self._retries -= bucket[1]
                bucket[0] = bucket[1] = 0
            self._head = index
        return self._buckets[self._head % WINDOW_BUCKETS]

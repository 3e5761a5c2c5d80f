"""Circuit breaker: stop calling an upstream that keeps failing, then probe it.

Owns the CLOSED -> OPEN -> HALF_OPEN state machine and the sliding window of
call outcomes that trips it. Callers settle a ``Permit`` per call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sidecar.clock import Clock
from sidecar.errors import Unavailable

log = logging.getLogger(__name__)

#: Failures in a row that open the breaker: a dead upstream is detected within
#: a handful of calls even when traffic is too thin for the rate window.
DEFAULT_CONSECUTIVE_FAILURES = 5
#: Seconds of outcomes the failure and slow-call rates are measured over.
DEFAULT_WINDOW = 60.0
#: Calls the window must hold before a rate may trip it; fewer are noise.
DEFAULT_MINIMUM_CALLS = 20
DEFAULT_FAILURE_RATE_THRESHOLD = 0.5
#: Slow-call tripping is off unless configured: "slow" depends on the upstream.
DEFAULT_SLOW_CALL_RATE_THRESHOLD = 0.0
#: Seconds; half the default per-attempt timeout.
DEFAULT_SLOW_CALL_DURATION = 5.0
#: Seconds the breaker stays open before probing.
DEFAULT_OPEN_DURATION = 30.0
DEFAULT_HALF_OPEN_PROBES = 3
DEFAULT_CLOSE_AFTER = 3
#: Seconds after which an unsettled probe is presumed lost and its slot freed;
#: longer than the default total call timeout (30 s) so live probes are kept.
DEFAULT_PROBE_TIMEOUT = 60.0
#: The window moves in steps of window / WINDOW_BUCKETS (1 s for 60 s), which
#: bounds memory whatever the call rate.
WINDOW_BUCKETS = 60
#: Seconds a caller is told to wait while every half-open probe is taken; the
#: probes' outcome is usually known within one call's duration.
PROBES_BUSY_RETRY_AFTER = 1.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


TransitionCallback = Callable[[BreakerState, BreakerState], None]


class BreakerOpenError(Unavailable):
    """The breaker refused the call; ``retry_after`` says when to try again."""

    default_reason = "CIRCUIT_OPEN"


@dataclass(frozen=True)
class BreakerPolicy:
    """When the breaker opens and how it recovers. A threshold of 0 disables that trigger."""

    consecutive_failures: int = DEFAULT_CONSECUTIVE_FAILURES
    #: Seconds.
    window: float = DEFAULT_WINDOW
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    #: Fraction of calls in the window, 0..1.
    failure_rate_threshold: float = DEFAULT_FAILURE_RATE_THRESHOLD
    #: Fraction of calls in the window, 0..1.
    slow_call_rate_threshold: float = DEFAULT_SLOW_CALL_RATE_THRESHOLD
    #: Seconds; a call at least this long is slow.
    slow_call_duration: float = DEFAULT_SLOW_CALL_DURATION
    #: Seconds.
    open_duration: float = DEFAULT_OPEN_DURATION
    #: Probe calls allowed in flight at once while half-open.
    half_open_probes: int = DEFAULT_HALF_OPEN_PROBES
    #: Successful probes that close the breaker.
    close_after: int = DEFAULT_CLOSE_AFTER
    #: Seconds.
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0:
            raise ValueError("consecutive_failures must be >= 0")
        if self.window <= 0:
            raise ValueError("window must be > 0")
        if self.minimum_calls < 1:
            raise ValueError("minimum_calls must be >= 1")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.slow_call_duration <= 0:
            raise ValueError("slow_call_duration must be > 0")
        if self.open_duration <= 0:
            raise ValueError("open_duration must be > 0")
        if self.half_open_probes < 1:
            raise ValueError("half_open_probes must be >= 1")
        if self.close_after < 1:
            raise ValueError("close_after must be >= 1")
        if self.probe_timeout <= 0:
            raise ValueError("probe_timeout must be > 0")


@dataclass(frozen=True)
class BreakerSnapshot:
    """What a status page shows about one breaker."""

    state: BreakerState
    #: Fractions 0..1 of the calls in the window (0 when it is empty).
    failure_rate: float
    slow_rate: float
    calls_in_window: int
    consecutive_failures: int
    probes_in_flight: int
    #: Unix seconds when the breaker last opened, while open or half-open.
    opened_at: float | None
    #: Unix seconds when an open breaker will let probes through.
    retry_at: float | None


class Permit:
    """Leave to make one call; settle it exactly once with ``record`` or ``release``."""

    __slots__ = ("_breaker", "_generation", "_settled", "is_probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, *, is_probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._settled = False
        self.is_probe = is_probe

    def record(self, success: bool, duration: float) -> None:
        """Report the call's outcome; ``duration`` in seconds."""
        if self._settled:  # _settle() inlined: this runs on every attempt
            raise RuntimeError("breaker permit already settled")
        self._settled = True
        self._breaker._on_outcome(self, success, max(0.0, duration))

    def release(self) -> None:
        """The call was not made or must not count (e.g. it was cancelled)."""
        self._settle()
        self._breaker._on_release(self)

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError("breaker permit already settled")
        self._settled = True


class _OutcomeWindow:
    """Calls, failures and slow calls over the last ``length`` seconds, in buckets."""

    def __init__(self, length: float, buckets: int) -> None:
        self._width = length / buckets
        # Per bucket: [calls, failures, slow]; the ring is indexed by bucket number.
        self._buckets = [[0, 0, 0] for _ in range(buckets)]
        self._head: int | None = None
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def add(self, now: float, *, failed: bool, slow: bool) -> None:
        index = math.floor(now / self._width)
        if index == self._head:  # still the current bucket: nothing to roll
            bucket = self._buckets[index % len(self._buckets)]
        else:
            bucket = self._roll(now)
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def expire(self, now: float) -> None:
        self._roll(now)

    def clear(self) -> None:
        for bucket in self._buckets:
            bucket[:] = [0, 0, 0]
        self._head = None
        self.calls = self.failures = self.slow = 0

    def _roll(self, now: float) -> list[int]:
        size = len(self._buckets)
        index = math.floor(now / self._width)
        if self._head is None:
            self._head = index
        elif index > self._head:
            # Only the buckets stepped over are cleared, at most the whole ring.
            for stale in range(self._head + 1, min(index, self._head + size) + 1):
                bucket = self._buckets[stale % size]
                self.calls -= bucket[0]
                self.failures -= bucket[1]
                self.slow -= bucket[2]
                bucket[:] = [0, 0, 0]
            self._head = index
        return self._buckets[self._head % size]


class CircuitBreaker:
    """One upstream's breaker. Single event loop only: it takes no locks.

    OPEN becomes HALF_OPEN lazily, when the breaker is next asked, so no timer
    task is needed; ``on_transition`` callbacks see it at that moment.
    """

    def __init__(self, policy: BreakerPolicy, clock: Clock, *, name: str = "") -> None:
        self._policy = policy
        self._clock = clock
        self._name = name
        self._state = BreakerState.CLOSED
        # Bumped on every transition so outcomes of calls admitted under an
        # earlier state cannot move the current one.
        self._generation = 0
        self._window = _OutcomeWindow(policy.window, WINDOW_BUCKETS)
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._opened_at_wall = 0.0
        self._probes: dict[Permit, float] = {}
        self._probe_successes = 0
        self._callbacks: list[TransitionCallback] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy

    @property
    def state(self) -> BreakerState:
        self._tick()
        return self._state

    def on_transition(self, callback: TransitionCallback) -> None:
        """Call ``callback(old, new)`` after every state change (metrics, logs)."""
        self._callbacks.append(callback)

    def acquire(self) -> Permit:
        """A permit for one call, or ``BreakerOpenError`` when it may not proceed."""
        now = self._tick()
        if self._state is BreakerState.CLOSED:
            return Permit(self, self._generation, is_probe=False)
        if self._state is BreakerState.OPEN:
            raise self._refusal("is open", self._opened_at + self._policy.open_duration - now)
        if len(self._probes) >= self._policy.half_open_probes:
            raise self._refusal("is half-open and its probes are taken", PROBES_BUSY_RETRY_AFTER)
        permit = Permit(self, self._generation, is_probe=True)
        self._probes[permit] = now
        return permit

    def snapshot(self) -> BreakerSnapshot:
        now = self._tick()
        self._window.expire(now)
        calls = self._window.calls
        opened = self._state is not BreakerState.CLOSED
        return BreakerSnapshot(
            state=self._state,
            failure_rate=self._window.failures / calls if calls else 0.0,
            slow_rate=self._window.slow / calls if calls else 0.0,
            calls_in_window=calls,
            consecutive_failures=self._consecutive_failures,
            probes_in_flight=len(self._probes),
            opened_at=self._opened_at_wall if opened else None,
            retry_at=(
                self._opened_at_wall + self._policy.open_duration
                if self._state is BreakerState.OPEN
                else None
            ),
        )

    def _refusal(self, what: str, retry_after: float) -> BreakerOpenError:
        label = f"circuit breaker {self._name!r}" if self._name else "circuit breaker"
        return BreakerOpenError(
            f"{label} {what}",
            retry_after=retry_after,
            metadata={"breaker": self._name, "state": self._state.value},
        )

    def _tick(self) -> float:
        """Apply what the passage of time alone changes; returns now."""
        now = self._clock.monotonic()
        if self._state is BreakerState.OPEN and now >= self._opened_at + self._policy.open_duration:
            self._transition(BreakerState.HALF_OPEN, now)
        elif self._state is BreakerState.HALF_OPEN:
            # A probe whose owner never settles it (a bug, a lost task) must not
            # keep the breaker half-open forever.
            lost = [p for p, t in self._probes.items() if now - t >= self._policy.probe_timeout]
            for permit in lost:
                del self._probes[permit]
        return now

    def _on_outcome(self, permit: Permit, success: bool, duration: float) -> None:
        now = self._tick()
        if permit._generation != self._generation:
            return
        slow = duration >= self._policy.slow_call_duration
        if permit.is_probe:
            if self._probes.pop(permit, None) is None:
                return  # reclaimed as lost; its slot is already reused
            # A slow probe fails only when slowness is what trips the breaker.
            if not success or (slow and self._policy.slow_call_rate_threshold > 0):
                self._transition(BreakerState.OPEN, now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self._policy.close_after:
                self._transition(BreakerState.CLOSED, now)
            return
        self._window.add(now, failed=not success, slow=slow)
        self._consecutive_failures = 0 if success else self._consecutive_failures + 1
        if self._should_trip():
            self._transition(BreakerState.OPEN, now)

    def _on_release(self, permit: Permit) -> None:
        self._tick()
        if permit.is_probe and permit._generation == self._generation:
            self._probes.pop(permit, None)

    def _should_trip(self) -> bool:
        policy = self._policy
        if 0 < policy.consecutive_failures <= self._consecutive_failures:
            return True
        calls = self._window.calls
        if calls < policy.minimum_calls:
            return False
        if 0 < policy.failure_rate_threshold <= self._window.failures / calls:
            return True
        return 0 < policy.slow_call_rate_threshold <= self._window.slow / calls

    def _transition(self, new: BreakerState, now: float) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probes.clear()
        self._probe_successes = 0
        if new is BreakerState.OPEN:
            self._opened_at = now
            self._opened_at_wall = self._clock.time()
        elif new is BreakerState.CLOSED:
            # A fresh start: the failures that opened it must not re-open it.
            self._window.clear()
            self._consecutive_failures = 0
        for callback in list(self._callbacks):
            try:
                callback(old, new)
            except Exception:
                # A broken metrics or log hook must not fail the call it observes.
                log.exception("breaker %r transition callback failed", self._name)

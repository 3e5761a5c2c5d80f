"""Local rate limit for calls to one upstream: a token bucket with FIFO reservations.

Also honours the upstream's own limit: ``pause_until`` after a 429 / Retry-After.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from sidecar.clock import Clock
from sidecar.errors import ResourceExhausted

#: Requests per second; a conservative guess for an unconfigured REST API.
DEFAULT_RATE = 10.0
#: Tokens the bucket holds: how many calls may go out at once after a quiet spell.
DEFAULT_BURST = 10

OnLimit = Literal["wait", "reject"]

# Float slack so a caller that slept exactly the advertised wait is let through.
_EPSILON = 1e-9


class RateLimitedError(ResourceExhausted):
    """The local rate limit refused the call; ``retry_after`` says when it could pass."""

    default_reason = "RATE_LIMITED"


@dataclass(frozen=True)
class RateLimitPolicy:
    """``rate`` tokens per second refill a bucket of ``burst`` tokens.

    ``on_limit="wait"`` queues a call until its token is due (within the caller's
    ``max_wait``); ``"reject"`` fails it at once.
    """

    #: Tokens (calls) per second.
    rate: float = DEFAULT_RATE
    #: Tokens.
    burst: int = DEFAULT_BURST
    on_limit: OnLimit = "wait"

    def __post_init__(self) -> None:
        if not self.rate > 0 or math.isinf(self.rate):
            raise ValueError("rate must be a positive number")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        if self.on_limit not in ("wait", "reject"):
            raise ValueError("on_limit must be 'wait' or 'reject'")


class _Reservation:
    """A waiter's claim on tokens that become available at ``ready_at``."""

    __slots__ = ("deadline", "ready_at", "rejected_until", "tat_after", "tokens")

    def __init__(self, tokens: int, ready_at: float, deadline: float, tat_after: float) -> None:
        self.tokens = tokens
        self.ready_at = ready_at
        self.deadline = deadline
        self.tat_after = tat_after
        #: Set when a pause pushed ``ready_at`` past ``deadline``.
        self.rejected_until: float | None = None


class RateLimiter(Protocol):
    """A token bucket, local to this process or shared by every replica."""

    @property
    def policy(self) -> RateLimitPolicy: ...

    async def acquire(self, max_wait: float, tokens: int = 1) -> float:
        """Take ``tokens`` (waiting up to ``max_wait`` when the policy waits); returns the
        seconds waited, or raises ``RateLimitedError``."""

    async def pause_for(self, seconds: float) -> None:
        """Hand out nothing for ``seconds`` (an upstream 429 with Retry-After)."""


class TokenBucket:
    """A GCRA token bucket on an injected clock; single event loop only.

    State is one timestamp, the "theoretical arrival time" (TAT): the bucket is
    full when TAT <= now and holds ``burst - (TAT - now) * rate`` tokens
    otherwise. A waiter moves TAT forward by its tokens *before* sleeping, so
    concurrent waiters get successive slots one interval apart and wake in
    arrival order instead of all at once.
    """

    def __init__(self, policy: RateLimitPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._interval = 1.0 / policy.rate
        # The burst expressed as time: how far TAT may run ahead of now.
        self._span = policy.burst * self._interval
        self._tat = clock.monotonic()
        self._waiters: deque[_Reservation] = deque()
        self._paused_until = -math.inf

    @property
    def policy(self) -> RateLimitPolicy:
        return self._policy

    @property
    def available(self) -> float:
        """Tokens that could be taken now (0 while waiters hold reservations)."""
        ahead = max(0.0, self._tat - self._clock.monotonic())
        return max(0.0, (self._span - ahead) / self._interval)

    @property
    def waiting(self) -> int:
        """Callers currently queued in ``acquire``."""
        return len(self._waiters)

    @property
    def paused_until(self) -> float | None:
        """Monotonic deadline of the current upstream-imposed pause, if any."""
        return self._paused_until if self._paused_until > self._clock.monotonic() else None

    def try_acquire(self, tokens: int = 1) -> float:
        """0.0 when ``tokens`` were taken; else seconds until they could be (nothing taken)."""
        self._check(tokens)
        now = self._clock.monotonic()
        tat, wait = self._next(tokens, now)
        if wait > _EPSILON:
            return wait
        self._tat = tat
        return 0.0

    async def acquire(self, max_wait: float, tokens: int = 1) -> float:
        """Take ``tokens``, waiting up to ``max_wait`` seconds; returns seconds waited.

        Raises ``RateLimitedError`` when the policy rejects or the wait would
        exceed ``max_wait`` (also when a later ``pause_until`` pushes it past).
        A cancelled waiter hands its slot back when nobody queued behind it.
        """
        self._check(tokens)
        start = self._clock.monotonic()
        tat, wait = self._next(tokens, start)
        if wait <= _EPSILON:
            self._tat = tat
            return 0.0
        if self._policy.on_limit == "reject" or wait > max_wait:
            raise self._refusal(wait)
        reservation = _Reservation(tokens, start + wait, start + max_wait, tat)
        self._tat = tat
        self._waiters.append(reservation)
        try:
            # A loop, because pause_until may move ready_at later while we sleep.
            while reservation.rejected_until is None:
                remaining = reservation.ready_at - self._clock.monotonic()
                if remaining <= _EPSILON:
                    break
                await self._clock.sleep(remaining)
        except BaseException:
            self._waiters.remove(reservation)
            if reservation.rejected_until is None and self._tat == reservation.tat_after:
                self._tat -= tokens * self._interval
            raise
        self._waiters.remove(reservation)
        now = self._clock.monotonic()
        if reservation.rejected_until is not None:
            raise self._refusal(max(0.0, reservation.rejected_until - now))
        return now - start

    def pause_until(self, deadline: float) -> None:
        """Hand out nothing before monotonic ``deadline`` (an upstream 429 / Retry-After).

        Tokens do not accumulate during the pause: at the deadline the bucket
        holds a single token (the call the upstream said it would accept) and
        refills at ``rate`` from there. Queued waiters keep their order and are
        re-spaced after the deadline; those it pushes past their ``max_wait``
        are rejected when they wake. A pause never shortens a longer one.
        """
        now = self._clock.monotonic()
        if deadline <= now or deadline <= self._paused_until:
            return
        self._paused_until = deadline
        tat = deadline + self._span - self._interval
        if not self._waiters:
            self._tat = max(self._tat, tat)
            return
        for waiter in self._waiters:
            if waiter.rejected_until is not None:
                continue
            ready = max(waiter.ready_at, tat + waiter.tokens * self._interval - self._span)
            if ready > waiter.deadline + _EPSILON:
                # Its slot is not taken, so the waiters behind move up.
                waiter.rejected_until = ready
                continue
            waiter.ready_at = ready
            tat = ready + self._span
            waiter.tat_after = tat
        self._tat = tat

    async def pause_for(self, seconds: float) -> None:
        self.pause_until(self._clock.monotonic() + seconds)

    def _next(self, tokens: int, now: float) -> tuple[float, float]:
        """The TAT after taking ``tokens`` now, and the seconds until they are due."""
        tat = max(self._tat, now) + tokens * self._interval
        return tat, tat - self._span - now

    def _check(self, tokens: int) -> None:
        if not 1 <= tokens <= self._policy.burst:
            raise ValueError(f"tokens must be between 1 and burst ({self._policy.burst})")

    def _refusal(self, retry_after: float) -> RateLimitedError:
        return RateLimitedError(
            f"local rate limit of {self._policy.rate:g}/s reached",
            retry_after=retry_after,
        )

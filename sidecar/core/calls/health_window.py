"""Rolling integration health for the status page: success rate, latency
percentiles, rejections, last error, breaker state and deprecations per
integration and route, fed by the Call pipeline as a ``CallObserver``.

Memory is fixed per (integration, route): a ring of time slots, each holding
counters and a small latency histogram, so the cost per Call is a few integer
updates whatever the call rate.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from sidecar.clock import Clock
from sidecar.core.calls.models import DeprecationInfo
from sidecar.core.calls.observer import NullObserver

#: Seconds of calls the status page summarises.
DEFAULT_WINDOW = 300.0
#: The window moves in steps of window / DEFAULT_SLOTS (10 s for 5 min).
DEFAULT_SLOTS = 30
#: Upper bounds (seconds) of the latency histogram: x1.5 steps from 0.5 ms to
#: about 2 minutes. An estimate is at most one step (50 %) off, which is
#: enough to tell a 20 ms upstream from a 2 s one.
LATENCY_BOUNDS: tuple[float, ...] = tuple(0.0005 * 1.5 ** i for i in range(31))
#: Outcomes that are the caller's doing, not the upstream's: they count as
#: calls but never against the success rate.
CALLER_OUTCOMES = frozenset({
    "client_error", "IDEMPOTENCY_IN_FLIGHT", "IDEMPOTENCY_KEY_REUSED", "INVALID_ARGUMENT",
})
#: Outcomes where the sidecar refused to send anything upstream.
REJECTIONS = ("CIRCUIT_OPEN", "RATE_LIMITED", "BULKHEAD_FULL")
#: Outcomes that are fine.
OK_OUTCOMES = frozenset({"success", "replayed"})
#: A sunset closer than this is flagged as near.
SUNSET_WARNING = 30 * 24 * 3600.0


class _Slot:
    __slots__ = ("calls", "failures", "hist", "max", "rejected")

    def __init__(self, buckets: int) -> None:
        self.calls = 0
        self.failures = 0
        self.max = 0.0
        self.hist = [0] * buckets
        self.rejected: dict[str, int] = {}

    def clear(self) -> None:
        self.calls = self.failures = 0
        self.max = 0.0
        hist = self.hist
        for i in range(len(hist)):
            hist[i] = 0
        self.rejected.clear()


@dataclass(frozen=True)
class WindowTotals:
    """What one or more rolling windows hold right now."""

    calls: int = 0
    failures: int = 0
    #: Counts per ``LATENCY_BOUNDS`` bucket, plus one overflow bucket.
    histogram: tuple[int, ...] = (0,) * (len(LATENCY_BOUNDS) + 1)
    max_latency: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        """Fraction 0..1 of calls without an upstream or sidecar failure; None when idle."""
        return 1.0 - self.failures / self.calls if self.calls else None

    def quantile(self, q: float) -> float | None:
        """Latency (seconds) under which a fraction ``q`` of calls finished, estimated
        by linear interpolation inside the histogram bucket; None when idle."""
        if not self.calls:
            return None
        rank = max(1, math.ceil(q * self.calls))
        seen = 0
        for i, count in enumerate(self.histogram):
            if seen + count >= rank:
                lower = LATENCY_BOUNDS[i - 1] if i else 0.0
                upper = LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else self.max_latency
                estimate = lower + (upper - lower) * (rank - seen) / count
                return min(estimate, self.max_latency)
            seen += count
        return self.max_latency  # pragma: no cover - counts always add up to calls

    def __add__(self, other: WindowTotals) -> WindowTotals:
        rejected = dict(self.rejected)
        for reason, n in other.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + n
        return WindowTotals(
            calls=self.calls + other.calls, failures=self.failures + other.failures,
            histogram=tuple(a + b for a, b in zip(self.histogram, other.histogram, strict=True)),
            max_latency=max(self.max_latency, other.max_latency), rejected=rejected)


class RollingWindow:
    """Calls over the last ``length`` seconds of a monotonic clock, in ``slots`` steps."""

    __slots__ = ("_cur", "_head", "_slots", "_width")

    def __init__(self, length: float = DEFAULT_WINDOW, slots: int = DEFAULT_SLOTS) -> None:
        if length <= 0 or slots < 1:
            raise ValueError("a window needs a positive length and at least one slot")
        self._width = length / slots
        self._slots = [_Slot(len(LATENCY_BOUNDS) + 1) for _ in range(slots)]
        self._head: int | None = None
        self._cur = self._slots[0]

    def record(self, now: float, duration: float, *, failed: bool = False,
               rejected: str = "") -> None:
        index = int(now // self._width)
        if index != self._head:
            self._roll(index)
        slot = self._cur
        slot.calls += 1
        if failed:
            slot.failures += 1
            if rejected:
                slot.rejected[rejected] = slot.rejected.get(rejected, 0) + 1
        slot.hist[bisect.bisect_left(LATENCY_BOUNDS, duration)] += 1
        if duration > slot.max:
            slot.max = duration

    def totals(self, now: float) -> WindowTotals:
        self._roll(int(now // self._width))
        calls = failures = 0
        max_latency = 0.0
        hist = [0] * (len(LATENCY_BOUNDS) + 1)
        rejected: dict[str, int] = {}
        for slot in self._slots:
            if not slot.calls:
                continue
            calls += slot.calls
            failures += slot.failures
            max_latency = max(max_latency, slot.max)
            for i, n in enumerate(slot.hist):
                hist[i] += n
            for reason, n in slot.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + n
        return WindowTotals(calls, failures, tuple(hist), max_latency, rejected)

    def _roll(self, index: int) -> None:
        size = len(self._slots)
        if self._head is not None and index > self._head:
            # Only the slots stepped over are cleared, at most the whole ring.
            for stale in range(max(self._head + 1, index - size + 1), index + 1):
                self._slots[stale % size].clear()
        if self._head is None or index > self._head:
            self._head = index
            self._cur = self._slots[index % size]


@dataclass(frozen=True)
class LastError:
    #: Stable reason: an error reason (``UPSTREAM_UNREACHABLE``, ``CIRCUIT_OPEN``...),
    #: ``UPSTREAM_STATUS_<code>`` or ``SERVED_STALE``.
    reason: str
    route: str
    #: Unix seconds.
    at: float
    #: The upstream's HTTP status when it answered, else 0.
    status: int = 0


@dataclass(frozen=True)
class BreakerChange:
    state: str
    #: Unix seconds of the change (or of start-up for the initial state).
    since: float


@dataclass(frozen=True)
class DeprecationSeen:
    info: DeprecationInfo
    route: str
    #: Unix seconds when last seen.
    seen_at: float


def sunset_status(sunset_at: float | None, now: float,
                  warning: float = SUNSET_WARNING) -> str | None:
    """``past``, ``near`` (within ``warning`` seconds) or ``later``; None without a date."""
    if sunset_at is None:
        return None
    if sunset_at <= now:
        return "past"
    return "near" if sunset_at - now <= warning else "later"


class CallHealth(NullObserver):
    """A ``CallObserver`` keeping the status page's numbers (the reports it does not
    need are the null observer's no-ops). Single event loop, no locks."""

    def __init__(self, clock: Clock, *, window: float = DEFAULT_WINDOW,
                 slots: int = DEFAULT_SLOTS) -> None:
        self._clock = clock
        self.window = window
        self._slots = slots
        self._windows: dict[tuple[str, str], RollingWindow] = {}
        self._last_error: dict[str, LastError] = {}
        #: The last failure that reached (or tried to reach) the upstream, not a refusal.
        self._last_upstream_error: dict[str, LastError] = {}
        self._breakers: dict[tuple[str, str], BreakerChange] = {}
        self._deprecations: dict[tuple[str, str], DeprecationSeen] = {}

    # ------------------------------------------------------------------ observer

    def call_finished(self, integration: str, route: str, outcome: str, status: int,
                      attempts: int, duration: float) -> None:
        key = (integration, route)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = RollingWindow(self.window, self._slots)
        now = self._clock.monotonic()
        if outcome in OK_OUTCOMES:
            window.record(now, duration)
            return
        if outcome in CALLER_OUTCOMES and status != 429:
            window.record(now, duration)
            return
        rejected = outcome if outcome in REJECTIONS else ""
        window.record(now, duration, failed=True, rejected=rejected)
        if outcome == "stale":
            reason = "SERVED_STALE"
        elif status:
            reason = f"UPSTREAM_STATUS_{status}"
        else:
            reason = outcome
        error = LastError(reason, route, self._clock.time(), status)
        self._last_error[integration] = error
        if not rejected:
            self._last_upstream_error[integration] = error

    def deprecation_seen(self, integration: str, route: str, info: DeprecationInfo) -> None:
        self._deprecations[(integration, route)] = DeprecationSeen(info, route,
                                                                   self._clock.time())

    def breaker_changed(self, integration: str, scope: str, state: str, *,
                        initial: bool = False) -> None:
        self._breakers[(integration, scope)] = BreakerChange(state, self._clock.time())

    # ------------------------------------------------------------------ reading

    def totals(self, integration: str, routes: Iterable[str]) -> WindowTotals:
        """The window of ``integration`` summed over ``routes`` ("" is its default)."""
        now = self._clock.monotonic()
        out = WindowTotals()
        for route in routes:
            window = self._windows.get((integration, route))
            if window is not None:
                out = out + window.totals(now)
        return out

    def routes_seen(self, integration: str) -> list[str]:
        return sorted(r for i, r in self._windows if i == integration)

    def last_error(self, integration: str) -> LastError | None:
        return self._last_error.get(integration)

    def last_upstream_error(self, integration: str) -> LastError | None:
        return self._last_upstream_error.get(integration)

    def breaker(self, integration: str, scope: str = "") -> BreakerChange | None:
        return self._breakers.get((integration, scope))

    def deprecations(self, integration: str) -> list[DeprecationSeen]:
        """What each route of ``integration`` last announced, newest first."""
        found = [d for (i, _), d in self._deprecations.items() if i == integration]
        return sorted(found, key=lambda d: d.seen_at, reverse=True)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop integrations no longer configured (after a reload)."""
        names = set(keep)
        for table in (self._windows, self._breakers, self._deprecations):
            for key in [k for k in table if k[0] not in names]:
                del table[key]
        for errors in (self._last_error, self._last_upstream_error):
            for name in [n for n in errors if n not in names]:
                del errors[name]

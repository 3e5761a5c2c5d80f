import logging
from typing import Any

import pytest

from sidecar.clock import FakeClock
from sidecar.core.resilience.breaker import (
    PROBES_BUSY_RETRY_AFTER,
    BreakerOpenError,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
)
from sidecar.errors import Unavailable

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
# Rate-window tests switch the consecutive trigger off so it cannot be what trips.
RATE_ONLY = BreakerPolicy(consecutive_failures=0)


def call(breaker: CircuitBreaker, success: bool, duration: float = 0.01) -> None:
    breaker.acquire().record(success, duration)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        call(breaker, False)


def trip(breaker: CircuitBreaker) -> None:
    fail(breaker, breaker.policy.consecutive_failures)
    assert breaker.state is OPEN


def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(breaker.policy.open_duration)
    assert breaker.state is HALF_OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(BreakerPolicy(), clock, name="payments")


def test_state_values_are_stable_strings() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


class TestConsecutiveFailures:
    def test_opens_after_exactly_the_threshold(self, breaker: CircuitBreaker) -> None:
        fail(breaker, 4)
        assert breaker.state is CLOSED
        fail(breaker)
        assert breaker.state is OPEN

    def test_a_success_resets_the_count(self, breaker: CircuitBreaker) -> None:
        fail(breaker, 4)
        call(breaker, True)
        fail(breaker, 4)
        assert breaker.state is CLOSED
        assert breaker.snapshot().consecutive_failures == 4

    def test_zero_disables_it(self, clock: FakeClock) -> None:
        breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=0, minimum_calls=100), clock)
        fail(breaker, 50)
        assert breaker.state is CLOSED

    def test_released_permits_do_not_count(self, breaker: CircuitBreaker) -> None:
        fail(breaker, 4)
        for _ in range(10):
            breaker.acquire().release()
        assert breaker.state is CLOSED
        assert breaker.snapshot().calls_in_window == 4


class TestOpen:
    def test_fails_fast_with_time_until_half_open(self, breaker: CircuitBreaker,
                                                  clock: FakeClock) -> None:
        trip(breaker)
        with pytest.raises(BreakerOpenError) as caught:
            breaker.acquire()
        assert isinstance(caught.value, Unavailable)
        assert caught.value.reason == "CIRCUIT_OPEN"
        assert caught.value.retry_after == pytest.approx(30.0)
        assert caught.value.metadata == {"breaker": "payments", "state": "open"}
        assert "payments" in caught.value.message
        clock.advance(12.0)
        with pytest.raises(BreakerOpenError) as caught:
            breaker.acquire()
        assert caught.value.retry_after == pytest.approx(18.0)

    def test_half_opens_after_open_duration(self, breaker: CircuitBreaker,
                                            clock: FakeClock) -> None:
        trip(breaker)
        clock.advance(29.999)
        assert breaker.state is OPEN
        clock.advance(0.001)
        assert breaker.state is HALF_OPEN

    def test_late_outcomes_from_before_it_opened_are_ignored(self, breaker: CircuitBreaker,
                                                             clock: FakeClock) -> None:
        early = breaker.acquire()
        trip(breaker)
        clock.advance(30.0)
        assert breaker.state is HALF_OPEN
        early.record(False, 0.01)
        assert breaker.state is HALF_OPEN


class TestHalfOpen:
    def test_admits_only_the_configured_probes(self, breaker: CircuitBreaker,
                                               clock: FakeClock) -> None:
        half_open(breaker, clock)
        probes = [breaker.acquire() for _ in range(3)]
        assert all(p.is_probe for p in probes)
        with pytest.raises(BreakerOpenError) as caught:
            breaker.acquire()
        assert caught.value.retry_after == PROBES_BUSY_RETRY_AFTER
        # A released probe frees its slot without counting as a success.
        probes[0].release()
        probes.append(breaker.acquire())
        assert breaker.snapshot().probes_in_flight == 3

    def test_closes_after_close_after_successful_probes(self, breaker: CircuitBreaker,
                                                        clock: FakeClock) -> None:
        half_open(breaker, clock)
        probes = [breaker.acquire() for _ in range(3)]
        probes[0].record(True, 0.01)
        probes[1].record(True, 0.01)
        assert breaker.state is HALF_OPEN
        probes[2].record(True, 0.01)
        assert breaker.state is CLOSED
        snapshot = breaker.snapshot()
        # The failures that opened it are forgotten.
        assert (snapshot.calls_in_window, snapshot.consecutive_failures) == (0, 0)
        assert snapshot.opened_at is None and snapshot.retry_at is None

    def test_more_successes_than_concurrent_probes(self, clock: FakeClock) -> None:
        policy = BreakerPolicy(half_open_probes=1, close_after=3)
        breaker = CircuitBreaker(policy, clock)
        half_open(breaker, clock)
        for _ in range(2):
            probe = breaker.acquire()
            with pytest.raises(BreakerOpenError):
                breaker.acquire()
            probe.record(True, 0.01)
            assert breaker.state is HALF_OPEN
        call(breaker, True)
        assert breaker.state is CLOSED

    def test_a_probe_failure_reopens_for_a_fresh_open_duration(self, breaker: CircuitBreaker,
                                                               clock: FakeClock) -> None:
        half_open(breaker, clock)
        first, second = breaker.acquire(), breaker.acquire()
        first.record(True, 0.01)
        second.record(False, 0.01)
        assert breaker.state is OPEN
        with pytest.raises(BreakerOpenError) as caught:
            breaker.acquire()
        assert caught.value.retry_after == pytest.approx(30.0)
        clock.advance(29.0)
        assert breaker.state is OPEN
        clock.advance(1.0)
        assert breaker.state is HALF_OPEN
        # Successes before the failure do not carry over into the new half-open.
        call(breaker, True)
        call(breaker, True)
        assert breaker.state is HALF_OPEN

    def test_probes_in_flight_when_it_reopens_are_ignored(self, breaker: CircuitBreaker,
                                                          clock: FakeClock) -> None:
        half_open(breaker, clock)
        stale, failing = breaker.acquire(), breaker.acquire()
        failing.record(False, 0.01)
        clock.advance(30.0)
        assert breaker.state is HALF_OPEN
        stale.record(True, 0.01)
        assert breaker.snapshot().probes_in_flight == 0
        call(breaker, True)
        call(breaker, True)
        assert breaker.state is HALF_OPEN

    def test_lost_probes_are_reclaimed_after_probe_timeout(self, clock: FakeClock) -> None:
        breaker = CircuitBreaker(BreakerPolicy(probe_timeout=10.0), clock)
        half_open(breaker, clock)
        lost = [breaker.acquire() for _ in range(3)]
        clock.advance(9.0)
        with pytest.raises(BreakerOpenError):
            breaker.acquire()
        clock.advance(1.0)
        fresh = breaker.acquire()
        assert breaker.snapshot().probes_in_flight == 1
        # The lost probe's owner turning up later neither raises nor counts.
        for permit in lost:
            permit.record(False, 0.01)
        assert breaker.state is HALF_OPEN
        fresh.record(True, 0.01)
        assert breaker.snapshot().probes_in_flight == 0

    def test_a_slow_probe_fails_only_when_slowness_trips(self, clock: FakeClock) -> None:
        quiet = CircuitBreaker(BreakerPolicy(slow_call_duration=1.0), clock)
        half_open(quiet, clock)
        call(quiet, True, duration=5.0)
        assert quiet.state is HALF_OPEN

        strict = CircuitBreaker(
            BreakerPolicy(slow_call_duration=1.0, slow_call_rate_threshold=0.5), clock
        )
        half_open(strict, clock)
        call(strict, True, duration=5.0)
        assert strict.state is OPEN


class TestRateWindow:
    def test_trips_at_60_percent_failures_once_minimum_calls_reached(self,
                                                                     clock: FakeClock) -> None:
        breaker = CircuitBreaker(RATE_ONLY, clock)
        outcomes = [False, False, True, False, True] * 4  # 12 of 20 fail
        for success in outcomes[:-1]:
            call(breaker, success)
            clock.advance(1.0)
        assert breaker.state is CLOSED
        assert breaker.snapshot().failure_rate == pytest.approx(12 / 19)
        call(breaker, outcomes[-1])
        assert breaker.state is OPEN
        assert breaker.snapshot().failure_rate == pytest.approx(0.6)

    def test_not_below_minimum_calls(self, clock: FakeClock) -> None:
        breaker = CircuitBreaker(RATE_ONLY, clock)
        fail(breaker, 19)
        assert breaker.state is CLOSED
        fail(breaker)
        assert breaker.state is OPEN

    def test_below_the_threshold_stays_closed(self, clock: FakeClock) -> None:
        breaker = CircuitBreaker(RATE_ONLY, clock)
        for _ in range(40):
            call(breaker, False)
            call(breaker, True)
            call(breaker, True)
        assert breaker.state is CLOSED
        assert breaker.snapshot().failure_rate == pytest.approx(1 / 3)

    def test_old_buckets_fall_out_of_the_window(self, clock: FakeClock) -> None:
        breaker = CircuitBreaker(RATE_ONLY, clock)
        fail(breaker, 15)
        clock.advance(30.0)
        for _ in range(4):
            call(breaker, True)
        assert breaker.snapshot().calls_in_window == 19
        clock.advance(30.0)
        # The 15 failures are now 60 s old and gone; the 4 successes remain.
        assert breaker.snapshot().calls_in_window == 4
        fail(breaker, 6)
        for _ in range(10):
            call(breaker, True)
        # 6 of 20 fail; had the old failures stayed, 21 of 35 would have tripped it.
        assert breaker.state is CLOSED
        assert breaker.snapshot().failure_rate == pytest.approx(0.3)
        clock.advance(30.0)
        assert breaker.snapshot().calls_in_window == 16

    def test_an_idle_hour_empties_the_window(self, clock: FakeClock) -> None:
        breaker = CircuitBreaker(RATE_ONLY, clock)
        fail(breaker, 19)
        clock.advance(3600.0)
        fail(breaker)
        assert breaker.state is CLOSED
        assert breaker.snapshot().calls_in_window == 1

    def test_slow_call_rate_trips_when_enabled(self, clock: FakeClock) -> None:
        policy = BreakerPolicy(slow_call_rate_threshold=0.5, slow_call_duration=2.0)
        breaker = CircuitBreaker(policy, clock)
        for i in range(20):
            assert breaker.state is CLOSED
            call(breaker, True, duration=2.0 if i % 2 else 0.5)
        assert breaker.state is OPEN
        assert breaker.snapshot().slow_rate == pytest.approx(0.5)

    def test_slow_calls_are_only_counted_by_default(self, clock: FakeClock) -> None:
        breaker = CircuitBreaker(BreakerPolicy(slow_call_duration=2.0), clock)
        for _ in range(30):
            call(breaker, True, duration=3.0)
        assert breaker.state is CLOSED
        assert breaker.snapshot().slow_rate == 1.0


class TestPermits:
    def test_settling_twice_is_a_bug(self, breaker: CircuitBreaker) -> None:
        permit = breaker.acquire()
        permit.record(True, 0.01)
        with pytest.raises(RuntimeError):
            permit.record(True, 0.01)
        with pytest.raises(RuntimeError):
            permit.release()
        released = breaker.acquire()
        released.release()
        with pytest.raises(RuntimeError):
            released.record(False, 0.01)


class TestObservability:
    def test_transitions_are_reported_in_order(self, breaker: CircuitBreaker,
                                               clock: FakeClock) -> None:
        seen: list[tuple[BreakerState, BreakerState]] = []
        breaker.on_transition(lambda old, new: seen.append((old, new)))
        half_open(breaker, clock)
        breaker.acquire().record(False, 0.01)
        clock.advance(30.0)
        for _ in range(3):
            call(breaker, True)
        assert seen == [
            (CLOSED, OPEN),
            (OPEN, HALF_OPEN),
            (HALF_OPEN, OPEN),
            (OPEN, HALF_OPEN),
            (HALF_OPEN, CLOSED),
        ]

    def test_a_failing_callback_does_not_break_the_breaker(
        self, breaker: CircuitBreaker, caplog: pytest.LogCaptureFixture
    ) -> None:
        seen: list[BreakerState] = []

        def broken(old: BreakerState, new: BreakerState) -> None:
            raise RuntimeError("metrics backend down")

        breaker.on_transition(broken)
        breaker.on_transition(lambda old, new: seen.append(new))
        with caplog.at_level(logging.ERROR):
            trip(breaker)
        assert seen == [OPEN]
        assert "transition callback failed" in caplog.text

    def test_snapshot_while_open(self, breaker: CircuitBreaker, clock: FakeClock) -> None:
        fail(breaker, 3)
        call(breaker, True)
        fail(breaker, 5)
        snapshot = breaker.snapshot()
        assert snapshot.state is OPEN
        assert snapshot.calls_in_window == 9
        assert snapshot.failure_rate == pytest.approx(8 / 9)
        assert snapshot.consecutive_failures == 5
        assert snapshot.opened_at == clock.time()
        assert snapshot.retry_at == clock.time() + 30.0
        clock.advance(30.0)
        snapshot = breaker.snapshot()
        assert snapshot.state is HALF_OPEN
        assert snapshot.opened_at == clock.time() - 30.0
        assert snapshot.retry_at is None

    def test_snapshot_of_a_fresh_breaker(self, breaker: CircuitBreaker) -> None:
        snapshot = breaker.snapshot()
        assert snapshot.state is CLOSED
        assert (snapshot.failure_rate, snapshot.slow_rate, snapshot.calls_in_window) == (0, 0, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consecutive_failures": -1},
        {"window": 0.0},
        {"minimum_calls": 0},
        {"failure_rate_threshold": 1.5},
        {"slow_call_rate_threshold": -0.1},
        {"slow_call_duration": 0.0},
        {"open_duration": 0.0},
        {"half_open_probes": 0},
        {"close_after": 0},
        {"probe_timeout": 0.0},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)

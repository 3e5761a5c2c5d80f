import asyncio
from typing import Any

import pytest

from sidecar.clock import FakeClock
from sidecar.core.resilience.rate_limit import RateLimitedError, RateLimitPolicy, TokenBucket
from sidecar.errors import ResourceExhausted

# Rates whose intervals are exact binary fractions keep FakeClock arithmetic exact.
TWO_PER_SECOND = RateLimitPolicy(rate=2.0, burst=1)


async def settle() -> None:
    """Let woken tasks run until they block again."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestTryAcquire:
    def test_burst_then_one_token_per_interval(self, clock: FakeClock) -> None:
        bucket = TokenBucket(RateLimitPolicy(rate=2.0, burst=3), clock)
        assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
        assert bucket.try_acquire() == pytest.approx(0.5)
        # Asking again took nothing: the wait is unchanged.
        assert bucket.try_acquire() == pytest.approx(0.5)
        clock.advance(0.25)
        assert bucket.try_acquire() == pytest.approx(0.25)
        clock.advance(0.25)
        assert bucket.try_acquire() == 0.0
        assert bucket.try_acquire() == pytest.approx(0.5)

    def test_refill_is_capped_at_burst(self, clock: FakeClock) -> None:
        bucket = TokenBucket(RateLimitPolicy(rate=2.0, burst=3), clock)
        clock.advance(3600.0)
        assert bucket.available == 3.0
        assert [bucket.try_acquire() for _ in range(4)][3] == pytest.approx(0.5)

    def test_several_tokens_at_once(self, clock: FakeClock) -> None:
        bucket = TokenBucket(RateLimitPolicy(rate=4.0, burst=4), clock)
        assert bucket.try_acquire(3) == 0.0
        assert bucket.try_acquire(2) == pytest.approx(0.25)
        assert bucket.available == pytest.approx(1.0)

    @pytest.mark.parametrize("tokens", [0, 4])
    def test_token_counts_outside_one_to_burst_are_bugs(self, clock: FakeClock,
                                                        tokens: int) -> None:
        bucket = TokenBucket(RateLimitPolicy(rate=1.0, burst=3), clock)
        with pytest.raises(ValueError):
            bucket.try_acquire(tokens)


class TestAcquire:
    async def test_takes_a_free_token_without_sleeping(self, clock: FakeClock) -> None:
        bucket = TokenBucket(TWO_PER_SECOND, clock)
        assert await bucket.acquire(max_wait=0.0) == 0.0
        assert clock.sleepers == 0

    async def test_reject_policy_fails_at_once_with_retry_after(self, clock: FakeClock) -> None:
        bucket = TokenBucket(RateLimitPolicy(rate=2.0, burst=1, on_limit="reject"), clock)
        await bucket.acquire(max_wait=10.0)
        with pytest.raises(RateLimitedError) as caught:
            await bucket.acquire(max_wait=10.0)
        assert isinstance(caught.value, ResourceExhausted)
        assert caught.value.reason == "RATE_LIMITED"
        assert caught.value.retry_after == pytest.approx(0.5)
        assert bucket.try_acquire() == pytest.approx(0.5)

    async def test_wait_longer_than_max_wait_is_refused_and_takes_nothing(self,
                                                                          clock: FakeClock) -> None:
        bucket = TokenBucket(TWO_PER_SECOND, clock)
        await bucket.acquire(max_wait=1.0)
        with pytest.raises(RateLimitedError) as caught:
            await bucket.acquire(max_wait=0.4)
        assert caught.value.retry_after == pytest.approx(0.5)
        assert bucket.waiting == 0
        assert bucket.try_acquire() == pytest.approx(0.5)

    async def test_waiters_are_served_in_order_one_interval_apart(self, clock: FakeClock) -> None:
        bucket = TokenBucket(TWO_PER_SECOND, clock)
        await bucket.acquire(max_wait=0.0)
        done: list[tuple[str, float]] = []

        async def waiter(name: str) -> None:
            done.append((name, await bucket.acquire(max_wait=5.0)))

        tasks = [asyncio.create_task(waiter(name)) for name in "abcd"]
        await settle()
        assert bucket.waiting == 4
        # Nobody can jump the queue with try_acquire.
        assert bucket.try_acquire() == pytest.approx(2.5)
        for expected in (["a"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"]):
            clock.advance(0.25)
            await settle()
            assert [n for n, _ in done] == expected[:-1]
            clock.advance(0.25)
            await settle()
            assert [n for n, _ in done] == expected
        assert [waited for _, waited in done] == pytest.approx([0.5, 1.0, 1.5, 2.0])
        await asyncio.gather(*tasks)

    async def test_concurrent_waiters_never_exceed_the_rate(self, clock: FakeClock) -> None:
        bucket = TokenBucket(RateLimitPolicy(rate=4.0, burst=2), clock)
        finished = 0

        async def waiter() -> None:
            nonlocal finished
            await bucket.acquire(max_wait=60.0)
            finished += 1

        tasks = [asyncio.create_task(waiter()) for _ in range(18)]
        await settle()
        assert finished == 2  # the burst
        for second in range(1, 5):
            clock.advance(1.0)
            await settle()
            assert finished == 2 + 4 * second
        await asyncio.gather(*tasks)

    async def test_a_cancelled_last_waiter_hands_its_slot_back(self, clock: FakeClock) -> None:
        bucket = TokenBucket(TWO_PER_SECOND, clock)
        await bucket.acquire(max_wait=0.0)
        task = asyncio.create_task(bucket.acquire(max_wait=5.0))
        await settle()
        task.cancel()
        await settle()
        assert task.cancelled()
        assert bucket.waiting == 0
        clock.advance(0.5)
        assert bucket.try_acquire() == 0.0
        assert bucket.try_acquire() == pytest.approx(0.5)

    async def test_a_cancelled_waiter_in_the_middle_keeps_the_others_on_time(
        self, clock: FakeClock
    ) -> None:
        bucket = TokenBucket(TWO_PER_SECOND, clock)
        await bucket.acquire(max_wait=0.0)
        first = asyncio.create_task(bucket.acquire(max_wait=5.0))
        middle = asyncio.create_task(bucket.acquire(max_wait=5.0))
        last = asyncio.create_task(bucket.acquire(max_wait=5.0))
        await settle()
        middle.cancel()
        clock.advance(0.5)
        await settle()
        assert first.done() and not last.done()
        clock.advance(1.0)
        await settle()
        assert await last == pytest.approx(1.5)


class TestPauseUntil:
    def test_no_tokens_until_the_deadline_then_one_and_no_burst(self, clock: FakeClock) -> None:
        bucket = TokenBucket(RateLimitPolicy(rate=2.0, burst=3), clock)
        bucket.pause_until(clock.monotonic() + 10.0)
        assert bucket.paused_until == clock.monotonic() + 10.0
        assert bucket.try_acquire() == pytest.approx(10.0)
        clock.advance(9.5)
        assert bucket.try_acquire() == pytest.approx(0.5)
        clock.advance(0.5)
        assert bucket.paused_until is None
        assert bucket.try_acquire() == 0.0
        assert bucket.try_acquire() == pytest.approx(0.5)

    def test_a_shorter_pause_does_not_cut_a_longer_one(self, clock: FakeClock) -> None:
        bucket = TokenBucket(TWO_PER_SECOND, clock)
        bucket.pause_until(clock.monotonic() + 10.0)
        bucket.pause_until(clock.monotonic() + 2.0)
        bucket.pause_until(clock.monotonic() - 1.0)
        assert bucket.try_acquire() == pytest.approx(10.0)

    async def test_queued_waiters_are_held_and_keep_their_order(self, clock: FakeClock) -> None:
        bucket = TokenBucket(TWO_PER_SECOND, clock)
        await bucket.acquire(max_wait=0.0)
        done: list[str] = []

        async def waiter(name: str) -> None:
            await bucket.acquire(max_wait=20.0)
            done.append(name)

        tasks = [asyncio.create_task(waiter(name)) for name in "abc"]
        await settle()
        bucket.pause_until(clock.monotonic() + 5.0)
        clock.advance(4.75)
        await settle()
        assert done == []
        clock.advance(0.25)
        await settle()
        assert done == ["a"]
        clock.advance(0.5)
        await settle()
        assert done == ["a", "b"]
        clock.advance(0.5)
        await settle()
        assert done == ["a", "b", "c"]
        await asyncio.gather(*tasks)

    async def test_waiters_pushed_past_max_wait_are_rejected_and_free_their_slot(
        self, clock: FakeClock
    ) -> None:
        bucket = TokenBucket(TWO_PER_SECOND, clock)
        await bucket.acquire(max_wait=0.0)
        impatient = asyncio.create_task(bucket.acquire(max_wait=1.0))
        patient = asyncio.create_task(bucket.acquire(max_wait=20.0))
        await settle()
        bucket.pause_until(clock.monotonic() + 5.0)
        # The impatient waiter learns at its original time, not after the pause.
        clock.advance(0.5)
        await settle()
        with pytest.raises(RateLimitedError) as caught:
            await impatient
        assert caught.value.retry_after == pytest.approx(4.5)
        # The patient one moved up into the first slot after the pause.
        clock.advance(4.5)
        await settle()
        assert await patient == pytest.approx(5.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 0.0}, {"rate": float("inf")}, {"burst": 0}, {"on_limit": "drop"}],
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimitPolicy(**kwargs)

import random
from typing import Any

import pytest

from sidecar.clock import FakeClock
from sidecar.core.resilience.retry_budget import RetryBudget, RetryBudgetPolicy


def spend_all(budget: RetryBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
    return spent


def test_without_traffic_only_the_floor_is_available() -> None:
    budget = RetryBudget(RetryBudgetPolicy(min_retries_per_second=1.0, window=10.0), FakeClock())
    assert budget.available == 10
    assert spend_all(budget) == 10
    assert budget.available == 0


def test_each_request_earns_a_fraction_of_a_retry() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, min_retries_per_second=0.0), FakeClock())
    for _ in range(4):
        budget.record_request()
    assert not budget.try_spend()  # 0.8 of a retry is not a retry
    budget.record_request()
    assert budget.try_spend()
    assert not budget.try_spend()


def test_ratio_and_floor_add_up() -> None:
    budget = RetryBudget(RetryBudgetPolicy(), FakeClock())
    for _ in range(100):
        budget.record_request()
    assert spend_all(budget) == 20 + 10


def test_failing_upstream_cannot_multiply_load() -> None:
    """1000 calls that each want 3 retries against an upstream that always fails."""
    policy = RetryBudgetPolicy()
    budget = RetryBudget(policy, FakeClock())
    retries = 0
    for _ in range(1000):
        budget.record_request()
        for _attempt in range(3):
            if not budget.try_spend():
                break
            retries += 1
    bound = policy.ratio * 1000 + policy.min_retries_per_second * policy.window
    assert retries <= bound
    # The budget is not needlessly stingy either.
    assert retries == 210


@pytest.mark.parametrize("seed", range(20))
def test_failing_upstream_bound_holds_for_random_arrivals(seed: int) -> None:
    rng = random.Random(seed)
    policy = RetryBudgetPolicy()
    clock = FakeClock()
    budget = RetryBudget(policy, clock)
    started = clock.monotonic()
    retries = 0
    pending: list[int] = []  # retries still wanted by calls in flight
    for _ in range(1000):
        clock.advance(rng.uniform(0.0, 0.1))
        budget.record_request()
        pending.append(3)
        # Retries of earlier calls interleave with new arrivals.
        for i in rng.sample(range(len(pending)), k=min(len(pending), 3)):
            if pending[i] and budget.try_spend():
                pending[i] -= 1
                retries += 1
            else:
                pending[i] = 0
        pending = [p for p in pending if p]
    elapsed = clock.monotonic() - started
    # Any window holds at most ratio x its requests + the floor; the run spans
    # ceil(elapsed / window) + 1 windows at most.
    windows = int(elapsed // policy.window) + 2
    bound = policy.ratio * 1000 + policy.min_retries_per_second * policy.window * windows
    assert retries <= bound
    assert retries > policy.ratio * 1000 * 0.5


def test_requests_and_retries_leave_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetPolicy(min_retries_per_second=0.0, window=10.0), clock)
    for _ in range(50):
        budget.record_request()
    assert spend_all(budget) == 10
    clock.advance(5.0)
    for _ in range(50):
        budget.record_request()
    assert spend_all(budget) == 10
    # The first half's requests and retries have gone; the second half's remain.
    clock.advance(5.0)
    assert budget.available == 0
    clock.advance(5.0)
    assert budget.available == 0
    for _ in range(5):
        budget.record_request()
    assert budget.available == 1


def test_a_long_silence_empties_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetPolicy(), clock)
    for _ in range(1000):
        budget.record_request()
    clock.advance(3600.0)
    assert budget.available == 10


@pytest.mark.parametrize(
    "kwargs", [{"ratio": -0.1}, {"min_retries_per_second": -1.0}, {"window": 0.0}]
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryBudgetPolicy(**kwargs)

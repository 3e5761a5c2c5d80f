from collections.abc import Callable
from typing import Any

import pytest

from sidecar.core.resilience.backoff import BackoffPolicy, backoff_delay


def always(value: float) -> Callable[[], float]:
    return lambda: value


def test_defaults_are_the_documented_ones() -> None:
    policy = BackoffPolicy()
    assert (policy.initial, policy.multiplier, policy.maximum, policy.jitter) == (
        0.1,
        2.0,
        5.0,
        "full",
    )


def test_ceiling_grows_exponentially_then_caps() -> None:
    policy = BackoffPolicy(jitter="none")
    delays = [backoff_delay(policy, n, always(0.0)) for n in range(1, 9)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_full_jitter_scales_the_ceiling_by_the_random_draw() -> None:
    policy = BackoffPolicy(initial=1.0, multiplier=3.0, maximum=100.0)
    assert backoff_delay(policy, 1, always(0.5)) == pytest.approx(0.5)
    assert backoff_delay(policy, 3, always(0.25)) == pytest.approx(2.25)
    assert backoff_delay(policy, 3, always(0.0)) == 0.0


def test_full_jitter_stays_below_the_cap() -> None:
    policy = BackoffPolicy()
    assert backoff_delay(policy, 50, always(0.999999)) < policy.maximum
    assert backoff_delay(policy, 50, always(0.999999)) > policy.maximum * 0.99


def test_huge_retry_numbers_do_not_overflow() -> None:
    policy = BackoffPolicy(jitter="none")
    assert backoff_delay(policy, 100_000, always(0.0)) == policy.maximum


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        backoff_delay(BackoffPolicy(), 0, always(0.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1.0},
        {"multiplier": 0.5},
        {"initial": 2.0, "maximum": 1.0},
        {"jitter": "equal"},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)

"""How long to wait before a retry: capped exponential backoff with full jitter.

Randomness is a parameter so the delays are reproducible in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

#: Seconds before the first retry: short enough to hide a blip from the caller.
DEFAULT_INITIAL = 0.1
DEFAULT_MULTIPLIER = 2.0
#: Seconds; the cap keeps late retries inside a typical 10-30 s call deadline.
DEFAULT_MAXIMUM = 5.0

Jitter = Literal["full", "none"]


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay before retry ``n`` is ``min(maximum, initial * multiplier ** (n - 1))``.

    With ``jitter="full"`` the delay is drawn uniformly from ``[0, that)``: retries
    of many callers spread out instead of arriving at the upstream in waves
    (see the AWS "Exponential Backoff and Jitter" analysis). ``"none"`` is for
    callers that need a fixed schedule.
    """

    #: Seconds.
    initial: float = DEFAULT_INITIAL
    multiplier: float = DEFAULT_MULTIPLIER
    #: Seconds.
    maximum: float = DEFAULT_MAXIMUM
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if self.initial < 0:
            raise ValueError("initial must be >= 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if self.maximum < self.initial:
            raise ValueError("maximum must be >= initial")
        if self.jitter not in ("full", "none"):
            raise ValueError("jitter must be 'full' or 'none'")


def backoff_delay(policy: BackoffPolicy, retry_number: int, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry).

    ``rand`` returns a float in ``[0, 1)``, e.g. ``random.random``.
    """
    if retry_number < 1:
        raise ValueError("retry_number starts at 1")
    try:
        ceiling = min(policy.maximum, policy.initial * policy.multiplier ** (retry_number - 1))
    except OverflowError:
        # Large retry numbers overflow the power long after the cap applies.
        ceiling = policy.maximum
    if policy.jitter == "none":
        return ceiling
    return ceiling * rand()

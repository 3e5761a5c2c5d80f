"""Resilience policies for outbound calls: breaker, rate limit, retry budget, backoff.

Also the parsers for the upstream headers that feed them (Retry-After,
RateLimit-*, Deprecation, Sunset, Link).
"""

from sidecar.core.resilience.backoff import BackoffPolicy, backoff_delay
from sidecar.core.resilience.breaker import (
    BreakerOpenError,
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Permit,
    TransitionCallback,
)
from sidecar.core.resilience.headers import (
    parse_deprecation,
    parse_link_rel,
    parse_rate_limit_reset,
    parse_retry_after,
    parse_sunset,
    safe_link,
)
from sidecar.core.resilience.rate_limit import RateLimitedError, RateLimitPolicy, TokenBucket
from sidecar.core.resilience.retry_budget import RetryBudget, RetryBudgetPolicy

__all__ = [
    "BackoffPolicy",
    "BreakerOpenError",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
    "RateLimitPolicy",
    "RateLimitedError",
    "RetryBudget",
    "RetryBudgetPolicy",
    "TokenBucket",
    "TransitionCallback",
    "backoff_delay",
    "parse_deprecation",
    "parse_link_rel",
    "parse_rate_limit_reset",
    "parse_retry_after",
    "parse_sunset",
    "safe_link",
]

"""The webhook signature schemes, and verification dispatched on ``SchemeConfig.scheme``.

Each scheme checks the signature first and the timestamp window second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from sidecar.core.webhooks.schemes import generic, github, shopify, slack, standard, stripe
from sidecar.core.webhooks.schemes.config import DEFAULT_TOLERANCE, SchemeConfig
from sidecar.core.webhooks.schemes.outcome import rejected
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest, as_text


@dataclass(frozen=True)
class Scheme:
    """One signature scheme: how it verifies, and what it finds wrong with a config."""

    verify: Callable[[SchemeConfig, WebhookRequest, float], Verdict]
    problems: Callable[[SchemeConfig], list[str]]


SCHEMES: dict[str, Scheme] = {
    "standard_webhooks": Scheme(standard.verify, standard.problems),
    "stripe": Scheme(stripe.verify, stripe.problems),
    "github": Scheme(github.verify, github.problems),
    "shopify": Scheme(shopify.verify, shopify.problems),
    "slack": Scheme(slack.verify, slack.problems),
    "generic_hmac": Scheme(generic.verify, generic.problems),
}
SCHEME_NAMES = tuple(SCHEMES)


def verify(config: SchemeConfig, request: WebhookRequest, now: float) -> Verdict:
    """Whether ``request`` is authentic under ``config`` at Unix time ``now``.

    Never raises: a config that ``validate_scheme_config`` would refuse yields
    ``MALFORMED`` rather than an exception on the ingest path.
    """
    scheme = SCHEMES.get(config.scheme)
    if scheme is None:
        return rejected(VerifyResult.MALFORMED, f"unknown webhook scheme {config.scheme!r}")
    verdict = scheme.verify(config, request, now)
    # Ids and types may come from headers, whose bytes need not be UTF-8.
    event_id, event_type = as_text(verdict.event_id), as_text(verdict.event_type)
    if (event_id, event_type) != (verdict.event_id, verdict.event_type):
        verdict = replace(verdict, event_id=event_id, event_type=event_type)
    return verdict


def validate_scheme_config(config: SchemeConfig) -> list[str]:
    """Human-readable problems with ``config`` (``"field: what is wrong"``), ``[]`` when fine.

    Messages name secrets by index only, never by value.
    """
    found: list[str] = []
    scheme = SCHEMES.get(config.scheme)
    if scheme is None:
        found.append(f"scheme: unknown scheme {config.scheme!r} "
                     f"(expected one of {', '.join(SCHEME_NAMES)})")
    found.extend(_secret_problems(config.secrets))
    if not math.isfinite(config.tolerance) or config.tolerance < 0:
        found.append("tolerance: must be a finite number of seconds, 0 or more")
    for field in ("event_id_path", "event_type_path"):
        path: str = getattr(config, field)
        if path and "" in path.split("."):
            found.append(f"{field}: {path!r} has an empty segment")
    if scheme is not None:
        found.extend(scheme.problems(config))
    return found


def _secret_problems(secrets: tuple[str, ...]) -> list[str]:
    if isinstance(secrets, str):
        return ["secrets: must be a list of secrets, not a single string"]
    if not secrets:
        return ["secrets: at least one secret is required"]
    found: list[str] = []
    for index, secret in enumerate(secrets):
        if not secret:
            found.append(f"secrets[{index}]: empty")
        elif secret != secret.strip():
            # Almost always a newline from `echo secret > file`; quietly stripping
            # it would hide which value is really in use.
            found.append(f"secrets[{index}]: has leading or trailing whitespace")
    return found


__all__ = [
    "DEFAULT_TOLERANCE",
    "SCHEMES",
    "SCHEME_NAMES",
    "Scheme",
    "SchemeConfig",
    "validate_scheme_config",
    "verify",
]

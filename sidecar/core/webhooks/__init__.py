"""Webhook signature verification: pure functions over a received request and ``now``.

No I/O and no clock of its own; the edge and the ``VerifyWebhook`` RPC are adapters over it.
"""

from sidecar.core.webhooks.schemes import (
    DEFAULT_TOLERANCE,
    SCHEME_NAMES,
    SchemeConfig,
    validate_scheme_config,
    verify,
)
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest

__all__ = [
    "DEFAULT_TOLERANCE",
    "SCHEME_NAMES",
    "SchemeConfig",
    "Verdict",
    "VerifyResult",
    "WebhookRequest",
    "validate_scheme_config",
    "verify",
]

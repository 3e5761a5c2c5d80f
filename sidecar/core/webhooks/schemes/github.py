"""GitHub: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the body; no timestamp.

The delivery id (``X-GitHub-Delivery``) is kept across redeliveries, so it de-duplicates.
"""

from __future__ import annotations

from sidecar.core.webhooks.schemes.config import SchemeConfig
from sidecar.core.webhooks.schemes.fields import FieldSource
from sidecar.core.webhooks.schemes.outcome import authenticated, no_usable_secret, rejected
from sidecar.core.webhooks.schemes.signing import decode_hex, matching_secret, raw_keys
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest

SIGNATURE_HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="
_IDS = FieldSource(headers=("X-GitHub-Delivery",))
_TYPES = FieldSource(headers=("X-GitHub-Event",))


def verify(config: SchemeConfig, request: WebhookRequest, now: float) -> Verdict:
    header = (request.header(SIGNATURE_HEADER) or "").strip()
    if not header:
        # The legacy SHA-1 X-Hub-Signature is deliberately not a fallback.
        return rejected(VerifyResult.MISSING_SIGNATURE, "no X-Hub-Signature-256 header")
    if not header.startswith(_PREFIX):
        return rejected(VerifyResult.MALFORMED, "X-Hub-Signature-256 does not start with sha256=")
    signature = decode_hex(header.removeprefix(_PREFIX))
    if signature is None:
        return rejected(VerifyResult.MALFORMED, "X-Hub-Signature-256 is not hex")
    keys = raw_keys(config)
    if not keys:
        return no_usable_secret()
    index = matching_secret(keys, (request.body,), "sha256", (signature,))
    if index is None:
        return rejected(VerifyResult.INVALID_SIGNATURE, "signature matches no secret")
    return authenticated(config, request, now, secret_index=index, ids=_IDS, types=_TYPES)


def problems(config: SchemeConfig) -> list[str]:
    return []

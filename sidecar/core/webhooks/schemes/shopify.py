"""Shopify: ``X-Shopify-Hmac-Sha256: <base64>``, HMAC-SHA256 of the body; no timestamp.

``X-Shopify-Webhook-Id`` stays the same across retries, so it de-duplicates.
"""

from __future__ import annotations

from sidecar.core.webhooks.schemes.config import SchemeConfig
from sidecar.core.webhooks.schemes.fields import FieldSource
from sidecar.core.webhooks.schemes.outcome import authenticated, no_usable_secret, rejected
from sidecar.core.webhooks.schemes.signing import decode_base64, matching_secret, raw_keys
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest

SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
_IDS = FieldSource(headers=("X-Shopify-Webhook-Id",))
_TYPES = FieldSource(headers=("X-Shopify-Topic",))


def verify(config: SchemeConfig, request: WebhookRequest, now: float) -> Verdict:
    header = (request.header(SIGNATURE_HEADER) or "").strip()
    if not header:
        return rejected(VerifyResult.MISSING_SIGNATURE, "no X-Shopify-Hmac-Sha256 header")
    signature = decode_base64(header)
    if signature is None:
        return rejected(VerifyResult.MALFORMED, "X-Shopify-Hmac-Sha256 is not base64")
    keys = raw_keys(config)
    if not keys:
        return no_usable_secret()
    index = matching_secret(keys, (request.body,), "sha256", (signature,))
    if index is None:
        return rejected(VerifyResult.INVALID_SIGNATURE, "signature matches no secret")
    return authenticated(config, request, now, secret_index=index, ids=_IDS, types=_TYPES)


def problems(config: SchemeConfig) -> list[str]:
    return []

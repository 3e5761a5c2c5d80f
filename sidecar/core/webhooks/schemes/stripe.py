"""Stripe: ``Stripe-Signature: t=<ts>,v1=<hex>`` over ``{t}.{body}``, HMAC-SHA256.

The ``whsec_...`` secret is the key as-is (Stripe does not base64-decode it).
"""

from __future__ import annotations

from sidecar.core.webhooks.schemes.config import SchemeConfig
from sidecar.core.webhooks.schemes.fields import FieldSource
from sidecar.core.webhooks.schemes.outcome import authenticated, no_usable_secret, rejected
from sidecar.core.webhooks.schemes.signing import (
    decode_hex,
    matching_secret,
    parse_timestamp,
    raw_keys,
    utf8,
)
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest

SIGNATURE_HEADER = "Stripe-Signature"
_IDS = FieldSource(paths=("id",))
_TYPES = FieldSource(paths=("type",))


def verify(config: SchemeConfig, request: WebhookRequest, now: float) -> Verdict:
    header = (request.header(SIGNATURE_HEADER) or "").strip()
    if not header:
        return rejected(VerifyResult.MISSING_SIGNATURE, "no Stripe-Signature header")
    parsed = _parse(header)
    if isinstance(parsed, str):
        return rejected(VerifyResult.MALFORMED, f"Stripe-Signature {parsed}")
    timestamp_text, candidates = parsed
    timestamp = parse_timestamp(timestamp_text)
    if timestamp is None:
        return rejected(VerifyResult.MALFORMED,
                        "Stripe-Signature t= is not an integer number of Unix seconds")
    if not candidates:
        return rejected(VerifyResult.INVALID_SIGNATURE, "Stripe-Signature has no v1 signature")
    keys = raw_keys(config)
    if not keys:
        return no_usable_secret()
    parts = (utf8(timestamp_text), b".", request.body)
    index = matching_secret(keys, parts, "sha256", candidates)
    if index is None:
        return rejected(VerifyResult.INVALID_SIGNATURE, "no v1 signature matches any secret")
    return authenticated(config, request, now, secret_index=index, ids=_IDS, types=_TYPES,
                         timestamp=timestamp)


def _parse(header: str) -> tuple[str, list[bytes]] | str:
    """The ``t`` value and decoded ``v1`` signatures, or what is wrong with the header."""
    timestamp: str | None = None
    signatures: list[bytes] = []
    for item in header.split(","):
        key, equals, value = item.strip().partition("=")
        if not equals:
            return "has an item without '='"
        if key == "t":
            if timestamp is not None:
                # Two timestamps would leave it ambiguous which one was signed.
                return "has more than one t="
            timestamp = value
        elif key == "v1":
            decoded = decode_hex(value)
            if decoded is None:
                return "has a v1 signature that is not hex"
            signatures.append(decoded)
        # Every other scheme (v0 is Stripe's test-mode one) is ignored, as Stripe
        # advises, so a forged header cannot downgrade verification to it.
    if timestamp is None:
        return "has no t="
    return timestamp, signatures


def problems(config: SchemeConfig) -> list[str]:
    return []

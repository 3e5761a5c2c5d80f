"""Slack: ``X-Slack-Signature: v0=<hex>``, HMAC-SHA256 of ``v0:{timestamp}:{body}``.

A valid ``url_verification`` request carries the challenge to echo back.
"""

from __future__ import annotations

import dataclasses

from sidecar.core.webhooks.schemes.config import SchemeConfig
from sidecar.core.webhooks.schemes.fields import FieldSource, JsonBody, scalar_text
from sidecar.core.webhooks.schemes.outcome import authenticated, no_usable_secret, rejected
from sidecar.core.webhooks.schemes.signing import (
    decode_hex,
    matching_secret,
    parse_timestamp,
    raw_keys,
    utf8,
)
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
_PREFIX = "v0="
# Events API envelopes carry event_id; slash commands and interactivity carry none.
_IDS = FieldSource(paths=("event_id",))
# The inner event's type is the useful one ("message"); the envelope's
# ("event_callback", "url_verification") is the fallback.
_TYPES = FieldSource(paths=("event.type", "type"))


def verify(config: SchemeConfig, request: WebhookRequest, now: float) -> Verdict:
    header = (request.header(SIGNATURE_HEADER) or "").strip()
    if not header:
        return rejected(VerifyResult.MISSING_SIGNATURE, "no X-Slack-Signature header")
    timestamp_text = (request.header(TIMESTAMP_HEADER) or "").strip()
    if not timestamp_text:
        return rejected(VerifyResult.MALFORMED, "no X-Slack-Request-Timestamp header")
    timestamp = parse_timestamp(timestamp_text)
    if timestamp is None:
        return rejected(VerifyResult.MALFORMED,
                        "X-Slack-Request-Timestamp is not an integer number of Unix seconds")
    if not header.startswith(_PREFIX):
        return rejected(VerifyResult.MALFORMED, "X-Slack-Signature does not start with v0=")
    signature = decode_hex(header.removeprefix(_PREFIX))
    if signature is None:
        return rejected(VerifyResult.MALFORMED, "X-Slack-Signature is not hex")
    keys = raw_keys(config)
    if not keys:
        return no_usable_secret()
    parts = (b"v0:", utf8(timestamp_text), b":", request.body)
    index = matching_secret(keys, parts, "sha256", (signature,))
    if index is None:
        return rejected(VerifyResult.INVALID_SIGNATURE, "signature matches no secret")
    body = JsonBody(request.body)
    verdict = authenticated(config, request, now, secret_index=index, ids=_IDS, types=_TYPES,
                            timestamp=timestamp, body=body)
    if verdict.valid and body.get("type") == "url_verification":
        return dataclasses.replace(verdict, challenge=scalar_text(body.get("challenge")))
    return verdict


def problems(config: SchemeConfig) -> list[str]:
    return []

"""Standard Webhooks v1 (Svix's scheme): HMAC-SHA256 of ``{id}.{timestamp}.{body}``, base64.

Secrets are ``whsec_<base64 key>``; ``svix-*`` headers are accepted for ``webhook-*``.
"""

from __future__ import annotations

from sidecar.core.webhooks.schemes.config import SchemeConfig
from sidecar.core.webhooks.schemes.fields import FieldSource
from sidecar.core.webhooks.schemes.outcome import authenticated, no_usable_secret, rejected
from sidecar.core.webhooks.schemes.signing import (
    decode_base64,
    keyed,
    matching_secret,
    parse_timestamp,
    utf8,
)
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a secret
#: Header families in order of preference: the standard's own, then Svix's originals.
HEADER_FAMILIES = ("webhook", "svix")
# Ed25519 ("v1a") is optional in the standard and not supported here.
_VERSION = "v1"
_ASYMMETRIC_PREFIXES = ("whpk_", "whsk_")
_TYPES = FieldSource(paths=("type",))


def secret_key(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_`` secret or a bare base64 one; ``None`` if not base64.

    Missing ``=`` padding is tolerated because secrets are often pasted without it.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    return decode_base64(encoded + "=" * (-len(encoded) % 4))


def verify(config: SchemeConfig, request: WebhookRequest, now: float) -> Verdict:
    family = next((f for f in HEADER_FAMILIES if (request.header(f"{f}-signature") or "").strip()),
                  None)
    if family is None:
        return rejected(VerifyResult.MISSING_SIGNATURE, "no webhook-signature header")
    signature = (request.header(f"{family}-signature") or "").strip()
    msg_id = (request.header(f"{family}-id") or "").strip()
    timestamp_text = (request.header(f"{family}-timestamp") or "").strip()
    if not msg_id:
        return rejected(VerifyResult.MALFORMED, f"no {family}-id header")
    if "." in msg_id:
        # The standard forbids "." in ids: the signed content is "."-delimited, so
        # a dotted id could shift the boundary between id, timestamp and body.
        return rejected(VerifyResult.MALFORMED, f"{family}-id contains '.'")
    if not timestamp_text:
        return rejected(VerifyResult.MALFORMED, f"no {family}-timestamp header")
    timestamp = parse_timestamp(timestamp_text)
    if timestamp is None:
        return rejected(VerifyResult.MALFORMED,
                        f"{family}-timestamp is not an integer number of Unix seconds")
    candidates = _v1_signatures(signature)
    if candidates is None:
        return rejected(VerifyResult.MALFORMED,
                        f"{family}-signature is not a list of '<version>,<base64>' entries")
    if not candidates:
        return rejected(VerifyResult.INVALID_SIGNATURE,
                        f"{family}-signature has no v1 entry (only HMAC v1 is checked)")
    keys = keyed(config, secret_key)
    if not keys:
        return no_usable_secret()
    # The timestamp goes in as sent, not re-rendered: "0123" must stay "0123".
    parts = (utf8(msg_id), b".", utf8(timestamp_text), b".", request.body)
    index = matching_secret(keys, parts, "sha256", candidates)
    if index is None:
        return rejected(VerifyResult.INVALID_SIGNATURE, "no v1 signature matches any secret")
    return authenticated(config, request, now, secret_index=index,
                         ids=FieldSource(headers=(f"{family}-id",)), types=_TYPES,
                         timestamp=timestamp)


def _v1_signatures(header: str) -> list[bytes] | None:
    """The decoded v1 signatures of a space-separated header; ``None`` if malformed.

    Entries of other versions are skipped so new versions can be added by senders
    without breaking receivers; a v1 entry that is not base64 makes it malformed.
    """
    signatures: list[bytes] = []
    well_formed = False
    for entry in header.split():
        version, comma, encoded = entry.partition(",")
        if not comma:
            continue
        well_formed = True
        if version == _VERSION:
            decoded = decode_base64(encoded)
            if decoded is None:
                return None
            signatures.append(decoded)
    return signatures if well_formed else None


def problems(config: SchemeConfig) -> list[str]:
    found: list[str] = []
    if isinstance(config.secrets, str):
        return found
    for index, secret in enumerate(config.secrets):
        if not secret:
            continue
        if secret.startswith(_ASYMMETRIC_PREFIXES):
            found.append(f"secrets[{index}]: Ed25519 keys ({secret[:5]}) are not supported; "
                         "use the endpoint's whsec_ signing secret")
        elif secret_key(secret) is None:
            found.append(f"secrets[{index}]: whsec_ secret is not valid base64")
    return found

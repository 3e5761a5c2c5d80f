"""Standard Webhooks (Svix's scheme): ``{id}.{timestamp}.{body}`` signed with HMAC-SHA256
(``v1``, ``whsec_<base64 key>`` secrets) or Ed25519 (``v1a``, ``whpk_<base64 public key>``).

``svix-*`` headers are accepted for ``webhook-*``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a secret
#: The receiver's half of an Ed25519 key pair: ``whpk_`` + base64 of the raw 32 bytes.
PUBLIC_KEY_PREFIX = "whpk_"
#: The sender's half, which a receiver must never hold.
SIGNING_KEY_PREFIX = "whsk_"
#: Header families in order of preference: the standard's own, then Svix's originals.
HEADER_FAMILIES = ("webhook", "svix")
_HMAC_VERSION = "v1"
_ED25519_VERSION = "v1a"
_ED25519_KEY_BYTES = 32
_TYPES = FieldSource(paths=("type",))


def secret_key(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_`` secret or a bare base64 one; ``None`` if not base64.

    Missing ``=`` padding is tolerated because secrets are often pasted without it.
    ``whpk_``/``whsk_`` keys are never HMAC keys: their ``_`` is not base64.
    """
    return _decode_unpadded(secret.removeprefix(SECRET_PREFIX))


def public_key_bytes(secret: str) -> bytes | None:
    """The raw Ed25519 key of a ``whpk_`` public key; ``None`` unless it is 32 bytes."""
    if not secret.startswith(PUBLIC_KEY_PREFIX):
        return None
    raw = _decode_unpadded(secret.removeprefix(PUBLIC_KEY_PREFIX))
    return raw if raw is not None and len(raw) == _ED25519_KEY_BYTES else None


def verifying_key(secret: str) -> Ed25519PublicKey | None:
    """The loaded public key of a ``whpk_`` secret, ``None`` for any other secret.

    Checking the prefix first keeps cryptography unimported for HMAC-only sources.
    """
    return _load_public_key(secret) if secret.startswith(PUBLIC_KEY_PREFIX) else None


# Keyed by the whpk_ text (public, so no secret lingers here after a rotation).
# Loading once per key, not per request, also survives config reloads that keep it.
@functools.lru_cache(maxsize=1024)
def _load_public_key(secret: str) -> Ed25519PublicKey | None:
    raw = public_key_bytes(secret)
    if raw is None:
        return None
    # Imported here: most sidecars verify only HMAC schemes and never need it.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def _decode_unpadded(encoded: str) -> bytes | None:
    return decode_base64(encoded + "=" * (-len(encoded) % 4))


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The sender's half: the ``webhook-signature`` value for ``body``, one ``v1``
    entry per key (several during a rotation; a receiver accepts any)."""
    content = utf8(msg_id) + b"." + str(timestamp).encode() + b"." + body
    macs = (hmac.new(key, content, hashlib.sha256).digest() for key in keys)
    return " ".join(f"{_HMAC_VERSION},{base64.b64encode(mac).decode()}" for mac in macs)


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
    signatures = _signatures(signature)
    if signatures is None:
        return rejected(VerifyResult.MALFORMED,
                        f"{family}-signature is not a list of '<version>,<base64>' entries")
    macs, ed25519_signatures = signatures
    if not macs and not ed25519_signatures:
        return rejected(VerifyResult.INVALID_SIGNATURE,
                        f"{family}-signature has no v1 or v1a entry")
    # Only the kinds of key that some entry can use: an HMAC-only request never
    # loads a public key, and vice versa.
    secrets = keyed(config, secret_key) if macs else []
    public_keys = keyed(config, verifying_key) if ed25519_signatures else []
    if not secrets and not public_keys:
        return _no_key_for(config, family, macs)
    # The timestamp goes in as sent, not re-rendered: "0123" must stay "0123".
    parts = (utf8(msg_id), b".", utf8(timestamp_text), b".", request.body)
    index = matching_secret(secrets, parts, "sha256", macs)
    if index is None and public_keys:
        index = _matching_public_key(public_keys, b"".join(parts), ed25519_signatures)
    if index is None:
        checked = " or ".join(version for version, keys in (
            (_HMAC_VERSION, secrets), (_ED25519_VERSION, public_keys)) if keys)
        return rejected(VerifyResult.INVALID_SIGNATURE,
                        f"no {checked} signature matches any secret")
    return authenticated(config, request, now, secret_index=index,
                         ids=FieldSource(headers=(f"{family}-id",)), types=_TYPES,
                         timestamp=timestamp)


def _signatures(header: str) -> tuple[list[bytes], list[bytes]] | None:
    """The decoded v1 and v1a signatures of a space-separated header; ``None`` if malformed.

    Entries of other versions are skipped so new versions can be added by senders
    without breaking receivers; a v1 or v1a entry that is not base64 makes it malformed.
    """
    found: dict[str, list[bytes]] = {_HMAC_VERSION: [], _ED25519_VERSION: []}
    well_formed = False
    for entry in header.split():
        version, comma, encoded = entry.partition(",")
        if not comma:
            continue
        well_formed = True
        signatures = found.get(version)
        if signatures is not None:
            decoded = decode_base64(encoded)
            if decoded is None:
                return None
            signatures.append(decoded)
    return (found[_HMAC_VERSION], found[_ED25519_VERSION]) if well_formed else None


def _no_key_for(config: SchemeConfig, family: str, macs: list[bytes]) -> Verdict:
    """The verdict when no configured key can check any entry the sender sent."""
    if not keyed(config, secret_key) and not keyed(config, verifying_key):
        return no_usable_secret()
    sent, needed = (("v1 (HMAC)", "whsec_ secret") if macs
                    else ("v1a (Ed25519)", "whpk_ public key"))
    return rejected(VerifyResult.INVALID_SIGNATURE,
                    f"{family}-signature has only {sent} signatures, "
                    f"and this source has no {needed} to check them")


def _matching_public_key(
    keys: list[tuple[int, Ed25519PublicKey]], message: bytes, candidates: list[bytes]
) -> int | None:
    """Index of the first public key that one of ``candidates`` verifies ``message`` under.

    Unlike an HMAC there is nothing secret to leak through timing here: the check
    uses only the public key and what the sender sent.
    """
    from cryptography.exceptions import InvalidSignature

    for index, key in keys:
        for candidate in candidates:
            try:
                key.verify(candidate, message)
            except InvalidSignature:
                continue
            return index
    return None


def problems(config: SchemeConfig) -> list[str]:
    found: list[str] = []
    if isinstance(config.secrets, str):
        return found
    for index, secret in enumerate(config.secrets):
        if not secret:
            continue
        if secret.startswith(SIGNING_KEY_PREFIX):
            # Holding it would let this side forge the sender's webhooks, which is
            # what the asymmetric scheme exists to rule out.
            found.append(f"secrets[{index}]: whsk_ is the sender's Ed25519 signing key; "
                         "configure the matching whpk_ public key instead")
        elif secret.startswith(PUBLIC_KEY_PREFIX):
            if public_key_bytes(secret) is None:
                found.append(f"secrets[{index}]: whpk_ public key is not base64 "
                             "of a 32-byte Ed25519 key")
        elif secret_key(secret) is None:
            found.append(f"secrets[{index}]: whsec_ secret is not valid base64")
    return found

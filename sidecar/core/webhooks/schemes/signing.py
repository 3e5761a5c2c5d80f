"""Signature primitives the schemes share: key lists, decoding, matching and timestamp windows.

Every comparison goes through ``hmac.compare_digest`` on bytes, over the raw body.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from sidecar.core.webhooks.schemes.config import SchemeConfig
from sidecar.core.webhooks.verdict import VerifyResult

#: An HMAC key with the index of the configured secret it came from.
Key = tuple[int, bytes]
#: Whatever a scheme derives from a secret: HMAC key bytes, a loaded public key.
K = TypeVar("K")

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
# Standard alphabet with correct padding; whitespace is not tolerated inside a signature.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
# Unix seconds as an unsigned integer. Fifteen digits bound the work on hostile input
# and are still millions of years; providers that sign milliseconds fail the window.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def utf8(text: str) -> bytes:
    """Header text as the bytes a sender signed; never raises, even on lone surrogates.

    The HTTP server hands over header bytes that are not UTF-8 as surrogate escapes
    (U+DC80-U+DCFF): those become the original bytes again. Any other lone surrogate
    (no server makes them) is encoded as it stands rather than refused."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def decode_hex(text: str) -> bytes | None:
    """Bytes from hex digits (either case), ``None`` unless it is all hex pairs."""
    return bytes.fromhex(text) if _HEX.fullmatch(text) else None


def decode_base64(text: str) -> bytes | None:
    """Bytes from non-empty, correctly padded standard base64, else ``None``."""
    if not text or not _BASE64.fullmatch(text):
        return None
    return base64.b64decode(text)


def raw_keys(config: SchemeConfig) -> list[Key]:
    """The configured secrets' UTF-8 bytes used as-is, skipping empty ones.

    An empty key would let anyone who knows the scheme forge a signature, so it
    never counts. A bare string (a misconfigured tuple) yields no keys at all
    rather than one single-character key per letter.
    """
    return keyed(config, utf8)


def keyed(config: SchemeConfig, derive: Callable[[str], K | None]) -> list[tuple[int, K]]:
    """The keys ``derive`` makes of the secrets, each with its index; empty and
    underivable ones are skipped."""
    if isinstance(config.secrets, str):
        return []
    keys: list[tuple[int, K]] = []
    for index, secret in enumerate(config.secrets):
        key = derive(secret) if secret else None
        if key:
            keys.append((index, key))
    return keys


def matching_secret(
    keys: Sequence[Key], parts: Sequence[bytes], digest: str, candidates: Sequence[bytes]
) -> int | None:
    """Index of the first secret whose HMAC of ``parts`` equals one of ``candidates``.

    ``parts`` are hashed in order without being joined, so a large body is not
    copied once per secret.
    """
    for index, key in keys:
        mac = hmac.new(key, digestmod=digest)
        for part in parts:
            mac.update(part)
        expected = mac.digest()
        matched = False
        for candidate in candidates:
            # Constant time, so response timing never tells an attacker how many
            # leading bytes of a forged signature were right.
            matched |= hmac.compare_digest(expected, candidate)
        if matched:
            return index
    return None


def parse_timestamp(text: str) -> int | None:
    """Unix seconds from a signed timestamp header, ``None`` unless it is plain digits."""
    return int(text) if _TIMESTAMP.fullmatch(text) else None


def outside_window(
    timestamp: float, now: float, tolerance: float
) -> tuple[VerifyResult, str] | None:
    """Why ``timestamp`` is outside ``now ± tolerance`` (bounds included), else ``None``."""
    if timestamp < now - tolerance:
        age = now - timestamp
        return (
            VerifyResult.STALE_TIMESTAMP,
            f"signed timestamp is {age:.0f}s old, beyond the {tolerance:g}s tolerance",
        )
    if timestamp > now + tolerance:
        ahead = timestamp - now
        return (
            VerifyResult.FUTURE_TIMESTAMP,
            f"signed timestamp is {ahead:.0f}s in the future, beyond the {tolerance:g}s tolerance",
        )
    return None

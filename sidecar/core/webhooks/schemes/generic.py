"""A configurable HMAC scheme: algorithm, signature header, encoding, prefix and the
template of the signed content (``{body}``, ``{timestamp}``, ``{id}``, ``{url}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sidecar.core.webhooks.schemes.config import SchemeConfig
from sidecar.core.webhooks.schemes.fields import FieldSource
from sidecar.core.webhooks.schemes.outcome import authenticated, no_usable_secret, rejected
from sidecar.core.webhooks.schemes.signing import (
    decode_base64,
    decode_hex,
    matching_secret,
    parse_timestamp,
    raw_keys,
    utf8,
)
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest

ALGORITHMS = ("sha256", "sha512")
ENCODINGS: dict[str, Callable[[str], bytes | None]] = {
    "hex": decode_hex,
    "base64": decode_base64,
}
PLACEHOLDERS = ("body", "timestamp", "id", "url")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NO_FIELD = FieldSource()


def placeholders(template: str) -> set[str]:
    """The names of the ``{placeholders}`` a signed-content template uses."""
    return set(_PLACEHOLDER.findall(template))


def verify(config: SchemeConfig, request: WebhookRequest, now: float) -> Verdict:
    decode = ENCODINGS.get(config.encoding)
    if decode is None or config.algorithm not in ALGORITHMS:
        # Only reachable when validate_scheme_config was skipped.
        return rejected(VerifyResult.MALFORMED, "generic_hmac algorithm or encoding misconfigured")
    name = config.signature_header
    header = (request.header(name) or "").strip() if name else ""
    if not header:
        return rejected(VerifyResult.MISSING_SIGNATURE, f"no {name or 'signature'} header")
    if not header.startswith(config.prefix):
        return rejected(VerifyResult.MALFORMED, f"{name} does not start with the configured prefix")
    signature = decode(header.removeprefix(config.prefix))
    if signature is None:
        return rejected(VerifyResult.MALFORMED, f"{name} is not {config.encoding}")
    used = placeholders(config.signed_content)
    values: dict[str, bytes] = {}
    timestamp: int | None = None
    if "timestamp" in used:
        text = (request.header(config.timestamp_header) or "").strip()
        if not text:
            return rejected(VerifyResult.MALFORMED,
                            f"no {config.timestamp_header or 'timestamp'} header")
        timestamp = parse_timestamp(text)
        if timestamp is None:
            return rejected(VerifyResult.MALFORMED, f"{config.timestamp_header} is not "
                            "an integer number of Unix seconds")
        values["timestamp"] = utf8(text)
    if "id" in used:
        event_id = (request.header(config.id_header) or "").strip()
        if not event_id:
            return rejected(VerifyResult.MALFORMED, f"no {config.id_header or 'id'} header")
        values["id"] = utf8(event_id)
    if "url" in used:
        if not request.url:
            return rejected(VerifyResult.MALFORMED, "the request URL is needed and unknown")
        values["url"] = utf8(request.url)
    keys = raw_keys(config)
    if not keys:
        return no_usable_secret()
    parts = _render(config.signed_content, request.body, values)
    index = matching_secret(keys, parts, config.algorithm, (signature,))
    if index is None:
        return rejected(VerifyResult.INVALID_SIGNATURE, "signature matches no secret")
    ids = FieldSource(headers=(config.id_header,)) if config.id_header else _NO_FIELD
    # A timestamp outside the template is not signed, so it is never window-checked:
    # an attacker could set it to anything.
    return authenticated(config, request, now, secret_index=index, ids=ids, types=_NO_FIELD,
                         timestamp=timestamp)


def _render(template: str, body: bytes, values: dict[str, bytes]) -> list[bytes]:
    """The signed content as parts: literal text in UTF-8 and the raw body bytes."""
    parts: list[bytes] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        value = body if name == "body" else values.get(name)
        if value is None:
            continue  # Unknown names stay literal text; validation reports them.
        parts.append(utf8(template[position:match.start()]))
        parts.append(value)
        position = match.end()
    parts.append(utf8(template[position:]))
    return parts


def problems(config: SchemeConfig) -> list[str]:
    found: list[str] = []
    if config.algorithm not in ALGORITHMS:
        found.append(f"algorithm: must be one of {', '.join(ALGORITHMS)}")
    if not config.signature_header:
        found.append("signature_header: required for generic_hmac")
    if config.encoding not in ENCODINGS:
        found.append(f"encoding: must be one of {', '.join(ENCODINGS)}")
    used = placeholders(config.signed_content)
    for unknown in sorted(used - set(PLACEHOLDERS)):
        found.append(f"signed_content: unknown placeholder {{{unknown}}} "
                     f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    if "body" not in used:
        found.append("signed_content: must include {body}, or the body is not authenticated")
    if "timestamp" in used and not config.timestamp_header:
        found.append("timestamp_header: required when signed_content uses {timestamp}")
    if config.timestamp_header and "timestamp" not in used:
        found.append("timestamp_header: set, but signed_content does not sign {timestamp}, "
                     "so the timestamp would give no replay protection")
    if "id" in used and not config.id_header:
        found.append("id_header: required when signed_content uses {id}")
    return found

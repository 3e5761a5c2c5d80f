"""The verdict on a webhook whose signature matched: window check, then event id and type.

The window is checked only after the signature, so unsigned input never learns
anything about the tolerance; a stale request still reports its id for the logs.
"""

from __future__ import annotations

from sidecar.core.webhooks.schemes.config import SchemeConfig
from sidecar.core.webhooks.schemes.fields import FieldSource, JsonBody, read_field
from sidecar.core.webhooks.schemes.signing import outside_window
from sidecar.core.webhooks.verdict import Verdict, VerifyResult, WebhookRequest


def rejected(result: VerifyResult, reason: str) -> Verdict:
    """A verdict on input that did not authenticate: no id, type or timestamp from it."""
    return Verdict(result, reason)


def no_usable_secret() -> Verdict:
    # Only reachable when validate_scheme_config was skipped: every secret is empty
    # or cannot be decoded, so nothing could ever match.
    return rejected(VerifyResult.MALFORMED, "no usable secret configured for this source")


def authenticated(
    config: SchemeConfig,
    request: WebhookRequest,
    now: float,
    *,
    secret_index: int,
    ids: FieldSource,
    types: FieldSource,
    timestamp: int | None = None,
    body: JsonBody | None = None,
) -> Verdict:
    """The verdict once secret ``secret_index`` matched: valid, or outside the window."""
    body = body if body is not None else JsonBody(request.body)
    event_id = read_field(ids.overridden(config.event_id_header, config.event_id_path),
                          request, body)
    event_type = read_field(types.overridden(config.event_type_header, config.event_type_path),
                            request, body)
    signed_at = None if timestamp is None else float(timestamp)
    if signed_at is not None:
        outside = outside_window(signed_at, now, config.tolerance)
        if outside is not None:
            result, reason = outside
            return Verdict(result, reason, event_id, event_type, signed_at)
    # Which secret matched is not itself secret, and tells operators when an old
    # one has stopped being used and can be retired.
    return Verdict(VerifyResult.VALID, f"signature matches secrets[{secret_index}]",
                   event_id, event_type, signed_at)

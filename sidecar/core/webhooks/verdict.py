"""What a webhook verifier is given and what it answers.

A ``WebhookRequest`` is the request as received; a ``Verdict`` is the outcome,
with the provider's event id and type once the signature has been checked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property


class VerifyResult(enum.StrEnum):
    """Outcome of a verification; values are the proto ``VerifyResult`` names, lower case."""

    VALID = "valid"
    MISSING_SIGNATURE = "missing_signature"
    INVALID_SIGNATURE = "invalid_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    MALFORMED = "malformed"


def as_text(value: str) -> str:
    """``value`` as valid text, the same way every time. An HTTP server hands over header
    bytes that are not UTF-8 as surrogate escapes (aiohttp does): fine for checking a
    signature over the raw bytes, but no store, JSON or protobuf string takes them, so
    whatever is kept or returned from a header has them written as ``\\xNN``."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class WebhookRequest:
    """A webhook exactly as received: headers in arrival order and the raw body."""

    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: The full public URL the provider posted to, for schemes that sign it.
    url: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        return self._by_name.get(name.lower())

    @cached_property
    def _by_name(self) -> dict[str, str]:
        # Built once per request: every scheme looks up several headers.
        index: dict[str, str] = {}
        for name, value in self.headers:
            index.setdefault(name.lower(), value)
        return index


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one webhook.

    ``event_id``, ``event_type`` and ``timestamp`` are filled in only once the
    signature matched (so also for stale or future timestamps), never from
    unauthenticated input. ``reason`` is for logs and never holds a secret or an
    expected signature.
    """

    result: VerifyResult
    reason: str = ""
    event_id: str = ""
    event_type: str = ""
    #: The signed timestamp (Unix seconds), for schemes that sign one.
    timestamp: float | None = None
    #: Slack ``url_verification``: the challenge to echo back.
    challenge: str | None = None

    @property
    def valid(self) -> bool:
        return self.result is VerifyResult.VALID

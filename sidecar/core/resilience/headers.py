"""Parsers for the upstream response headers that steer resilience and deprecation.

Pure functions over header values: the current time is passed in (Unix
seconds) and malformed values yield ``None`` instead of raising.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

#: ``X-RateLimit-Reset`` values at or above this are Unix timestamps, not deltas:
#: 10^9 seconds is 31 years as a delta but only September 2001 as a timestamp, so
#: no real reset time falls on the wrong side. (GitHub and Twitter send
#: timestamps; many other APIs send seconds to wait.)
EPOCH_SECONDS_THRESHOLD = 1e9
#: Values at or above this are Unix timestamps in milliseconds (year 2001 again).
EPOCH_MILLISECONDS_THRESHOLD = 1e12

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# RFC 9651 sf-date: "@" followed by an sf-integer (at most 15 digits).
_SF_DATE = re.compile(r"@(-?\d{1,15})")
# The reset parameter of the draft's structured RateLimit field, e.g. `"default";r=0;t=10`.
_STRUCTURED_RESET = re.compile(r";\s*t\s*=\s*(\d+)")
_LINK_TOKEN = re.compile(r"[^\s;,=\"]+")


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date).

    A date in the past or a negative delay means 0. Fractional seconds are
    accepted though RFC 9110 allows only integers, because some servers send them.
    """
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return max(0.0, float(text))
    at = _parse_http_date(text)
    return None if at is None else max(0.0, at - now)


def parse_rate_limit_reset(value: str, now: float) -> float | None:
    """Seconds until the upstream's rate-limit window resets.

    Accepts ``RateLimit-Reset`` (delta seconds, IETF httpapi draft), the later
    draft's ``RateLimit`` field (its ``t`` parameter), and ``X-RateLimit-Reset``,
    where large numbers are Unix timestamps (see ``EPOCH_SECONDS_THRESHOLD``).
    """
    text = value.strip()
    if not _NUMBER.fullmatch(text):
        match = _STRUCTURED_RESET.search(text)
        if match is None:
            return None
        text = match.group(1)
    number = float(text)
    if number >= EPOCH_MILLISECONDS_THRESHOLD:
        return max(0.0, number / 1000.0 - now)
    if number >= EPOCH_SECONDS_THRESHOLD:
        return max(0.0, number - now)
    return max(0.0, number)


def parse_deprecation(value: str) -> tuple[bool, float | None]:
    """Whether a ``Deprecation`` value marks the resource deprecated, and since when.

    RFC 9745 sends a structured date (``@1688169599``, Unix seconds, possibly in
    the future: "will be deprecated at"). Earlier drafts sent ``true`` or an
    HTTP-date; both are still seen and accepted. Anything else is ``(False, None)``.
    """
    text = value.strip()
    match = _SF_DATE.fullmatch(text)
    if match is not None:
        return True, float(match.group(1))
    if text.lower() == "true":
        return True, None
    at = _parse_http_date(text)
    return (True, at) if at is not None else (False, None)


def parse_sunset(value: str) -> float | None:
    """Unix seconds from a ``Sunset`` value (RFC 8594 HTTP-date).

    The structured ``@seconds`` form is accepted too, since servers that adopted
    RFC 9745 for ``Deprecation`` sometimes send it here as well.
    """
    text = value.strip()
    match = _SF_DATE.fullmatch(text)
    if match is not None:
        return float(match.group(1))
    return _parse_http_date(text)


def parse_link_rel(
    link_header: str, rels: Collection[str] = ("deprecation", "sunset")
) -> str | None:
    """The URI of the first link in a ``Link`` value (RFC 8288) with one of ``rels``.

    Relation types compare case-insensitively; a ``rel`` may list several,
    space-separated. Relative URIs are returned as sent, for the caller to
    resolve. Parsing stops at the first malformed link.
    """
    wanted = {rel.lower() for rel in rels}
    for uri, params in _links(link_header):
        if wanted.intersection(params.get("rel", "").lower().split()):
            return uri
    return None


#: A documentation link is short; what is longer is cut.
MAX_LINK_CHARS = 300


def safe_link(link: str) -> str:
    """An upstream-supplied link as it may be shown or logged: scheme, host, port and
    path only (no credentials, query or fragment, where secrets travel), at most
    :data:`MAX_LINK_CHARS`; "" for anything that is not an http(s) or relative URL."""
    try:
        parts = urlsplit(link.strip())
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        return ""
    if parts.scheme.lower() in ("http", "https") and parts.hostname:
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        text = f"{parts.scheme.lower()}://{host}{f':{port}' if port else ''}{parts.path}"
    elif not parts.scheme and not parts.netloc:
        text = parts.path  # relative to the integration's base URL
    else:
        return ""
    return "".join(c for c in text[:MAX_LINK_CHARS] if c.isprintable())


def _links(header: str) -> list[tuple[str, dict[str, str]]]:
    """The well-formed leading links of a ``Link`` value, with their parameters."""
    links: list[tuple[str, dict[str, str]]] = []
    pos, end = 0, len(header)
    while True:
        pos = _skip(header, pos, " \t,")
        if pos >= end or header[pos] != "<":
            return links
        close = header.find(">", pos)
        if close < 0:
            return links
        uri = header[pos + 1 : close].strip()
        params: dict[str, str] = {}
        pos = _skip(header, close + 1, " \t")
        while pos < end and header[pos] == ";":
            match = _LINK_TOKEN.match(header, _skip(header, pos + 1, " \t"))
            if match is None:
                return links
            name = match.group().lower()
            pos = _skip(header, match.end(), " \t")
            param = ""
            if pos < end and header[pos] == "=":
                param_value = _param_value(header, _skip(header, pos + 1, " \t"))
                if param_value is None:
                    return links
                param, pos = param_value
                pos = _skip(header, pos, " \t")
            # RFC 8288: occurrences after the first of the same parameter are ignored.
            params.setdefault(name, param)
        links.append((uri, params))
        if pos < end and header[pos] != ",":
            return links


def _param_value(header: str, pos: int) -> tuple[str, int] | None:
    """A token or quoted-string at ``pos``, and the position after it."""
    if pos < len(header) and header[pos] == '"':
        chars: list[str] = []
        pos += 1
        while pos < len(header):
            char = header[pos]
            if char == "\\" and pos + 1 < len(header):
                chars.append(header[pos + 1])
                pos += 2
            elif char == '"':
                return "".join(chars), pos + 1
            else:
                chars.append(char)
                pos += 1
        return None
    match = _LINK_TOKEN.match(header, pos)
    return None if match is None else (match.group(), match.end())


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _parse_http_date(text: str) -> float | None:
    """Unix seconds from an HTTP-date (IMF-fixdate, RFC 850 or asctime form)."""
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # HTTP-dates are always GMT; asctime carries no zone at all.
        parsed = parsed.replace(tzinfo=UTC)
    seconds = parsed.timestamp()
    return seconds if math.isfinite(seconds) else None

"""Turns a caller's relative path into a URL under the integration's base URL.

Only the configured base URL is reachable: absolute URLs, scheme-relative
paths, climbing out of the base path (also percent-encoded), query strings
and control characters are refused.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import quote, unquote, urlencode

from sidecar.errors import FieldViolation, InvalidArgument

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: ``scheme://`` or a scheme the HTTP client would follow (``http:host``).
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|[^/]*\.)|^https?:", re.IGNORECASE)
#: Characters left as-is in a path segment (RFC 3986 pchar minus '%', which is
#: re-encoded from the decoded form so the upstream sees one canonical path).
_SAFE = "!$&'()*+,;=:@-._~"


def _bad(description: str) -> InvalidArgument:
    return InvalidArgument(f"path: {description}",
                           violations=[FieldViolation("path", description)])


@functools.lru_cache(maxsize=4096)
def safe_path(path: str) -> str:
    """Normalise ``path`` to ``/seg/seg`` relative to the base, or raise InvalidArgument."""
    if _CONTROL.search(path):
        raise _bad("must not contain control characters")
    if "\\" in path:
        raise _bad("must not contain backslashes")
    if "?" in path or "#" in path:
        raise _bad("must not contain a query string or fragment; use the query field")
    if path.startswith("//") or _ABSOLUTE.match(path):
        raise _bad("must be relative to the integration's base URL, not an absolute URL")
    out: list[str] = []
    for raw in path.split("/"):
        segment = unquote(raw)
        if "/" in segment or "\\" in segment or _CONTROL.search(segment):
            raise _bad("must not contain encoded slashes or control characters")
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                raise _bad("must not climb out of the integration's base path")
            out.pop()
            continue
        out.append(quote(segment, safe=_SAFE))
    trailing = "/" if path.endswith("/") and out else ""
    return "/" + "/".join(out) + trailing if out else "/"


def build_url(base_url: str, path: str, query: tuple[tuple[str, str], ...],
              version_prefix: str = "") -> str:
    """``base_url`` + optional version prefix + normalised ``path`` + encoded ``query``."""
    rel = safe_path(path)
    prefix = ""
    if version_prefix:
        prefix = "/" + quote(version_prefix.strip("/"), safe=_SAFE + "/")
    if rel == "/" and not path:
        rel = ""  # an empty path is the base URL itself
    url = base_url.rstrip("/") + prefix + rel
    if query:
        url += "?" + urlencode(list(query), doseq=False)
    return url


def route_matches(pattern: str, path: str) -> bool:
    """``*`` matches one segment, a trailing ``**`` any rest (including nothing)."""
    want = [s for s in pattern.split("/") if s]
    have = [s for s in path.split("/") if s]
    for i, seg in enumerate(want):
        if seg == "**" and i == len(want) - 1:
            return True
        if i >= len(have) or (seg != "*" and seg != have[i]):
            return False
    return len(have) == len(want)

"""Every upstream URL, built in one place, and checked as the upstream will read it.

A Call names a path (and maybe an API version sent as a path prefix) relative to its
integration's base URL, never a URL. Each segment the caller sends is kept as sent
(its percent-escapes byte for byte, whatever bytes they stand for) or percent-encoded
where it holds characters a URL cannot; dot segments are resolved here, so none
reaches the upstream. Then the *final* URL is checked the way a server would read it:
same scheme, host and port as the base; its path, percent-decoded, with each
segment's ``;parameters`` set aside (as Tomcat, Jetty and Spring do) and dot segments
removed, inside the base path; no control character or space anywhere. Anything else
is ``INVALID_ARGUMENT`` naming the field (``path`` or ``api_version``).
"""

from __future__ import annotations

import functools
import re
from urllib.parse import quote, unquote_to_bytes, urlencode, urlsplit

from sidecar.errors import FieldViolation, InvalidArgument

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")
#: What never stands in a URL as sent: controls and spaces (a path's are encoded).
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f]")
#: ``scheme://`` or a scheme the HTTP client would follow (``http:host``).
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|[^/]*\.)|^https?:", re.IGNORECASE)
#: Characters kept as they are in a segment: RFC 3986 pchar, and '%' (escapes are
#: forwarded as sent; a '%' that starts no escape is encoded, see _STRAY_PERCENT).
_SAFE = "!$&'()*+,;=:@-._~%"
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _bad(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {description}",
                           violations=[FieldViolation(field, description)])


def _name(decoded: bytes) -> bytes:
    """What a server takes a segment to be: its decoded bytes up to the first ';'."""
    return decoded.split(b";", 1)[0]


def _segments(text: str, field: str) -> list[str]:
    """``text``'s segments as they will be sent, dot segments resolved (None for none)."""
    out: list[str] = []
    for raw in text.split("/"):
        sent = _STRAY_PERCENT.sub("%25", quote(raw, safe=_SAFE))
        decoded = unquote_to_bytes(sent)
        if b"/" in decoded or b"\\" in decoded:
            raise _bad(field, "must not contain encoded slashes or backslashes")
        if _CONTROL_BYTES.search(decoded):
            raise _bad(field, "must not contain control characters, raw or encoded")
        name = _name(decoded)
        if name in (b"", b"."):
            continue
        if name == b"..":
            if not out:
                raise _bad(field, "must not climb out of the integration's base path")
            out.pop()
            continue
        out.append(sent)
    return out


@functools.lru_cache(maxsize=4096)
def safe_path(path: str) -> str:
    """``path`` as sent under the base: ``/seg/seg`` (``/`` for none), or InvalidArgument."""
    if _CONTROL.search(path):
        raise _bad("path", "must not contain control characters")
    if "\\" in path:
        raise _bad("path", "must not contain backslashes")
    if "?" in path or "#" in path:
        raise _bad("path", "must not contain a query string or fragment; use the query field")
    if path.startswith("//") or _ABSOLUTE.match(path):
        raise _bad("path", "must be relative to the integration's base URL, not an absolute "
                           "URL")
    out = _segments(path, "path")
    trailing = "/" if path.endswith("/") and out else ""
    return "/" + "/".join(out) + trailing if out else "/"


@functools.lru_cache(maxsize=256)
def _version_prefix(version: str) -> str:
    """An API version sent as a path prefix: plain segments only, never a dot segment."""
    if _NOT_IN_URL.search(version) or "\\" in version or "?" in version or "#" in version:
        raise _bad("api_version", "must not contain control characters, spaces, "
                                  "backslashes, '?' or '#'")
    parts = [p for p in version.split("/") if p]
    for part in parts:
        if _name(unquote_to_bytes(part)) in (b".", b".."):
            raise _bad("api_version", "must not contain '.' or '..' segments")
    segments = _segments(version, "api_version")
    return "/" + "/".join(segments) if segments else ""


def _server_view(path: str) -> list[bytes]:
    """The segments a server resolves ``path`` to (RFC 3986 remove_dot_segments, on the
    decoded names, parameters set aside). A '..' above the root stays, so it shows."""
    out: list[bytes] = []
    for raw in path.split("/"):
        name = _name(unquote_to_bytes(raw))
        if name in (b"", b"."):
            continue
        if name == b".." and out and out[-1] != b"..":
            out.pop()
        else:
            out.append(name)
    return out


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


@functools.lru_cache(maxsize=4096)
def _joined(base_url: str, version: str, path: str) -> str:
    prefix = _version_prefix(version) if version else ""
    rel = safe_path(path)
    if rel == "/" and not path:
        rel = ""  # an empty path is the base URL itself
    url = base_url.rstrip("/") + prefix + rel
    # The invariant, on the URL as it will be sent, whatever built it.
    base_path = _server_view(urlsplit(base_url).path)
    final = urlsplit(url)
    if (_NOT_IN_URL.search(url) or _origin(url) != _origin(base_url) or final.query
            or final.fragment or _server_view(final.path)[:len(base_path)] != base_path
            or b".." in _server_view(final.path)):
        raise _bad("api_version" if prefix else "path",
                   "resolves outside the integration's base URL")
    return url


def build_url(base_url: str, path: str, query: tuple[tuple[str, str], ...],
              version_prefix: str = "") -> str:
    """The URL sent upstream: ``base_url``, the version prefix, ``path``, the encoded
    ``query``. It is sent as it is: the transport must not re-encode or normalise it."""
    url = _joined(base_url, version_prefix, path)
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

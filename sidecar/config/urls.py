"""What a URL in the config may look like: the integrations' base URLs, OAuth2 token
endpoints, and the Redis URLs (one, or a list of cluster nodes or sentinels). Each
check says what is wrong ("" when nothing); the Redis checks never quote the value,
which may hold a password.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from sidecar.config.model import redis_urls

REDIS_SCHEMES = ("redis", "rediss", "unix")
URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def url_parts(url: str) -> SplitResult | str:
    """``url`` split, or what is wrong with it: a space or control character anywhere,
    a malformed IPv6 literal, a port that is not a number from 0 to 65535."""
    if URL_FORBIDDEN.search(url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    return parts


def base_url(url: str, allow_http: bool) -> tuple[str, str]:
    """An integration's base URL in canonical form (lower-case scheme, so nothing
    downstream can mistake HTTPS:// for plain HTTP; no trailing slash), and what is
    wrong with it."""
    parts = url_parts(url)
    if isinstance(parts, str):
        return url, f"{parts}; got {url!r}"
    problem = ""
    if parts.scheme not in ("http", "https"):
        problem = f"must be an http:// or https:// URL; got {url!r}"
    elif not parts.hostname:
        problem = f"has no host; got {url!r}"
    elif parts.username or parts.password:
        problem = "must not contain credentials; configure auth instead"
    elif parts.query or parts.fragment:
        problem = "must not contain a query or fragment"
    elif parts.scheme == "http" and not allow_http:
        problem = ("plain http:// is refused; use https:// or set allow_insecure_http: true "
                   "(local development only)")
    path = parts.path.rstrip("/") if parts.path not in ("", "/") else ""
    return f"{parts.scheme.lower()}://{parts.netloc}{path}", problem


def token_url_problem(url: str, allow_http: bool) -> str:
    """What is wrong with an OAuth2 token endpoint."""
    parts = url_parts(url)
    if isinstance(parts, str):
        return f"{parts}; got {url!r}"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"must be an https:// URL with a host; got {url!r}"
    if parts.username or parts.password:
        return "must not contain credentials; use client_id and client_secret_env"
    if parts.fragment:
        return "must not contain a fragment"
    if parts.scheme.lower() == "http" and not allow_http:
        return ("plain http:// is refused (the client secret would travel in clear text); "
                "use https:// or set allow_insecure_http: true on the integration (local "
                "development only)")
    return ""


def redis_url_ok(value: str, schemes: tuple[str, ...] = REDIS_SCHEMES) -> bool:
    parts = url_parts(value)
    if isinstance(parts, str):
        return False
    if parts.scheme == "unix":
        return "unix" in schemes and bool(parts.path)
    return parts.scheme in schemes and bool(parts.hostname)


#: What a cluster or sentinel URL list may look like, for the error messages.
REDIS_LIST_EXAMPLE = {
    "cluster": "redis://:password@node-1:6379,redis://node-2:6379 (rediss:// for TLS)",
    "sentinel": "redis://:password@sentinel-1:26379,redis://sentinel-2:26379/0 "
                "(rediss:// for TLS)",
}


def redis_url_list_problem(value: str, mode: str) -> str:
    """Why a cluster or sentinel URL list is unusable ("" when it is fine); never
    quotes the value, which may hold a password."""
    urls = redis_urls(value)
    if not urls:
        return "holds no URL"
    for i, url in enumerate(urls, 1):
        which = f"has a URL ({i} of {len(urls)})"
        if not redis_url_ok(url, ("redis", "rediss")):
            return f"{which} that is not a redis:// or rediss:// URL with a host"
        db = urlsplit(url).path.strip("/")
        if db and not db.isdigit():
            return f"{which} with no database number in its path"
        if mode == "cluster" and db not in ("", "0"):
            return f"{which} naming database {db}; a Redis Cluster has only 0"
    parts = [urlsplit(u) for u in urls]
    if len({p.scheme for p in parts}) > 1:
        return "mixes redis:// and rediss:// URLs; use one scheme for all"
    # Credentials and database may be written once; where repeated they must agree.
    for what, values in (("credentials", {(p.username, p.password) for p in parts
                                          if p.username or p.password}),
                         ("database", {p.path.strip("/") for p in parts if p.path.strip("/")})):
        if len(values) > 1:
            return f"gives different {what} in different URLs; give them once or the same"
    return ""

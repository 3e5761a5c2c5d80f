"""No Call leaves its integration's base URL: whatever ``path`` and ``api_version``
hold, the URL sent upstream is refused (INVALID_ARGUMENT naming the field) or stays on
the base's scheme, host and port and inside its base path, as a server would read it.

The server's reading is modelled here independently of the builder: percent-decode
each segment, set ``;parameters`` aside (Tomcat, Jetty, Spring), resolve dot segments
with ``posixpath.normpath``.
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote_to_bytes, urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.core.calls.paths import build_url
from sidecar.errors import InvalidArgument
from tests.fuzzing import examples

BASES = ["http://api.example:8080/base/v", "https://api.example", "https://api.example/b/"]
#: Characters that matter to a URL's structure or a server's reading of it, plus a few
#: ordinary ones; whole escapes (also of '.', '/', '\\', ';', controls, non-UTF-8).
PIECES = st.one_of(
    st.sampled_from([
        *"./\\;%?#@: \t\r\n\x00aZ9-_~é", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%3b",
        "%00", "%0d%0a", "%ff", "%25", "%252e", ";x=1", "..;", "//", "http:",
        "https://evil.example", "@evil.example"]),
    st.text(max_size=3))
FIELD_TEXT = st.lists(PIECES, max_size=12).map("".join)


def server_path(url: str) -> str:
    segments = [unquote_to_bytes(s).split(b";", 1)[0].decode("latin-1")
                for s in urlsplit(url).path.split("/")]
    return posixpath.normpath("/" + "/".join(segments))


def origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}[parts.scheme.lower()]
    return parts.scheme.lower(), parts.hostname, parts.port or default


def check(base: str, path: str, version: str) -> None:
    try:
        url = build_url(base, path, (("q", "a b&c=d"),), version)
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] in (["path"], ["api_version"]), exc
        return
    assert not any(c in url for c in "\r\n\x00\t "), url
    assert origin(url) == origin(base), url
    inside = server_path(base).rstrip("/")
    seen = server_path(url.split("?", 1)[0])
    assert seen == inside or seen.startswith(inside + "/"), (url, seen)
    assert urlsplit(url).query == "q=a+b%26c%3Dd"


@settings(max_examples=examples(600), deadline=None)
@given(base=st.sampled_from(BASES), path=FIELD_TEXT, version=FIELD_TEXT)
@example(base=BASES[0], path="x", version="../../x")
@example(base=BASES[0], path="x", version="..;/..;/x")
@example(base=BASES[0], path="..;/x", version="")
@example(base=BASES[0], path="%2e%2e/%2E%2e/x", version="")
@example(base=BASES[0], path="a/..%3b/../x", version="")
def test_no_field_value_leaves_the_base_url(base: str, path: str, version: str) -> None:
    check(base, path, version)


@pytest.mark.parametrize(("version", "path"), [
    ("../../x", "y"), ("..", "y"), ("%2e%2e", "y"), ("v1/../..", "y"), ("v1/..;/x", "y"),
    (".", "y"), ("v1/./x", "y"), ("v1\\..", "y"), ("v1?x=1", "y"), ("v1 x", "y"),
    ("v1%2f..", "y"), ("v1\r\nX: 1", "y"),
])
def test_a_version_prefix_with_dot_segments_or_separators_is_refused(version: str,
                                                                     path: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        build_url(BASES[0], path, (), version)
    assert [v.field for v in info.value.violations] == ["api_version"]


@pytest.mark.parametrize(("path", "sent"), [
    ("a/%ff/b", "/base/v/a/%ff/b"),  # a non-UTF-8 escape, byte for byte
    ("caf%c3%a9/x y", "/base/v/caf%c3%a9/x%20y"),  # escapes kept, a raw space encoded
    ("a;jsessionid=1/b", "/base/v/a;jsessionid=1/b"),
    ("%252e%252e/x", "/base/v/%252e%252e/x"),  # a double-encoded name, not a dot segment
    ("100%/x", "/base/v/100%25/x"),  # a '%' that starts no escape is itself encoded
    ("a/b/../c", "/base/v/a/c"),  # dots resolved here: none reaches the upstream
    ("a/.;x/b", "/base/v/a/b"),
])
def test_what_is_sent_is_what_the_caller_wrote_less_dot_segments(path: str,
                                                                 sent: str) -> None:
    assert urlsplit(build_url(BASES[0], path, (), "")).path == sent


def test_a_version_prefix_goes_before_the_path() -> None:
    assert build_url(BASES[0], "charges", (), "2024-06-01") == \
        "http://api.example:8080/base/v/2024-06-01/charges"
    assert build_url(BASES[1], "x", (), "/v2/beta/") == "https://api.example/v2/beta/x"

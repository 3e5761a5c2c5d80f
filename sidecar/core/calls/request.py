"""A Call request checked and prepared: what a caller may ask for, and the headers every
attempt sends (merged from the integration's defaults, the caller's, the API version,
static credentials and the idempotency key)."""

from __future__ import annotations

import re

from sidecar.core.calls.models import CallRequest, Headers
from sidecar.core.calls.policy import IntegrationSpec
from sidecar.core.tracing import TRACEPARENT, TRACESTATE, TraceContext
from sidecar.errors import FieldViolation, InvalidArgument

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "connection", "keep-alive", "proxy-authenticate", "proxy-connection",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
})
#: Set by the sidecar on each attempt from the call's trace, never by the caller.
TRACE_HEADERS = frozenset({TRACEPARENT, TRACESTATE})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What a header value may not hold (RFC 9110: visible characters, space, tab).
_CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: An API version (a header value or a path prefix) is short.
MAX_API_VERSION = 100
MAX_HEADERS = 100


def validate(req: CallRequest, method: str, spec: IntegrationSpec) -> None:
    """Raise ``InvalidArgument`` naming every field that is wrong."""
    problems: list[FieldViolation] = []
    if method not in METHODS:
        problems.append(FieldViolation("method", f"must be one of {', '.join(sorted(METHODS))}"
                                                 f"; got {req.method!r}"))
    if len(req.headers) > MAX_HEADERS:
        problems.append(FieldViolation("headers", f"at most {MAX_HEADERS} headers"))
    for i, (name, value) in enumerate(req.headers):
        if not _TOKEN.match(name):
            problems.append(FieldViolation(f"headers[{i}].name", f"invalid header name {name!r}"))
        elif name.lower() in FORBIDDEN_HEADERS:
            problems.append(FieldViolation(f"headers[{i}].name",
                                           f"{name} is set by the sidecar, not the caller"))
        if _CONTROL_IN_VALUE.search(value):
            problems.append(FieldViolation(f"headers[{i}].value",
                                           "must not contain control characters (CR, LF, "
                                           "NUL, ...); a tab is allowed"))
    for i, (name, _) in enumerate(req.query):
        if not name:
            problems.append(FieldViolation(f"query[{i}].name", "is required"))
    if len(req.body) > spec.max_request_bytes:
        problems.append(FieldViolation(
            "body", f"{len(req.body)} bytes is over the integration's limit of "
                    f"{spec.max_request_bytes}"))
    if len(req.api_version) > MAX_API_VERSION or _CONTROL.search(req.api_version):
        problems.append(FieldViolation("api_version", f"at most {MAX_API_VERSION} "
                                                      "characters, no control characters"))
    if req.idempotency_key and not _KEY.match(req.idempotency_key):
        problems.append(FieldViolation("idempotency_key",
                                       "must be 1-255 printable ASCII characters"))
    if problems:
        raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems),
                              violations=problems)


def attempt_headers(req: CallRequest, spec: IntegrationSpec, version: str,
                    trace: TraceContext) -> Headers:
    """Headers every attempt sends; ``traceparent`` (and a fetched credential) is added
    per attempt."""
    in_header = bool(version) and spec.api_version.location == "header"
    if not (spec.headers or req.headers or trace.tracestate or req.idempotency_key
            or spec.static_auth is not None or in_header):
        return ()  # the common case: nothing to merge
    auth = spec.auth_header.lower()
    reserved = TRACE_HEADERS | {auth} if auth else TRACE_HEADERS
    out = [(k, v) for k, v in spec.headers if k.lower() not in TRACE_HEADERS]
    overridden = {k.lower() for k, _ in req.headers}
    out = [(k, v) for k, v in out if k.lower() not in overridden]
    out += [(k, v) for k, v in req.headers if k.lower() not in reserved]
    if trace.tracestate:
        out.append((TRACESTATE, trace.tracestate))
    if in_header:
        out = [(k, v) for k, v in out if k.lower() != spec.api_version.header.lower()]
        out.append((spec.api_version.header, version))
    if spec.static_auth is not None:
        out.append((spec.auth_header, spec.static_auth))
    elif spec.fetched_auth:
        # The configured default headers must not carry one either.
        out = [(k, v) for k, v in out if k.lower() != auth]
    if req.idempotency_key:
        name = spec.idempotency_header
        out = [(k, v) for k, v in out if k.lower() != name.lower()]
        out.append((name, req.idempotency_key))
    return tuple(out)

"""W3C trace context parsing and validation (pure functions of sidecar.core.tracing)."""

from __future__ import annotations

import pytest

from sidecar.core.tracing import (
    TraceContext,
    continue_or_start,
    from_headers,
    new_trace,
    parse_traceparent,
    parse_tracestate,
    with_trace,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_valid_version_00() -> None:
    assert parse_traceparent(VALID) == (TRACE, SPAN, 1)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == (TRACE, SPAN, 0)


@pytest.mark.parametrize("value", [
    "",
    "garbage",
    VALID.upper(),                                   # hex must be lower case
    f"00-{'0' * 32}-{SPAN}-01",                      # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                     # all-zero parent id
    f"ff-{TRACE}-{SPAN}-01",                         # version ff is invalid
    f"0g-{TRACE}-{SPAN}-01",                         # non-hex version
    f"00-{TRACE[:-1]}x-{SPAN}-01",                   # non-hex trace id
    f"00-{TRACE}-{SPAN}-0z",                         # non-hex flags
    f"00-{TRACE}-{SPAN}-01-extra",                   # version 00 has exactly four fields
    f"00-{TRACE}-{SPAN}-1",                          # short flags
    f"00_{TRACE}_{SPAN}_01",                         # wrong separators
    f"00-{TRACE}0-{SPAN}-01",                        # long trace id
    f"01-{TRACE}-{SPAN}-01x",                        # future version, 56th char not '-'
])
def test_malformed_traceparent_is_none(value: str) -> None:
    assert parse_traceparent(value) is None


def test_future_version_is_read_by_its_first_four_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01") == (TRACE, SPAN, 1)
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-ever") == (TRACE, SPAN, 1)


def test_unknown_flags_are_cleared_sampled_and_random_kept() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-ff") == (TRACE, SPAN, 0x03)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-02") == (TRACE, SPAN, 0x02)


def test_tracestate_normalised_and_bounded() -> None:
    assert parse_tracestate(["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"]) == (
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    # Several header lines are one list; empty members are skipped.
    assert parse_tracestate(["a=1,,", "b@vendor=2"]) == "a=1,b@vendor=2"
    for bad in (["Upper=1"], ["a=1,a=2"], ["novalue"], ["a=x,y"], ["a=1=2,b=="],
                [",".join(f"k{i}=v" for i in range(33))]):
        assert parse_tracestate(bad) == "", bad
    # Over 512 characters: members over 128 characters go first, then from the end.
    long_member = "big=" + "x" * 200
    small = [f"k{i}={'v' * 40}" for i in range(20)]
    text = parse_tracestate([",".join([small[0], long_member, *small[1:]])])
    assert "big=" not in text and len(text) <= 512 and text.startswith("k0=")
    assert text == ",".join(small[:len(text.split(","))])


def test_from_headers() -> None:
    ctx = from_headers([("TraceParent", VALID), ("tracestate", "a=1"), ("other", "x")])
    assert ctx == TraceContext(TRACE, SPAN, 1, "a=1")
    assert ctx is not None and ctx.traceparent == VALID
    # Two traceparent headers are ambiguous: none; tracestate never travels alone.
    assert from_headers([("traceparent", VALID), ("traceparent", VALID)]) is None
    assert from_headers([("tracestate", "a=1")]) is None
    assert from_headers([("traceparent", "bogus"), ("tracestate", "a=1")]) is None


def test_new_traces_and_children_are_valid_and_distinct() -> None:
    a, b = new_trace(), new_trace()
    assert a.started and a.trace_id != b.trace_id
    assert parse_traceparent(a.traceparent) == (a.trace_id, a.span_id, 0)
    c1, c2 = a.child_traceparent(), a.child_traceparent()
    assert c1 != c2
    parsed = parse_traceparent(c1)
    assert parsed is not None and parsed[0] == a.trace_id
    assert continue_or_start([("traceparent", "nope")]).started
    assert continue_or_start([("traceparent", VALID)]).trace_id == TRACE


def test_with_trace_prefers_the_attributes_then_the_fallback() -> None:
    meta = TraceContext("1" * 32, "2" * 16, 1, "m=1")
    attrs, ctx = with_trace({"traceparent": VALID, "k": "v"}, meta)
    assert ctx.trace_id == TRACE and attrs == {"traceparent": VALID, "k": "v"}
    attrs, ctx = with_trace({"traceparent": "bad", "tracestate": "x=1", "k": "v"}, meta)
    assert ctx is meta and attrs == {"traceparent": meta.traceparent, "tracestate": "m=1",
                                     "k": "v"}
    attrs, ctx = with_trace({}, None)
    assert ctx.started and attrs == {"traceparent": ctx.traceparent}

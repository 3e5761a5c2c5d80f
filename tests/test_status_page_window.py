"""The status page's rolling call statistics (pure core, fake clock) and its HTML
renderer on hostile data."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from sidecar.clock import FakeClock
from sidecar.core.calls.health_window import (
    LATENCY_BOUNDS,
    CallHealth,
    RollingWindow,
    WindowTotals,
    sunset_status,
)
from sidecar.core.calls.models import DeprecationInfo
from sidecar.core.resilience.headers import safe_link
from sidecar.status_html import render_page


def test_the_rolling_statistics_are_pure_core() -> None:
    probe = ("import sys, sidecar.core.calls.health_window, sidecar.core.calls.fan_out; "
             "print(sorted(m for m in ('grpc', 'aiohttp', 'sqlite3', 'sqlite_utils', "
             "'prometheus_client', 'redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=30)
    assert out.stdout.strip() == "[]"


def test_window_forgets_calls_older_than_its_length() -> None:
    w = RollingWindow(length=300.0, slots=30)  # 10 s slots
    t0 = 1_000_000.0
    for _ in range(4):
        w.record(t0, 0.01)
    w.record(t0 + 150, 0.02, failed=True, rejected="CIRCUIT_OPEN")
    assert (w.totals(t0 + 150).calls, w.totals(t0 + 150).failures) == (5, 1)
    # 299 s later the first slot is still inside the window ...
    assert w.totals(t0 + 299).calls == 5
    # ... and once the window has moved past it, only the later call is left.
    later = w.totals(t0 + 300)
    assert (later.calls, later.failures, later.rejected) == (1, 1, {"CIRCUIT_OPEN": 1})
    assert later.success_rate == 0.0
    assert w.totals(t0 + 450).calls == 0
    assert w.totals(t0 + 450).success_rate is None
    assert w.totals(t0 + 450).quantile(0.99) is None


def test_recording_after_a_long_pause_clears_the_ring_without_walking_the_gap() -> None:
    w = RollingWindow(length=60.0, slots=6)
    w.record(0.0, 0.001)
    started = time.perf_counter()
    w.record(1e15, 0.002)  # 1e14 slots later: must not loop over each of them
    assert time.perf_counter() - started < 0.1
    totals = w.totals(1e15)
    assert (totals.calls, totals.max_latency) == (1, 0.002)


def test_quantiles_are_within_one_histogram_step_and_never_above_the_maximum() -> None:
    w = RollingWindow()
    for _ in range(990):
        w.record(5.0, 0.020)
    for _ in range(10):
        w.record(5.0, 2.0)
    totals = w.totals(5.0)
    p50, p99 = totals.quantile(0.5), totals.quantile(0.99)
    assert p50 is not None and p99 is not None
    assert 0.020 / 1.5 <= p50 <= 0.020 * 1.5
    assert 0.020 / 1.5 <= p99 <= 0.020 * 1.5  # the 1 % slow tail is above p99
    assert totals.quantile(0.999) == 2.0  # capped by the slowest call seen
    over = RollingWindow()
    over.record(0.0, LATENCY_BOUNDS[-1] * 3)  # beyond the last bucket
    assert over.totals(0.0).quantile(0.99) == LATENCY_BOUNDS[-1] * 3


def test_totals_add_up_across_routes() -> None:
    a = WindowTotals(calls=2, failures=1, max_latency=0.5, rejected={"RATE_LIMITED": 1})
    b = WindowTotals(calls=3, failures=0, max_latency=0.7, rejected={"RATE_LIMITED": 2})
    total = a + b
    assert (total.calls, total.failures, total.max_latency, total.rejected) == (
        5, 1, 0.7, {"RATE_LIMITED": 3})


def test_call_health_classifies_outcomes() -> None:
    clock = FakeClock()
    health = CallHealth(clock)
    health.call_finished("pay", "", "success", 200, 1, 0.01)
    health.call_finished("pay", "", "client_error", 404, 1, 0.01)  # the caller's mistake
    health.call_finished("pay", "", "IDEMPOTENCY_KEY_REUSED", 0, 0, 0.001)
    health.call_finished("pay", "charge", "client_error", 429, 1, 0.01)  # upstream throttles
    clock.advance(1)
    health.call_finished("pay", "", "server_error", 503, 3, 0.2)
    clock.advance(1)
    health.call_finished("pay", "", "CIRCUIT_OPEN", 0, 0, 0.0001)
    totals = health.totals("pay", ["", "charge"])
    assert (totals.calls, totals.failures, totals.rejected) == (6, 3, {"CIRCUIT_OPEN": 1})
    assert health.totals("pay", ["charge"]).calls == 1
    last, upstream = health.last_error("pay"), health.last_upstream_error("pay")
    assert last is not None and upstream is not None
    assert (last.reason, last.at) == ("CIRCUIT_OPEN", clock.time())
    assert (upstream.reason, upstream.status, upstream.at) == (
        "UPSTREAM_STATUS_503", 503, clock.time() - 1)
    assert health.last_error("other") is None


def test_call_health_tracks_breaker_changes_and_deprecations_and_forgets_removed() -> None:
    clock = FakeClock()
    health = CallHealth(clock)
    health.breaker_changed("pay", "", "closed", initial=True)
    clock.advance(30)
    health.breaker_changed("pay", "", "open")
    change = health.breaker("pay")
    assert change is not None and (change.state, change.since) == ("open", clock.time())
    health.deprecation_seen("pay", "v1", DeprecationInfo(deprecated=True, sunset_at=5.0))
    assert [d.route for d in health.deprecations("pay")] == ["v1"]
    health.call_finished("pay", "", "success", 200, 1, 0.01)
    health.forget(["mail"])
    assert health.breaker("pay") is None and health.deprecations("pay") == []
    assert health.totals("pay", [""]).calls == 0


def test_sunset_status() -> None:
    day = 86400.0
    assert sunset_status(None, 100.0) is None
    assert sunset_status(100.0, 100.0) == "past"
    assert sunset_status(100.0 + 10 * day, 100.0) == "near"
    assert sunset_status(100.0 + 90 * day, 100.0) == "later"


def test_links_lose_credentials_query_and_fragment() -> None:
    assert safe_link("https://user:pw@docs.example.com:8443/v1/sunset?token=s3cret#x") == (
        "https://docs.example.com:8443/v1/sunset")
    assert safe_link("/docs/deprecations?key=1") == "/docs/deprecations"
    assert safe_link("javascript:alert(1)") == ""


HOSTILE = '<script>alert("x")</script>&\'"'


def _hostile_snapshot() -> dict[str, Any]:
    stats = {"calls": 1, "failures": 1, "success_rate": 0.0, "latency_p50_seconds": 0.01,
             "latency_p99_seconds": 0.01, "rejected": {HOSTILE: 1}}
    error = {"reason": HOSTILE, "route": HOSTILE, "status": None, "at": 1.7e9}
    return {
        "generated_at": 1.7e9 + 5, "window_seconds": 300.0,
        "sidecar": {"version": HOSTILE, "started_at": 1.7e9, "uptime_seconds": 5.0,
                    "storage_backend": HOSTILE, "ready": False, "checks": {HOSTILE: HOSTILE}},
        "integrations": [{
            "name": HOSTILE, "health": "failing",
            "breaker": {"state": "open", "since": 1.7e9, "retry_at": 1.7e9 + 30,
                        "failure_rate": 1.0, "consecutive_failures": 5},
            **stats, "last_error": error, "last_upstream_error": None,
            "deprecations": [{"route": HOSTILE, "deprecated": True, "deprecated_at": None,
                              "sunset_at": 1.6e9, "sunset": "past",
                              "link": 'https://x.example/"><script>', "seen_at": 1.7e9}],
            "routes": [{"name": HOSTILE, "method": "GET", "path": HOSTILE, "own_breaker": False,
                        "breaker": None, **stats}],
        }],
        "webhooks": [{"source": HOSTILE, "topic": HOSTILE, "stored_events": 1, "pending": 1,
                      "delivered": 0, "failed": 0, "completed": 0, "dead": 0,
                      "oldest_unacked_age_seconds": 3.0,
                      "groups": [{"group": HOSTILE}]}],
        "live": {"websocket_enabled": True, "websocket_connections": 0, "grpc_subscribers": 0,
                 "users": 0},
    }


def test_html_escapes_every_value() -> None:
    page = render_page(_hostile_snapshot(), refresh=5.0, nonce="abc")
    assert "<script>alert" not in page
    assert '"><script>' not in page
    assert page.count("<script") == 1  # only the page's own, nonce-tagged script
    assert '<script nonce="abc">' in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;&quot;" in page
    assert "○ open" in page and "✗ failing" in page and "sunset passed" in page

"""The Call path's fast recorders give exactly what prometheus_client's own calls give."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sidecar.metrics import fast_inc, fast_observe

BUCKETS = (0.005, 0.01, 0.1, 1.0)
# Below, on and between the bounds, and past the last one (+Inf).
VALUES = [0.0, 0.001, 0.005, 0.0050001, 0.01, 0.05, 0.1, 1.0, 2.5, 1e9]


def exposition(fast: bool) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", ["l"], buckets=BUCKETS, registry=registry)
    counter = Counter("c", "c", ["l"], registry=registry)
    observe = fast_observe(histogram.labels("x")) if fast else histogram.labels("x").observe
    inc = fast_inc(counter.labels("x")) if fast else counter.labels("x").inc
    for value in VALUES:
        observe(value)
        inc()
    # *_created carries the creation time, which differs between the two registries.
    return b"\n".join(line for line in generate_latest(registry).splitlines()
                      if b"_created" not in line)


def test_fast_recorders_match_prometheus_client() -> None:
    assert exposition(fast=True) == exposition(fast=False)
    assert b'h_seconds_bucket{l="x",le="0.005"} 3.0' in exposition(fast=True)

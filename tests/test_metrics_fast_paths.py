"""The fast recorders (Call path, live deliveries) give exactly what prometheus_client's own
calls give."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sidecar.metrics import fast_count_and_observe, fast_inc, fast_observe

BUCKETS = (0.005, 0.01, 0.1, 1.0)
# Below, on and between the bounds, and past the last one (+Inf).
VALUES = [0.0, 0.001, 0.005, 0.0050001, 0.01, 0.05, 0.1, 1.0, 2.5, 1e9]


def exposition(fast: bool, combined: bool = False) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", ["l"], buckets=BUCKETS, registry=registry)
    counter = Counter("c", "c", ["l"], registry=registry)
    observe = fast_observe(histogram.labels("x")) if fast else histogram.labels("x").observe
    inc = fast_inc(counter.labels("x")) if fast else counter.labels("x").inc
    both = fast_count_and_observe(counter.labels("x"), histogram.labels("x"))
    for value in VALUES:
        if combined:
            both(value)
        else:
            observe(value)
            inc()
    # *_created carries the creation time, which differs between the two registries.
    return b"\n".join(line for line in generate_latest(registry).splitlines()
                      if b"_created" not in line)


def test_fast_recorders_match_prometheus_client() -> None:
    assert exposition(fast=True) == exposition(fast=False)
    assert b'h_seconds_bucket{l="x",le="0.005"} 3.0' in exposition(fast=True)


def test_count_and_observe_in_one_call_matches_prometheus_client() -> None:
    assert exposition(fast=True, combined=True) == exposition(fast=False)


class _Elsewhere:
    """A label child whose values are not prometheus_client's in-process kind (as in
    multiprocess mode): the recorder must go through its public methods."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def inc(self, amount: float = 1) -> None:
        self.calls.append(("inc", amount))

    def observe(self, amount: float) -> None:
        self.calls.append(("observe", amount))


def test_count_and_observe_falls_back_to_the_public_methods() -> None:
    counter, histogram = _Elsewhere(), _Elsewhere()
    fast_count_and_observe(counter, histogram)(0.25)
    assert counter.calls == [("inc", 1)] and histogram.calls == [("observe", 0.25)]

"""The fast paths (``sidecar.fast_paths``) record exactly what prometheus_client's own
calls record, and step aside for the public API when switched off or on a version
they were not checked against."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sidecar import fast_paths
from sidecar.fast_paths import enabled, fast_count_and_observe, fast_inc, fast_observe

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


def test_the_switch_and_the_version_guard_decide() -> None:
    assert fast_paths.ENABLED  # the locked prometheus_client is one they were checked on
    assert enabled({}, (0, 26))
    assert not enabled({"SIDECAR_FAST_PATHS": "0"}, (0, 26))
    assert not enabled({}, (1, 0)) and not enabled({}, (0, 19)) and not enabled({}, ())


def test_switched_off_every_recorder_is_the_public_method(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_paths, "ENABLED", False)
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["l"], registry=registry).labels("x")
    histogram = Histogram("h", "h", ["l"], registry=registry).labels("x")
    assert fast_inc(counter) == counter.inc
    assert fast_observe(histogram) == histogram.observe
    fast_count_and_observe(counter, histogram)(0.25)
    fast_paths.observe_many(histogram, 0.5, 3)
    assert counter._value.get() == 1  # recorded all the same, the public way
    assert histogram._sum.get() == 1.75

"""A room's one observation per event counts as one per delivery in the histogram."""

from __future__ import annotations

import pytest

from sidecar.metrics import LiveMetrics, Metrics


def _samples(m: Metrics, name: str) -> list[str]:
    """Sample lines of ``name`` (not the creation time; the sum to 9 digits)."""
    out = []
    for line in m.exposition().decode().splitlines():
        if line.startswith(name) and "_created" not in line:
            key, _, value = line.rpartition(" ")
            out.append(f"{key} {float(value):.9g}")
    return out


@pytest.mark.parametrize("latency", [0.0, 0.0007, 0.001, 0.0031, 7.0, 99.0])
def test_many_deliveries_at_once_equal_one_observation_each(latency: float) -> None:
    at_once, one_by_one = Metrics(), Metrics()
    LiveMetrics(at_once).delivered_live("ws", 250, latency)
    observer = LiveMetrics(one_by_one)
    for _ in range(250):
        observer.delivered_live("ws", 1, latency)
    for name in ("sidecar_publish_to_delivery_seconds", "sidecar_live_deliveries_total"):
        assert _samples(at_once, name) == _samples(one_by_one, name)
    assert 'sidecar_publish_to_delivery_seconds_count{transport="ws"} 250' in _samples(
        at_once, "sidecar_publish_to_delivery_seconds_count")


@pytest.mark.parametrize("latency", [0.0, 0.001, 0.0031, 99.0])
def test_a_subscribers_recorder_equals_delivered_live(latency: float) -> None:
    recorded, reported = Metrics(), Metrics()
    record = LiveMetrics(recorded).delivery_recorder("grpc")
    observer = LiveMetrics(reported)
    for _ in range(3):
        record(latency)
        observer.delivered_live("grpc", 1, latency)
    for name in ("sidecar_publish_to_delivery_seconds", "sidecar_live_deliveries_total"):
        assert _samples(recorded, name) == _samples(reported, name)
    assert 'sidecar_live_deliveries_total{transport="grpc"} 3' in _samples(
        recorded, "sidecar_live_deliveries_total")

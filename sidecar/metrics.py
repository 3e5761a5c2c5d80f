"""Every Prometheus metric the sidecar exports, defined in one place.

Each ``Metrics`` owns its registry, so several sidecars can live in one test
process. Labels are bounded: names from config and fixed enums, never paths,
keys, topics or ids.
"""

from __future__ import annotations

import platform

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sidecar import __version__

#: Latency buckets (seconds) from 0.5 ms to 30 s: a local RPC answers in
#: well under a millisecond, a slow third-party API in tens of seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry

        self.build_info = Info(
            "sidecar_build", "Build of the running sidecar.", registry=r
        )
        self.build_info.info({
            "version": __version__,
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        })

        # gRPC server metrics, with the names go-grpc-prometheus made conventional.
        self.grpc_started = Counter(
            "grpc_server_started_total", "RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"], registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=r,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds", "Time to complete an RPC on the server.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total", "Stream messages sent by the server.",
            ["grpc_type", "grpc_service", "grpc_method"], registry=r,
        )
        self.grpc_auth_failures = Counter(
            "sidecar_grpc_auth_failures_total",
            "gRPC calls refused for a missing or wrong API token.", registry=r,
        )

        # Edge and process state.
        self.http_requests = Counter(
            "sidecar_http_requests_total", "HTTP requests answered, by listener and status.",
            ["listener", "code"], registry=r,
        )
        self.ready = Gauge(
            "sidecar_ready", "1 when the sidecar reports ready, else 0.", registry=r,
        )
        self.storage_up = Gauge(
            "sidecar_storage_up", "1 when the storage backend answered its last check.",
            ["backend"], registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

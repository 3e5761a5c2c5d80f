"""Integration sidecar: resilient third-party calls, verified webhooks and
real-time events for any application, over gRPC."""

__version__ = "0.1.0"

"""Benchmarks that ``make bench`` runs (``python -m tests.bench``): Call, webhook
ingest and real-time fan-out, each against baselines on this machine.

The Call benchmark (:mod:`tests.bench.call`) compares the real sidecar with a
direct HTTP client and with a minimal gRPC pass-through proxy, all on
127.0.0.1; see that module for the method.
"""

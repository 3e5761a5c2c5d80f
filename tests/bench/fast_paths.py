"""The prometheus_client fast paths (``sidecar.fast_paths``) against the library's own
calls, in the same run: nanoseconds per call, best of several repeats. The gain
claimed in the module's docstring comes from here.

    python -m tests.bench.fast_paths [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from sidecar.fast_paths import fast_count_and_observe, fast_inc, fast_observe
from sidecar.metrics import LATENCY_BUCKETS


def cases() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """name -> (the library's call, the fast path), recording the same thing."""
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["l"], registry=registry).labels("x")
    histogram = Histogram("h", "h", ["l"], buckets=LATENCY_BUCKETS,
                          registry=registry).labels("x")
    inc, observe = fast_inc(counter), fast_observe(histogram)
    both = fast_count_and_observe(counter, histogram)

    def public_both() -> None:
        counter.inc()
        histogram.observe(0.3)

    return {
        "counter inc": (counter.inc, inc),
        "histogram observe": (lambda: histogram.observe(0.3), lambda: observe(0.3)),
        "delivery count + observe": (public_both, lambda: both(0.3)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fast_paths")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="PATH", type=Path)
    args = parser.parse_args(argv)
    number = 20_000 if args.quick else 200_000
    results = {}
    for name, (public, fast) in cases().items():
        ns = [min(timeit.repeat(f, number=number, repeat=5)) / number * 1e9
              for f in (public, fast)]
        results[name] = {"public_ns": round(ns[0]), "fast_ns": round(ns[1]),
                         "ratio": round(ns[1] / ns[0], 3)}
        print(f"{name:28} public {ns[0]:7.0f} ns   fast {ns[1]:7.0f} ns   "
              f"fast/public {ns[1] / ns[0]:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

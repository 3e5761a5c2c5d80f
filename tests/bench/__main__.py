"""``python -m tests.bench``: run every benchmark, one after another, and print figures.

``--only call,webhooks`` picks some; ``--quick`` and ``--json DIR`` are passed on
(each benchmark writes ``DIR/<name>.json``). Benchmarks run one at a time: they
share this machine's two cores, and running them together would spoil both.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

BENCHMARKS = ("call", "webhooks", "realtime", "replicas", "fast_paths", "queue")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="short phases (smoke test)")
    parser.add_argument("--json", metavar="DIR", type=Path, help="write DIR/<name>.json")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = []
    for name in names:
        try:
            module = importlib.import_module(f"tests.bench.{name}")
        except ModuleNotFoundError:
            print(f"== {name}: not available in this checkout", flush=True)
            continue
        forwarded = ["--quick"] if args.quick else []
        if args.json:
            args.json.mkdir(parents=True, exist_ok=True)
            forwarded += ["--json", str(args.json / f"{name}.json")]
        print(f"\n== benchmark: {name}", flush=True)
        if module.main(forwarded) != 0:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that broke: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

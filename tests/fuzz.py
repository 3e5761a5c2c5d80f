"""``make fuzz``: the property-based tests of every input boundary, for minutes each.

In ``make test`` each property test runs a small budget of examples. Here each
boundary's tests run again and again, each run with a fresh random seed and
``FUZZ_SCALE`` times their budget, until the boundary's time is up; the report says
how many examples ran and what failed (a failing example is also kept in
``.hypothesis/``, so the next ``make test`` replays it). Exit status 0 only with no
finding.

    python -m tests.fuzz [--minutes 10] [--scale 20] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Each input boundary and the property tests that attack it.
BOUNDARIES: dict[str, list[str]] = {
    "call-url": ["tests/core/test_url_invariant.py"],
    "call-headers": [
        "tests/test_call_security.py::test_any_header_value_is_sent_or_refused_naming_it"],
    "grpc-bytes": ["tests/test_rpc_raw_bytes.py"],
    "enqueue-fields": [
        "tests/test_queued_calls.py::test_hostile_enqueue_fields_get_a_documented_answer"],
    "jwt": ["tests/test_jwt_tokens.py"],
    "webhook-headers": ["tests/test_webhooks_header_bytes.py"],
    "edge-bytes": ["tests/test_edge_malformed.py"],
    "config": ["tests/test_config_file_limits.py",
               "tests/test_config_hostile_values.py"],
    "logs": [
        "tests/test_config.py::test_a_secret_is_scrubbed_in_every_usual_encoding",
        "tests/test_config.py::test_hostile_text_stays_one_capped_log_line"],
    "live-gaps": ["tests/core/test_live_gaps.py"],
}
#: Seconds one property test may take in a run: at FUZZ_SCALE times its budget, one
#: test can take minutes on a busy machine. A run is never cut short to fit the
#: boundary's time (that reported a timeout as a finding): the last run may overrun it.
TEST_TIMEOUT = 900
_STATS = re.compile(r"- (\d+) passing, (\d+) failing,? and \d+ invalid test cases")


@dataclass
class Tally:
    runs: int = 0
    examples: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def run_once(tests: list[str], scale: int) -> tuple[int, int, str]:
    """One pytest run of ``tests``: (examples, exit status, the first error lines)."""
    seed = secrets.randbelow(2**32)
    env = {**os.environ, "FUZZ_SCALE": str(scale)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--hypothesis-seed={seed}", "--hypothesis-show-statistics",
           f"--timeout={TEST_TIMEOUT}", *tests]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TEST_TIMEOUT * 4)
    examples = sum(int(a) + int(b) for a, b in _STATS.findall(done.stdout))
    errors = [line for line in done.stdout.splitlines() if line.startswith(("E ", "FAILED"))]
    return examples, done.returncode, f"seed {seed}: " + " | ".join(errors[:4])


def fuzz(name: str, minutes: float, scale: int) -> Tally:
    tally = Tally()
    started = time.monotonic()
    deadline = started + minutes * 60
    while time.monotonic() < deadline:
        examples, status, errors = run_once(BOUNDARIES[name], scale)
        tally.runs += 1
        tally.examples += examples
        if status != 0:
            tally.failures.append(errors)
        print(f"  {name}: run {tally.runs}, {tally.examples} examples so far"
              f"{', FAILED' if status else ''}", flush=True)
    tally.seconds = time.monotonic() - started
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="per boundary")
    parser.add_argument("--scale", type=int, default=20,
                        help="times each test's own budget of examples, per run")
    parser.add_argument("--only", nargs="*", choices=sorted(BOUNDARIES), default=None)
    args = parser.parse_args(argv)
    names = args.only or list(BOUNDARIES)
    results: dict[str, Tally] = {}
    started = time.monotonic()
    for name in names:
        print(f"fuzz: {name} for {args.minutes:g} min ({', '.join(BOUNDARIES[name])})",
              flush=True)
        results[name] = fuzz(name, args.minutes, args.scale)
    print(f"\nfuzz: {len(names)} boundaries, {time.monotonic() - started:.0f} s")
    print(f"{'boundary':<16} {'seconds':>7} {'runs':>5} {'examples':>10}  findings")
    for name, tally in results.items():
        found = "; ".join(tally.failures) if tally.failures else "none"
        print(f"{name:<16} {tally.seconds:>7.0f} {tally.runs:>5} {tally.examples:>10}  {found}")
    return 1 if any(t.failures for t in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""How many examples each property-based test runs: its own small budget in ``make
test``, many times that under ``make fuzz`` (``FUZZ_SCALE``, set by tests/fuzz.py)."""

from __future__ import annotations

import os

#: Multiplies every property test's budget; 1 in the ordinary suite.
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))


def examples(budget: int) -> int:
    """``budget`` examples in ``make test``; ``budget * FUZZ_SCALE`` when fuzzing."""
    return budget * SCALE

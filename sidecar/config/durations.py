"""Durations as the config file writes them: ``250ms``, ``5s``, ``2m``, ``1h``, ``7d`` or
a number of seconds; read by the loader, written back by ``config show``."""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
#: The largest unit first: how a duration is written back.
_WRITTEN = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))
#: What the JSON Schema accepts as a duration string.
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"
#: The longest duration any setting takes: longer ones are mistakes (or overflow timers).
MAX_DURATION = 10 * 365 * 24 * 3600.0
MAX_DURATION_TEXT = "10 years"


def parse_duration(value: Any) -> float | None:
    """Seconds, or None when ``value`` is no duration (-1.0 for a negative text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value.strip().startswith("-"):
            return -1.0
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    return None


def plain_number(value: float) -> int | float:
    """``2`` rather than ``2.0``: the loader reads either as the same float."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


def format_duration(seconds: float) -> str | int | float:
    """The largest whole unit (``7d``, ``250ms``) that reads back exactly, else seconds.

    A single day shows as ``24h``, as the documentation writes it.
    """
    if seconds == 0:
        return "0s"
    if math.isfinite(seconds) and seconds > 0:
        for unit, size in _WRITTEN:
            count = round(seconds / size)
            text = f"{count}{unit}"
            if count >= (2 if unit == "d" else 1) and parse_duration(text) == seconds:
                return text
    return plain_number(seconds)

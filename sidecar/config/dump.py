"""The effective configuration as plain data, with every secret redacted."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from sidecar.config.model import Config, Secret

REDACTED = "<redacted>"


def to_plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return {"env": value.env, "value": REDACTED}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple) and value and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value
    ):
        return {k: to_plain(v) for k, v in value}  # header pairs
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    if isinstance(value, frozenset | set):
        return _compact(value)
    return value


def _compact(values: frozenset[object] | set[object]) -> list[object]:
    """Sorted; a full class of HTTP statuses (500-599) shows as ``5xx``."""
    if not all(isinstance(v, int) for v in values):
        return sorted(values, key=str)
    ints: set[int] = {v for v in values if isinstance(v, int)}
    out: list[object] = []
    for cls in range(1, 6):
        block = set(range(cls * 100, cls * 100 + 100))
        if block <= ints:
            out.append(f"{cls}xx")
            ints -= block
    return sorted(ints) + out


def dump_redacted(config: Config) -> str:
    """YAML of the effective config; secrets show their variable name only."""
    return yaml.safe_dump(to_plain(config), sort_keys=False, default_flow_style=False)

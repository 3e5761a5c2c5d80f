"""What a reload applies is what each setting's declaration says (#15): every plain
setting, changed on its own, is applied live or kept until a restart (and reported by
its key) as its ``Setting.reload`` (or its section's) says; no list of settings is
kept anywhere else."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar.config import Config, parse_config
from sidecar.config.settings import Declared, declared, setting
from sidecar.reload import _effective, effective_config, restart_required

PLAIN = ("string", "boolean", "integer", "number", "duration", "header")
#: Settings whose other values need more than themselves (a Redis URL, ...).
SKIP = {"storage.backend", "storage.redis.mode"}


def plain_settings(value: Any = None, path: tuple[str, ...] = (),
                   inherited: str = "live") -> list[tuple[tuple[str, ...], Declared, str]]:
    """Every plain setting reachable without a name (no integrations, sources, routes),
    with its default here (in ``value``) and the reload mode its declaration gives it."""
    found = []
    value = Config() if value is None else value
    for d in declared(type(value)):
        s, current = d.setting, getattr(value, d.name)
        mode = s.reload or inherited
        if d.key is None or s.reload_rule:
            continue
        if s.kind == "section" and not s.flatten and not s.switch and current is not None:
            found += plain_settings(current, (*path, d.key), mode)
        elif s.kind in PLAIN and ".".join((*path, d.key)) not in SKIP:
            found.append(((*path, d.key), dataclasses.replace(d, default=current), mode))
    return found


def other_value(d: Declared) -> Any:
    s, value = d.setting, d.default
    if s.choices:
        return next(c for c in s.choices if c != value)
    if s.kind == "boolean":
        return not value
    if s.kind == "integer":
        return value + 1 if s.maximum is None or value + 1 <= s.maximum else value - 1
    if s.kind in ("number", "duration"):
        return value / 2 if value > 0.5 else value + 0.25
    if s.kind == "header":
        return value + "-X"
    return value + "x" if value else "x"


def config_with(path: tuple[str, ...], value: Any) -> Config:
    raw: dict[str, Any] = {}
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return parse_config(raw, {})


SETTINGS = plain_settings()


def test_the_walk_finds_settings_of_both_kinds() -> None:
    modes = {".".join(path): mode for path, _, mode in SETTINGS}
    assert len(modes) > 40
    assert (modes["logging.level"], modes["logging.format"]) == ("live", "restart")
    assert (modes["realtime.max_event_age"], modes["realtime.queue_size"]) == ("live",
                                                                               "restart")
    assert modes["webhooks.retention"] == "live"
    assert modes["webhooks.delivery.backoff.max"] == "restart"
    assert modes["server.edge.port"] == modes["tracing.sample_ratio"] == "restart"
    assert modes["reload.watch_interval"] == "live"


@pytest.mark.parametrize(("path", "declaration", "mode"), SETTINGS,
                         ids=[".".join(p) for p, _, _ in SETTINGS])
def test_a_changed_setting_applies_as_its_declaration_says(
        path: tuple[str, ...], declaration: Declared, mode: str) -> None:
    running = parse_config({}, {})
    new = config_with(path, other_value(declaration))
    effective = effective_config(running, new)
    changed = restart_required(effective, new)
    if mode == "live":
        assert effective == new and changed == []
    else:
        assert effective == running
        assert changed == [".".join(path)]


def test_the_declaration_alone_decides() -> None:
    @dataclass(frozen=True)
    class Toy:
        kept: int = setting(1, kind="integer", doc="restart-only", reload="restart")
        applied: int = setting(1, kind="integer", doc="inherits live")

    running, new = Toy(), Toy(kept=2, applied=2)
    assert _effective(running, new, Toy, "live") == Toy(kept=1, applied=2)
    assert _effective(running, new, Toy, "restart") == Toy(kept=1, applied=1)
    assert dataclasses.fields(Toy)[0].metadata["setting"].reload == "restart"

"""Reading one mapping of the config file: typed values, every problem collected with
the field's dotted path and origin, unknown keys refused with a did-you-mean, and
``fill``, which reads a config dataclass from its declarations (``settings.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sidecar.config.durations import (
    MAX_DURATION,
    MAX_DURATION_TEXT,
    format_duration,
    parse_duration,
)
from sidecar.config.model import Secret
from sidecar.config.settings import Declared, declared

T = TypeVar("T")

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

MISSING: Any = object()


@dataclass(frozen=True)
class ConfigProblem:
    field: str
    message: str
    #: Where in the file: ``sidecar.yaml, line 12`` (empty: not from a file's key).
    origin: str = ""

    def __str__(self) -> str:
        where = f" ({self.origin})" if self.origin else ""
        return f"{self.field}: {self.message}{where}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[ConfigProblem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration{where} ({len(problems)} problem(s)):\n{lines}")


class Problems:
    """What one load found wrong, and what every section reads against: the
    environment and the directory relative paths start from."""

    def __init__(self, origins: Mapping[str, str], env: Mapping[str, str],
                 base_dir: Path, lines: Mapping[str, int] | None = None,
                 file_name: str = "") -> None:
        self.items: list[ConfigProblem] = []
        self._origins = origins
        self._lines = lines or {}
        self._file_name = file_name
        self.env = env
        self.base_dir = base_dir

    def add(self, path: str, message: str) -> None:
        origin = self._origins.get(path)
        label = f"{path} (from {origin})" if origin else path
        self.items.append(ConfigProblem(label, message, "" if origin else self._line(path)))

    def _line(self, path: str) -> str:
        """The line of ``path``'s key, else of the nearest enclosing key (a required key
        that is missing is reported at its section)."""
        while path and self._lines:
            if path in self._lines:
                return f"{self._file_name}, line {self._lines[path]}"
            # Each step is shorter: a list item's index, else the last dotted key.
            if path.endswith("]") and "[" in path:
                path = path[:path.rindex("[")]
            else:
                path = path.rpartition(".")[0]
        return ""


def kind_of(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def as_str(value: Any) -> str:
    if isinstance(value, bool | dict | list):
        raise TypeError
    return str(value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    return float(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise TypeError


class Section:
    """One mapping of the raw config: typed reads, and unknown-key detection."""

    def __init__(self, raw: object, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()
        if raw is None or raw is MISSING:
            raw = {}
        if not isinstance(raw, dict):
            problems.add(path or "<root>", f"must be a mapping, got {kind_of(raw)}")
            raw = {}
        self.raw: dict[str, Any] = raw

    @property
    def env(self) -> Mapping[str, str]:
        return self.problems.env

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.raw

    def take(self, key: str) -> Any:
        self._seen.add(key)
        return self.raw.get(key, MISSING)

    def err(self, key: str, message: str) -> None:
        self.problems.add(self.field(key), message)

    def section(self, key: str) -> Section:
        return Section(self.take(key), self.field(key), self.problems)

    def _typed(self, key: str, default: T, conv: Callable[[Any], T], what: str) -> T:
        value = self.take(key)
        if value is MISSING or value is None:
            return default
        try:
            return conv(value)
        except (TypeError, ValueError):
            self.err(key, f"must be {what}, got {kind_of(value)} {value!r}")
            return default

    def string(
        self, key: str, default: str = "", *, required: bool = False, choices: tuple[str, ...] = ()
    ) -> str:
        if required and self.raw.get(key) in (None, ""):
            self.take(key)
            self.err(key, "is required")
            return default
        value = self._typed(key, default, as_str, "a string")
        if choices and value not in choices:
            self.err(key, f"must be one of {', '.join(choices)}; got {value!r}")
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: float | None = None,
                maximum: float | None = None) -> int:
        value = self._typed(key, default, _as_int, "an integer")
        if minimum is not None and value < minimum:
            self.err(key, f"must be at least {minimum}; got {value}")
            return default
        if maximum is not None and value > maximum:
            self.err(key, f"must be at most {maximum}; got {value}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._typed(key, default, _as_bool, "true or false")

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self.take(key)
        if value is MISSING or value is None:
            return default
        seconds = parse_duration(value)
        if seconds is None or math.isnan(seconds):
            self.err(key, f"must be a duration like 250ms, 5s, 2m or a number of seconds; "
                          f"got {value!r}")
            return default
        if seconds > MAX_DURATION:
            self.err(key, f"must be at most {MAX_DURATION_TEXT}; got {value!r}")
            return default
        if seconds < 0 or (positive and seconds == 0):
            self.err(key, f"must be {'greater than zero' if positive else 'zero or more'}; "
                          f"got {value!r}")
            return default
        return seconds

    def number(self, key: str, default: float, *, minimum: float | None = None,
               maximum: float | None = None) -> float:
        value = self._typed(key, default, _as_float, "a number")
        if not math.isfinite(value):
            self.err(key, f"must be a finite number; got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.err(key, f"must be at least {minimum:g}; got {value:g}")
            return default
        if maximum is not None and value > maximum:
            self.err(key, f"must be at most {maximum:g}; got {value:g}")
            return default
        return value

    def header_name(self, key: str, default: str) -> str:
        value = self.string(key, default)
        if not HEADER_NAME_RE.match(value):
            self.err(key, f"invalid header name {value!r}")
        return value

    def secret(self, key: str, *, required: bool) -> Secret | None:
        """Read ``<key>`` as the NAME of an environment variable holding a secret."""
        name = self.string(key, required=required)
        if not name:
            return None
        if not ENV_NAME_RE.match(name):
            self.err(key, f"must name an environment variable (letters, digits, _); got {name!r}")
            return None
        value = self.env.get(name)
        if not value:
            self.err(key, f"environment variable {name} is not set or empty")
            return None
        return Secret(env=name, value=value)

    def finish(self, hints: Mapping[str, str] | None = None) -> None:
        """Report keys nobody read: typos must not be silently ignored."""
        for key in self.raw:
            if key in self._seen:
                continue
            hint = (hints or {}).get(key, "")
            if not hint:
                import difflib  # only for this message: a valid config never needs it

                close = difflib.get_close_matches(str(key), list(self._seen), n=1)
                hint = f"did you mean {close[0]!r}?" if close else ""
            msg = "unknown field" + (f"; {hint}" if hint else "")
            self.problems.add(self.field(str(key)), msg)


# --------------------------------------------------------------------------- declarations


def secret_hints(cls: type) -> dict[str, str]:
    """``api_token`` in the file where ``api_token_env`` is declared: say where secrets go."""
    return {d.key.removesuffix("_env"): f"secrets come from the environment: use {d.key}"
            for d in declared(cls) if d.setting.kind == "secret" and d.key
            and d.key.endswith("_env")}


def read(sec: Section, d: Declared, fallback: Any) -> Any:
    """One declared value of ``sec``; ``fallback`` when absent or wrong (reported)."""
    s, key = d.setting, d.key
    assert key is not None and s.kind != "custom", d.name
    if s.kind == "header":
        return sec.header_name(key, fallback)
    if s.kind == "string":
        value = sec.string(key, "" if fallback is MISSING else fallback, required=s.required,
                           choices=s.choices)
        return (value or fallback) if s.blank_default else value
    if s.kind == "integer":
        return sec.integer(key, fallback, minimum=s.minimum, maximum=s.maximum)
    if s.kind == "number":
        return sec.number(key, fallback, minimum=s.minimum, maximum=s.maximum)
    if s.kind == "boolean":
        return sec.boolean(key, fallback)
    if s.kind == "secret":
        return sec.secret(key, required=s.required)
    if s.kind == "duration":
        seconds = sec.duration(key, fallback, positive=s.positive)
        if s.minimum is not None and seconds < s.minimum:
            sec.err(key, f"must be at least {format_duration(s.minimum)}; got {seconds:g}s")
        return seconds
    cls = s.of or type(fallback)
    if s.flatten:
        return fill(sec, cls, fallback, finish=False)
    sub = sec.section(key)
    if s.switch and not sub.boolean("enabled", fallback is not None):
        sub.finish()
        return None
    return fill(sub, cls, fallback)


def read_one(sec: Section, cls: type, name: str, base: Any = None) -> Any:
    """The declared field ``name`` of ``cls``, read on its own (before the others)."""
    d = next(d for d in declared(cls) if d.name == name)
    return read(sec, d, getattr(base, name) if base is not None else d.default)


def fill(sec: Section, cls: type[T], base: T | None = None, *, finish: bool = True,
         hints: Mapping[str, str] | None = None, **given: Any) -> T:
    """``cls`` read from ``sec``: each declared field from its key (defaults: ``base``'s
    values, else the class's), those in ``given`` as they are. Settings that need code of
    their own are read by the caller and given."""
    values: dict[str, Any] = {}
    for d in declared(cls):
        if d.name in given:
            values[d.name] = given[d.name]
            if d.key is not None and not d.setting.flatten:
                sec.take(d.key)  # the caller read it
        elif d.key is not None and d.setting.kind != "custom":
            values[d.name] = read(sec, d, getattr(base, d.name) if base is not None
                                  else d.default)
    if finish:
        sec.finish({**secret_hints(cls), **(hints or {})})
    try:
        return cls(**values)
    except ValueError as exc:  # a core policy's own invariants
        sec.problems.add(sec.path, str(exc))
        return base if base is not None else cls()

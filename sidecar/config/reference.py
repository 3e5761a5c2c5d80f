"""The config file's JSON Schema and its reference page, generated from the settings'
declarations (``config schema``, ``deploy/generate.py``). Never imported by ``serve``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.config.durations import DURATION_PATTERN, format_duration, plain_number
from sidecar.config.load import ENV_OVERRIDES
from sidecar.config.model import CONFIG_VERSION, VERSION_SETTING, Config, Secret
from sidecar.config.settings import Declared, Setting, declared, is_section

#: Where the generated schema is committed (``# yaml-language-server: $schema=`` in
#: every example config points at it).
SCHEMA_PATH = "deploy/config/sidecar.schema.json"
_NAME_PATTERN = "^[a-z][a-z0-9_-]{0,62}$"
_ENV_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
_HEADER_PATTERN = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"

# --------------------------------------------------------------------------- JSON Schema


def _default(s: Setting, value: Any) -> Any:
    """A scalar default as the file writes it; None when it has none to show."""
    if value is None or value is dataclasses.MISSING or s.kind in ("section", "secret"):
        return None
    if s.kind == "duration":
        return format_duration(value)
    if s.kind == "number":
        return plain_number(value)
    if isinstance(value, str | int | float | bool):
        return value
    return None


def _description(s: Setting) -> str:
    unit = f" ({s.unit})" if s.unit and s.unit != "path" else ""
    return s.doc.replace("`", "") + unit


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``key: null`` (or ``key:``) means the default to the loader, as ``config show``
    writes an unset secret."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return {**schema, "type": [*kind, "null"]}
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if "$ref" in schema:
        return schema  # the definitions take null themselves
    return {"anyOf": [schema, {"type": "null"}]}


class _SchemaBuilder:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {
            "duration": {"description": "250ms, 5s, 2m, 1h, 1d or a number of seconds",
                         "anyOf": [{"type": "number", "minimum": 0},
                                   {"type": "string", "pattern": DURATION_PATTERN},
                                   {"type": "null"}]}}

    def ref(self, cls: type, *, switch: bool = False,
            omit: tuple[str, ...] = ()) -> dict[str, Any]:
        name = cls.__name__ + ("Switch" if switch else "") + "".join(f"_no_{k}" for k in omit)
        if name not in self.defs:
            self.defs[name] = {}  # a placeholder while it is built
            self.defs[name] = self.object(cls, switch=switch, omit=omit)
        return {"$ref": f"#/$defs/{name}"}

    def object(self, cls: type, *, switch: bool = False,
               omit: tuple[str, ...] = ()) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        if switch:
            properties["enabled"] = {"type": "boolean", "description": "false: off"}
        self._properties(cls, properties, required, omit)
        out: dict[str, Any] = {"type": ["object", "null"], "additionalProperties": False,
                               "properties": properties}
        if required and not switch:
            out["required"] = required
        return out

    def _properties(self, cls: type, properties: dict[str, Any], required: list[str],
                    omit: tuple[str, ...] = ()) -> None:
        for d in declared(cls):
            if d.key is None or d.key in omit:
                continue
            s = d.setting
            if s.kind == "section" and s.flatten:
                # Required only when the section is there (OAuth2's keys in ``auth``).
                inner: list[str] = []
                self._properties(s.of or type(d.default), properties, inner)
                required += inner if d.default is not None else []
                continue
            prop = {"description": _description(s), **_nullable(self.value(d))}
            default = _default(s, d.default)
            if default is not None and "$ref" not in prop:
                prop["default"] = default
            for key in (d.key, *s.aliases):
                properties[key] = prop
            if s.required:
                required.append(d.key)

    def value(self, d: Declared) -> dict[str, Any]:
        s = d.setting
        if s.kind == "section":
            return self.ref(s.of or type(d.default), switch=s.switch, omit=s.omit)
        if s.kind == "custom":
            if s.schema is not None:
                return s.schema
            item = self.ref(s.of)
            if isinstance(d.default, dict):
                return {"type": "object", "propertyNames": {"pattern": _NAME_PATTERN},
                        "additionalProperties": item}
            return {"type": "array", "items": item}
        if s.kind == "duration":
            return {"$ref": "#/$defs/duration"}
        out: dict[str, Any] = {
            "string": {"type": "string"}, "boolean": {"type": "boolean"},
            "integer": {"type": "integer"}, "number": {"type": "number"},
            "secret": {"type": "string", "pattern": _ENV_PATTERN},
            "header": {"type": "string", "pattern": _HEADER_PATTERN},
        }[s.kind]
        if s.choices:
            out = {"enum": list(s.choices)}
        for bound, key in ((s.minimum, "minimum"), (s.maximum, "maximum")):
            if bound is not None:
                out[key] = bound
        return out


def json_schema() -> dict[str, Any]:
    """The config file's JSON Schema (draft 2020-12), for editors and CI. It checks
    keys, types, enums and bounds; ``config check`` also checks what only the
    sidecar can (files, variables, URLs, settings that depend on each other)."""
    builder = _SchemaBuilder()
    root = builder.object(Config)
    root["type"] = "object"
    root["properties"] = {"version": {"description": VERSION_SETTING.doc,
                                      "const": CONFIG_VERSION},
                          **root["properties"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "integration-sidecar configuration",
        "description": "Generated from sidecar/config/model.py by `integration-sidecar "
                       "config schema`; `config check` is the full validation.",
        **root,
        "$defs": dict(sorted(builder.defs.items())),
    }


def render_schema() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class Row:
    path: str
    kind: str
    default: str
    reload: str
    doc: str


_KINDS = {"string": "string", "header": "header name", "integer": "integer",
          "number": "number", "duration": "duration", "boolean": "boolean",
          "secret": "variable name", "section": "mapping"}


def _kind_text(d: Declared) -> str:
    s = d.setting
    if s.choices:
        return " \\| ".join(f"`{c}`" for c in s.choices)
    text = _KINDS.get(s.kind) or _custom_kind(d)
    bounds = []
    if s.minimum is not None:
        bounds.append(f"≥ {format_duration(s.minimum) if s.kind == 'duration' else s.minimum}")
    if s.maximum is not None:
        bounds.append(f"≤ {s.maximum}")
    unit = f", {s.unit}" if s.unit else ""
    return text + unit + (f" ({', '.join(bounds)})" if bounds else "")


def _custom_kind(d: Declared) -> str:
    schema = d.setting.schema or {}
    if isinstance(d.default, dict):
        return "mapping of name to section"
    if isinstance(d.default, tuple) and d.setting.of is not None:
        return "list of sections"
    if schema.get("$ref") == "#/$defs/duration":
        return "duration"
    kind = schema.get("type") or ("list or variable name" if "anyOf" in schema else "")
    return {"array": "list", "object": "mapping"}.get(str(kind), str(kind) or "value")


def _default_text(d: Declared, value: Any) -> str:
    s = d.setting
    if s.default_text:
        return s.default_text
    if value is dataclasses.MISSING:
        return "required" if s.required else "—"
    if value is None or value in ("", (), {}) or isinstance(value, Secret):
        return "none"
    if isinstance(value, frozenset):
        from sidecar.config.dump import _compact

        value = _compact(value)
    elif s.kind == "duration":
        value = format_duration(value)
    elif s.kind == "number":
        value = plain_number(value)
    elif isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`".replace("'", "")


def _reload_text(d: Declared, mode: str) -> str:
    rule = d.setting.reload_rule
    if rule == "tls":
        return "live (files); restart (on, off)"
    if rule == "switched":
        return "live (restart: `enabled`)"
    return mode


def _rows(cls: type, value: Any, path: str, inherited: str,
          seen: dict[tuple[type, tuple[str, ...]], str],
          omit: tuple[str, ...] = ()) -> Iterator[Row]:
    for d in declared(cls):
        if d.key is None or d.key in omit:
            continue
        s = d.setting
        mode = s.reload or inherited
        here = path if s.flatten else f"{path}{d.key}"
        current = getattr(value, d.name) if value is not None else d.default
        if s.kind == "section" or (s.kind == "custom" and s.of is not None):
            sub = s.of or type(current)
            if s.kind == "custom":  # integrations, routes, webhook sources
                yield Row(here, _kind_text(d), "none", _reload_text(d, mode), s.doc)
                marker = "[]." if isinstance(current, tuple) else ".<name>."
                yield from _rows(sub, None, here + marker, mode, seen)
                continue
            if not s.flatten and (current is None or s.switch):
                yield Row(here, "mapping" + (" or `{enabled: false}`" if s.switch else ""),
                          _default_text(d, current if current is not None else None)
                          if current is None else "on", _reload_text(d, mode), s.doc)
            if (sub, s.omit) in seen and current is None:
                yield Row(f"{here}.*", "", "", "", f"the keys of `{seen[sub, s.omit]}`")
                continue
            seen.setdefault((sub, s.omit), here)
            yield from _rows(sub, current if is_section(current) else None,
                             here if s.flatten else here + ".", mode, seen, s.omit)
            continue
        for key in (d.key, *s.aliases):
            yield Row(f"{path}{key}", _kind_text(d), _default_text(d, current),
                      _reload_text(d, mode), s.doc)


def reference_rows() -> list[Row]:
    return [Row("version", "integer", f"`{CONFIG_VERSION}`", "live", VERSION_SETTING.doc),
            *_rows(Config, Config(), "", "live", {})]


_INTRO = """\
# Configuration reference

<!-- Generated from sidecar/config/model.py by `python deploy/generate.py`; do not
edit by hand (a test fails when it is stale). -->

One YAML file (`--config`, or `$SIDECAR_CONFIG`) plus environment variables. Every
setting is optional unless marked required. Secrets never go in the file: a setting
of type *variable name* (ending in `_env`) names the environment variable that holds
the value, and a start-up fails when that variable is unset. Durations take `250ms`,
`5s`, `2m`, `1h`, `1d` or a number of seconds. Relative file paths start from the
config file's directory. Unknown keys are errors (with a did-you-mean), and every
problem is reported at once, each with its key and its line in the file.
`integration-sidecar config check` validates a file, `config show` prints the
effective configuration (secrets by variable name only), and `config schema` prints
the file's JSON Schema, committed as [`{schema}`](../{schema}): with

```yaml
# yaml-language-server: $schema=<relative path to {schema}>
```

at the top of a config file, editors with the YAML language server complete and check
it. The annotated example is
[`deploy/config/sidecar.example.yaml`](../deploy/config/sidecar.example.yaml).

**Reload**: `live` settings apply to new work when the file is reloaded (SIGHUP or
`reload.watch`); `restart` settings keep their running value, and the reload logs them
and sets `sidecar_config_restart_required` until the next restart.

"""


def render_reference() -> str:
    lines = [_INTRO.format(schema=SCHEMA_PATH).rstrip("\n"), "",
             "| key | type | default | reload | meaning |",
             "| --- | --- | --- | --- | --- |"]
    for row in reference_rows():
        doc = row.doc.replace("|", "\\|")
        lines.append(f"| `{row.path}` | {row.kind} | {row.default} | {row.reload} | {doc} |")
    lines += ["", "## Environment overrides", "",
              "Applied before validation; a problem names the variable.", "",
              "| variable | key |", "| --- | --- |",
              "| `SIDECAR_CONFIG` | the config file's path |"]
    lines += [f"| `{var}` | `{'.'.join(path)}` |" for var, path in ENV_OVERRIDES.items()]
    return "\n".join(lines) + "\n"

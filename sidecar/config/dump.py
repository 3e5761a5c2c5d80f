"""The effective configuration written out in the config file's own schema, for
``config show``: secrets by variable name only, every default filled in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from sidecar.config.durations import format_duration, plain_number
from sidecar.config.load import ENV_OVERRIDES
from sidecar.config.model import (
    CONFIG_VERSION,
    AuthConfig,
    BulkheadConfig,
    Config,
    IntegrationConfig,
    OAuth2Config,
    QueueConfig,
    RealtimeConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    SigningConfig,
    WebhooksConfig,
    WebhookSourceConfig,
    WebSocketConfig,
)
from sidecar.config.settings import declared

REDACTED = "<redacted>"

Tree = dict[str, Any]
#: A YAML comment for the key at this path (mapping keys; list items by index).
Notes = dict[tuple[str | int, ...], str]


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


# --------------------------------------------------------------------------- file schema
#
# The inverse of the loader, read from the same declarations: every key the loader
# reads is written with its effective value, so that ``parse_config(to_file_schema(c),
# env) == c`` for any ``c`` it produced (tests/test_config_show.py).


def _value(value: Any, schema: dict[str, Any] | None = None) -> Any:
    """A value as the file writes it (a mapping where its schema says so)."""
    if isinstance(value, Secret):
        return value.env  # only the variable's name
    if schema is not None and schema.get("type") == "object":
        return dict(value)  # header pairs, form fields, attributes
    if isinstance(value, tuple | list):
        return [_value(v) for v in value]
    if isinstance(value, frozenset | set):
        return _compact(value)
    return value


def _section(value: Any, cls: type, omit: tuple[str, ...] = (), **given: Any) -> Tree:
    """``value`` (of ``cls``) in the file's schema; the keys in ``given`` as they are."""
    out: Tree = {}
    for d in declared(cls):
        if d.key is None or d.key in omit:
            continue
        if d.key in given:
            out[d.key] = given[d.key]
            continue
        s, item = d.setting, getattr(value, d.name)
        if s.kind == "duration":
            out[d.key] = format_duration(item)
        elif s.kind == "number":
            out[d.key] = plain_number(item)
        elif s.kind == "section" and item is None and not s.switch:
            out[d.key] = None  # an override a route does not make
        elif s.kind == "section":
            sub_cls = s.of or type(item)
            if s.flatten:
                out.update(_section(item, sub_cls) if item is not None else {})
            elif s.switch:
                out[d.key] = ({"enabled": False} if item is None
                              else {"enabled": True, **_section(item, sub_cls, s.omit)})
            else:
                out[d.key] = _section(item, sub_cls)
        else:
            out[d.key] = _value(item, s.schema)
    return out


def _plain_or_env(key: str, value: str, env: str) -> Tree:
    return {f"{key}_env": env} if env else {key: value}


def _auth(a: AuthConfig) -> Tree:
    """Which keys the loader reads depends on ``type``."""
    auth: Tree = {"type": a.type}
    secret = a.secret.env if a.secret is not None else None
    if a.type == "bearer":
        auth["token_env"] = secret
    elif a.type == "api_key":
        auth.update(header=a.header, value_env=secret)
    elif a.type == "basic":
        auth.update(_plain_or_env("username", a.username, a.username_env),
                    password_env=secret)
    elif a.oauth2 is not None:
        o = a.oauth2
        auth.update(_section(o, OAuth2Config, client_id_env=None),
                    client_secret_env=secret)
        del auth["client_id_env"], auth["client_id"]
        auth.update(_plain_or_env("client_id", o.client_id, o.client_id_env))
    return auth


def _retry(r: RetryConfig) -> Tree:
    return _section(r, RetryConfig, on_errors=sorted(r.on_errors))


def _integration(i: IntegrationConfig) -> Tree:
    wait = i.bulkhead.max_wait
    return _section(i, IntegrationConfig, auth=_auth(i.auth), retry=_retry(i.retry),
                    bulkhead=_section(i.bulkhead, BulkheadConfig, max_wait=None if wait is None
                                      else format_duration(wait)),
                    queue=_section(i.queue, QueueConfig,
                                   schedule=[format_duration(x) for x in i.queue.schedule]),
                    signing=({"enabled": False} if i.signing is None else {
                        "enabled": True, **_section(i.signing, SigningConfig, secrets_env=[
                            secret.env for secret in i.signing.secrets])}))


def _route(r: RouteConfig) -> Tree:
    """Overrides the route does not set are left out: it inherits the integration's."""
    out = _section(r, RouteConfig, retry=None if r.retry is None else _retry(r.retry))
    if r.rate_limit is None and not r.unlimited:
        del out["rate_limit"]
    return {k: v for k, v in out.items() if v is not None}


#: Read for every scheme, meaningful for ``generic_hmac`` only: shown for the
#: others just when set (so that the dump still reads back the same).
_GENERIC_HMAC_FIELDS = ("algorithm", "signature_header", "encoding", "prefix",
                        "signed_content", "timestamp_header", "id_header")
_SOURCE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(WebhookSourceConfig)}


def _webhook_source(s: WebhookSourceConfig) -> Tree:
    out = _section(s, WebhookSourceConfig,
                   secrets_env=[secret.env for secret in s.secrets],
                   event_id={"header": s.event_id_header, "path": s.event_id_path},
                   event_type={"header": s.event_type_header, "path": s.event_type_path})
    generic = {name: getattr(s, name) for name in _GENERIC_HMAC_FIELDS}
    if s.scheme != "generic_hmac" and all(v == _SOURCE_DEFAULTS[k] for k, v in generic.items()):
        for name in _GENERIC_HMAC_FIELDS:
            del out[name]
    return out


def _realtime(r: RealtimeConfig) -> Tree:
    ws = r.websocket
    # jwt is read only when the edge is on (the loader ignores it otherwise).
    websocket = _section(ws, WebSocketConfig)
    if not ws.enabled:
        del websocket["jwt"]
    return _section(r, RealtimeConfig, websocket=websocket)


def to_file_schema(config: Config) -> Tree:
    """``config`` as a config file: every key the loader reads, with its effective value."""
    return {"version": CONFIG_VERSION, **_section(
        config, Config,
        integrations={name: _integration(i) for name, i in config.integrations.items()},
        routes=[_route(r) for r in config.routes],
        webhooks=_section(config.webhooks, WebhooksConfig,
                          sources={name: _webhook_source(s)
                                   for name, s in config.webhooks.sources.items()}),
        realtime=_realtime(config.realtime))}


def _notes(config: Config, env: Mapping[str, str]) -> Notes:
    notes: Notes = {path: f"from {var}" for var, path in ENV_OVERRIDES.items() if var in env}
    for name, source in config.webhooks.sources.items():
        if not source.topic:
            notes["webhooks", "sources", name, "topic"] = f"empty means {source.topic_name}"
    for name, integration in config.integrations.items():
        if integration.bulkhead.max_wait is None:
            notes["integrations", name, "bulkhead", "max_wait"] = "until the call's deadline"
    return notes


_HEADER = """\
# Effective configuration: every default filled in, environment overrides applied
# (marked "from <VARIABLE>"). It reads back as the same configuration. Secrets are
# not in it: each *_env field names the environment variable that holds one, and
# that variable must be set wherever this file is used. File paths are resolved.
"""


def dump_redacted(config: Config, env: Mapping[str, str] | None = None) -> str:
    """YAML of the effective config in the file's schema; secrets show their variable only.

    ``env`` (the environment ``config`` was loaded with) only marks the fields that
    environment overrides set.
    """
    lines = _HEADER.splitlines()
    notes = _notes(config, env or {})
    for key, value in to_file_schema(config).items():
        lines.append("")
        _write_mapping({key: value}, 0, (), notes, lines)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- YAML with notes
#
# PyYAML cannot write comments, so the block structure is written here and every
# scalar (and list of scalars) by PyYAML itself, which quotes what needs quoting.

_WIDE = 1 << 30  # never fold long scalars


def _write_mapping(node: Tree, indent: int, path: tuple[str | int, ...], notes: Notes,
                   lines: list[str]) -> None:
    pad = " " * indent
    for key, value in node.items():
        here = (*path, key)
        note = f"  # {notes[here]}" if here in notes else ""
        head = f"{pad}{_flow(key)}:"
        if isinstance(value, dict) and value:
            lines.append(head + note)
            _write_mapping(value, indent + 2, here, notes, lines)
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            lines.append(head + note)
            for index, item in enumerate(value):
                item_lines: list[str] = []
                _write_mapping(item, indent + 4, (*here, index), notes, item_lines)
                item_lines[0] = f"{pad}  - {item_lines[0][indent + 4:]}"
                lines += item_lines
        else:
            lines.append(f"{head} {_flow(value)}{note}")


def _flow(value: object) -> str:
    """One line of YAML for a scalar or a list of scalars."""
    text = yaml.safe_dump(value, default_flow_style=True, width=_WIDE, allow_unicode=True)
    text = text.removesuffix("\n...\n").removesuffix("\n")
    if "\n" not in text:
        return text
    # A string with a line break: double quotes keep it on one line (as ``\n``).
    if isinstance(value, list):
        return "[" + ", ".join(_double_quoted(item) for item in value) + "]"
    return _double_quoted(value)


def _double_quoted(value: object) -> str:
    if not isinstance(value, str):
        return _flow(value)
    return yaml.safe_dump(value, default_style='"', width=_WIDE,
                          allow_unicode=True).removesuffix("\n")

"""The effective configuration written out: in the config file's own schema for
``config show`` (secrets by variable name only), and in the model's shape for diffs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import yaml

from sidecar.config.durations import parse_duration as _as_duration
from sidecar.config.load import ENV_OVERRIDES
from sidecar.config.model import (
    AuthConfig,
    BreakerConfig,
    Config,
    FallbackConfig,
    IntegrationConfig,
    RealtimeConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    ServerTlsConfig,
    StorageConfig,
    TimeoutsConfig,
    TracingConfig,
    WebhooksConfig,
    WebhookSourceConfig,
)
from sidecar.core.resilience.backoff import BackoffPolicy
from sidecar.core.resilience.rate_limit import RateLimitPolicy
from sidecar.core.resilience.retry_budget import RetryBudgetPolicy

REDACTED = "<redacted>"

Tree = dict[str, Any]
#: A YAML comment for the key at this path (mapping keys; list items by index).
Notes = dict[tuple[str | int, ...], str]


def to_plain(value: Any) -> Any:
    """The model's own shape (field names of the dataclasses), for comparing configs."""
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


# --------------------------------------------------------------------------- file schema
#
# Each function below is the inverse of the loader's function of the same name in
# ``sidecar.config.load``: it writes every key that one reads, so that
# ``parse_config(to_file_schema(c), env) == c`` for any ``c`` it produced.

_DURATION_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))


def _duration(seconds: float) -> str | int | float:
    """The largest whole unit (``7d``, ``250ms``) the loader reads back exactly, else seconds.

    A single day shows as ``24h``, as the documentation writes it.
    """
    if seconds == 0:
        return "0s"
    if math.isfinite(seconds) and seconds > 0:
        for unit, size in _DURATION_UNITS:
            count = round(seconds / size)
            text = f"{count}{unit}"
            if count >= (2 if unit == "d" else 1) and _as_duration(text) == seconds:
                return text
    return _number(seconds)


def _number(value: float) -> int | float:
    """``2`` rather than ``2.0``: the loader reads either as the same float."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


def _env_name(secret: Secret | None) -> str | None:
    return secret.env if secret is not None else None


def _listener_tls(tls: ServerTlsConfig | None, *, client_ca: bool) -> Tree:
    if tls is None:
        return {"enabled": False}
    out: Tree = {"enabled": True, "cert_file": tls.cert_file, "key_file": tls.key_file}
    if client_ca:
        out["client_ca_file"] = tls.client_ca_file
    return out


def _server(s: ServerConfig) -> Tree:
    grpc, edge, admin = s.grpc, s.edge, s.admin
    return {
        "grpc": {"address": grpc.address, "max_message_bytes": grpc.max_message_bytes,
                 "api_token_env": _env_name(grpc.api_token), "reflection": grpc.reflection,
                 "tls": _listener_tls(grpc.tls, client_ca=True)},
        "edge": {"host": edge.host, "port": edge.port, "max_body_bytes": edge.max_body_bytes,
                 "header_timeout": _duration(edge.header_timeout),
                 "body_timeout": _duration(edge.body_timeout),
                 "tls": _listener_tls(edge.tls, client_ca=False)},
        "admin": {"host": admin.host, "port": admin.port,
                  "tls": _listener_tls(admin.tls, client_ca=False)},
        "shutdown_grace": _duration(s.shutdown_grace),
    }


def _storage(s: StorageConfig) -> Tree:
    # Only the variable's name: the URL may hold a password.
    sentinel = s.redis.sentinel
    redis = {"url_env": s.redis.url_env, "mode": s.redis.mode, "key_prefix": s.redis.key_prefix,
             "socket_timeout": _duration(s.redis.socket_timeout),
             "sentinel": {"master_name": sentinel.master_name,
                          "password_env": sentinel.password_env}}
    return {"backend": s.backend, "data_dir": s.data_dir, "redis": redis}


def _timeouts(t: TimeoutsConfig) -> Tree:
    return {"connect": _duration(t.connect), "attempt": _duration(t.attempt),
            "total": _duration(t.total)}


def _backoff(b: BackoffPolicy) -> Tree:
    return {"initial": _duration(b.initial), "multiplier": _number(b.multiplier),
            "max": _duration(b.maximum), "jitter": b.jitter}


def _retry(r: RetryConfig) -> Tree:
    return {"max_attempts": r.max_attempts, "backoff": _backoff(r.backoff),
            "on_status": _compact(r.on_status), "on_errors": sorted(r.on_errors),
            "honor_retry_after": r.honor_retry_after}


def _retry_budget(b: RetryBudgetPolicy | None) -> Tree:
    if b is None:
        return {"enabled": False}
    return {"enabled": True, "ratio": _number(b.ratio),
            "min_retries_per_second": _number(b.min_retries_per_second),
            "window": _duration(b.window)}


def _breaker(b: BreakerConfig) -> Tree:
    p = b.policy
    return {
        "enabled": b.enabled,
        "consecutive_failures": p.consecutive_failures,
        "failure_rate": _number(p.failure_rate_threshold),
        "slow_call_rate": _number(p.slow_call_rate_threshold),
        "slow_call_duration": _duration(p.slow_call_duration),
        "window": _duration(p.window),
        "minimum_calls": p.minimum_calls,
        "open_duration": _duration(p.open_duration),
        "half_open_probes": p.half_open_probes,
        "close_after": p.close_after,
        "probe_timeout": _duration(p.probe_timeout),
        "failure_statuses": _compact(b.failure_statuses),
    }


def _rate_limit(r: RateLimitPolicy | None) -> Tree:
    if r is None:
        return {"enabled": False}
    return {"enabled": True, "rate": _number(r.rate), "burst": r.burst, "on_limit": r.on_limit}


def _fallback(f: FallbackConfig) -> Tree:
    return {"enabled": f.enabled, "max_age": _duration(f.max_age), "max_entries": f.max_entries}


def _plain_or_env(key: str, value: str, env: str) -> Tree:
    return {f"{key}_env": env} if env else {key: value}


def _auth(a: AuthConfig) -> Tree:
    auth: Tree = {"type": a.type}
    if a.type == "bearer":
        auth["token_env"] = _env_name(a.secret)
    elif a.type == "api_key":
        auth.update(header=a.header, value_env=_env_name(a.secret))
    elif a.type == "basic":
        auth.update(_plain_or_env("username", a.username, a.username_env),
                    password_env=_env_name(a.secret))
    elif a.oauth2 is not None:
        o = a.oauth2
        auth.update(token_url=o.token_url, **_plain_or_env("client_id", o.client_id,
                                                            o.client_id_env),
                    client_secret_env=_env_name(a.secret), scopes=list(o.scopes),
                    audience=o.audience, params=dict(o.params), client_auth=o.client_auth,
                    refresh_before=_duration(o.refresh_before),
                    default_lifetime=_duration(o.default_lifetime),
                    timeout=_duration(o.timeout))
    return auth


def _integration(i: IntegrationConfig) -> Tree:
    v, tls, bulkhead = i.api_version, i.tls, i.bulkhead
    return {
        "base_url": i.base_url,
        "allow_insecure_http": i.allow_insecure_http,
        "headers": dict(i.headers),
        "auth": _auth(i.auth),
        "timeouts": _timeouts(i.timeouts),
        "api_version": {"version": v.version, "location": v.location, "header": v.header},
        "tls": {"verify": tls.verify, "ca_file": tls.ca_file,
                "client_cert_file": tls.client_cert_file,
                "client_key_file": tls.client_key_file},
        "max_request_bytes": i.max_request_bytes,
        "max_response_bytes": i.max_response_bytes,
        "retry": _retry(i.retry),
        "retry_budget": _retry_budget(i.retry_budget),
        "circuit_breaker": _breaker(i.circuit_breaker),
        "rate_limit": _rate_limit(i.rate_limit),
        "bulkhead": {"max_concurrent": bulkhead.max_concurrent,
                     "max_wait": None if bulkhead.max_wait is None
                     else _duration(bulkhead.max_wait)},
        "idempotency": {"header": i.idempotency.header,
                        "retention": _duration(i.idempotency.retention)},
        "fallback": _fallback(i.fallback),
    }


def _route(r: RouteConfig) -> Tree:
    """Overrides the route does not set are left out: it inherits the integration's."""
    out: Tree = {"integration": r.integration, "name": r.name, "method": r.method,
                 "path": r.path}
    if r.timeouts is not None:
        out["timeouts"] = _timeouts(r.timeouts)
    if r.retry is not None:
        out["retry"] = _retry(r.retry)
    if r.circuit_breaker is not None:
        out["circuit_breaker"] = _breaker(r.circuit_breaker)
    if r.rate_limit is not None or r.unlimited:
        out["rate_limit"] = _rate_limit(r.rate_limit)
    if r.fallback is not None:
        out["fallback"] = _fallback(r.fallback)
    return out


#: Read for every scheme, meaningful for ``generic_hmac`` only: shown for the
#: others just when set (so that the dump still reads back the same).
_GENERIC_HMAC_FIELDS = ("algorithm", "signature_header", "encoding", "prefix",
                        "signed_content", "timestamp_header", "id_header")
_SOURCE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(WebhookSourceConfig)}


def _webhook_source(s: WebhookSourceConfig) -> Tree:
    out: Tree = {
        "scheme": s.scheme,
        "secrets_env": [secret.env for secret in s.secrets],
        "tolerance": _duration(s.tolerance),
        "max_body_bytes": s.max_body_bytes,
        "topic": s.topic,
        "rate_limit": _rate_limit(s.rate_limit),
        "event_id": {"header": s.event_id_header, "path": s.event_id_path},
        "event_type": {"header": s.event_type_header, "path": s.event_type_path},
    }
    generic = {name: getattr(s, name) for name in _GENERIC_HMAC_FIELDS}
    if s.scheme == "generic_hmac" or any(v != _SOURCE_DEFAULTS[k] for k, v in generic.items()):
        out.update(generic)
    return out


def _webhooks(w: WebhooksConfig) -> Tree:
    d = w.delivery
    return {
        "sources": {name: _webhook_source(s) for name, s in w.sources.items()},
        "delivery": {"ack_timeout": _duration(d.ack_timeout), "max_attempts": d.max_attempts,
                     "backoff": _backoff(d.backoff), "default_in_flight": d.default_in_flight,
                     "max_in_flight": d.max_in_flight, "heartbeat": _duration(d.heartbeat)},
        "retention": _duration(w.retention),
        "per_ip_rate_limit": _rate_limit(w.per_ip_rate_limit),
        "max_concurrent": w.max_concurrent,
        "max_headers": w.max_headers,
    }


def _realtime(r: RealtimeConfig) -> Tree:
    ws = r.websocket
    websocket: Tree = {"enabled": ws.enabled}
    if ws.enabled:
        # Read only when the edge is on (the loader ignores it otherwise).
        jwt = ws.jwt
        websocket["jwt"] = {
            "algorithms": list(jwt.algorithms),
            "hs256_secret_env": _env_name(jwt.hs256_secret),
            "rs256_public_key_file": jwt.rs256_public_key_file,
            "audience": jwt.audience,
            "issuer": jwt.issuer,
            "roles_claim": jwt.roles_claim,
            "topics_claim": jwt.topics_claim,
            "leeway": _duration(jwt.leeway),
        }
    websocket.update(allowed_origins=list(ws.allowed_origins),
                     ping_interval=_duration(ws.ping_interval),
                     max_connections=ws.max_connections,
                     max_message_bytes=ws.max_message_bytes)
    return {
        "queue_size": r.queue_size,
        "slow_consumer": r.slow_consumer,
        "heartbeat": _duration(r.heartbeat),
        "max_data_bytes": r.max_data_bytes,
        "idempotency_retention": _duration(r.idempotency_retention),
        "max_events_per_topic": r.max_events_per_topic,
        "max_event_age": _duration(r.max_event_age),
        "durable_publish": r.durable_publish,
        "websocket": websocket,
    }


def _tracing(t: TracingConfig) -> Tree:
    otlp = t.otlp
    return {
        "enabled": t.enabled,
        "service_name": t.service_name,
        "resource_attributes": dict(t.resource_attributes),
        "sample_ratio": _number(t.sample_ratio),
        "max_queue": t.max_queue,
        "max_batch": t.max_batch,
        "export_interval": _duration(t.export_interval),
        # The headers hold API keys: only the variable's name.
        "otlp": {"endpoint": otlp.endpoint, "headers_env": _env_name(otlp.headers),
                 "compression": otlp.compression, "timeout": _duration(otlp.timeout)},
    }


def to_file_schema(config: Config) -> Tree:
    """``config`` as a config file: every key the loader reads, with its effective value."""
    return {
        "version": 1,
        "server": _server(config.server),
        "storage": _storage(config.storage),
        "logging": {"level": config.logging.level, "format": config.logging.format},
        "reload": {"watch": config.reload.watch,
                   "watch_interval": _duration(config.reload.watch_interval)},
        "integrations": {name: _integration(i) for name, i in config.integrations.items()},
        "routes": [_route(r) for r in config.routes],
        "webhooks": _webhooks(config.webhooks),
        "realtime": _realtime(config.realtime),
        "tracing": _tracing(config.tracing),
    }


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

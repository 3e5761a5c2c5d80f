"""Read the YAML file and the environment into a validated ``Config``.

Every problem is collected and reported at once, each naming the offending field by
its dotted path (and the variable it came from) and saying why, so one start-up shows
them all. Plain settings are read from their declarations in ``model.py``
(``reader.fill``); the functions below are the sections that need code of their own:
secrets, files, URLs, lists, and checks across settings.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sidecar.config.durations import MAX_DURATION, parse_duration
from sidecar.config.model import (
    CONFIG_VERSION,
    DEFAULT_OTLP_ENDPOINT,
    JWT_ALGORITHMS,
    RETRY_ERROR_KINDS,
    AuthConfig,
    BreakerConfig,
    BulkheadConfig,
    Config,
    DeliveryConfig,
    EdgeConfig,
    FallbackConfig,
    GrpcListenerConfig,
    HttpListenerConfig,
    IntegrationConfig,
    JwtConfig,
    LoggingConfig,
    OAuth2Config,
    OtlpConfig,
    QueueConfig,
    RealtimeConfig,
    RedisConfig,
    RedisSentinelConfig,
    ReloadConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    ServerTlsConfig,
    SigningConfig,
    StorageConfig,
    TimeoutsConfig,
    TlsConfig,
    TracingConfig,
    WebhooksConfig,
    WebhookSourceConfig,
    WebSocketConfig,
    parse_key_values,
)
from sidecar.config.policies import scheme_config
from sidecar.config.reader import (
    ENV_NAME_RE,
    HEADER_NAME_RE,
    MISSING,
    ConfigError,
    ConfigProblem,
    Problems,
    Section,
    as_str,
    fill,
    kind_of,
    read_one,
    secret_hints,
)
from sidecar.config.settings import declared
from sidecar.config.urls import (
    REDIS_LIST_EXAMPLE,
    base_url,
    redis_url_list_problem,
    redis_url_ok,
    token_url_problem,
    url_parts,
)
from sidecar.config.yaml_file import YamlFileError, read_yaml_with_lines
from sidecar.core.events.topics import topic_problem
from sidecar.core.resilience.rate_limit import RateLimitPolicy
from sidecar.core.webhooks import validate_scheme_config
from sidecar.core.webhooks.schemes.standard import secret_key as standard_secret_key
from sidecar.server_tls import TlsFileError, read_material

__all__ = ["ENV_OVERRIDES", "ConfigError", "ConfigProblem", "load_config", "parse_config"]

T = TypeVar("T")


def _env_overrides(cls: type = Config, path: tuple[str, ...] = ()) -> Iterator[
        tuple[str, tuple[str, ...]]]:
    for d in declared(cls):
        if d.key is None or (d.setting.kind == "custom" and not d.setting.env):
            continue
        if d.setting.env:
            yield d.setting.env, (*path, d.key)
        if d.setting.kind == "section" and not d.setting.flatten:
            yield from _env_overrides(d.setting.of or type(d.default), (*path, d.key))


#: Environment variables that override one field each (per-deployment settings a pod
#: spec sets without editing the ConfigMap), from the settings' declarations.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = dict(_env_overrides())

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
def _optional(sec: Section, key: str, parse: Callable[[Section], T]) -> T | None:
    """Parse ``key`` only when present (route overrides)."""
    return parse(sec.section(key)) if sec.has(key) else None


# --------------------------------------------------------------------------- server


def _server_tls(sec: Section, *, client_ca: bool) -> ServerTlsConfig | None:
    """``tls`` of a listener: present (and ``enabled`` not false) turns TLS on."""
    if not sec.raw or not sec.boolean("enabled", True):
        sec.finish()
        return None

    def path(key: str, *, required: bool) -> str:
        value = sec.string(key, required=required)
        return str(sec.problems.base_dir / value) if value else ""

    cfg = ServerTlsConfig(cert_file=path("cert_file", required=True),
                          key_file=path("key_file", required=True),
                          client_ca_file=path("client_ca_file", required=False)
                          if client_ca else "")
    sec.finish({"client_ca_file": "client certificates are checked on the gRPC listener "
                                  "only"} if not client_ca else None)
    if cfg.cert_file and cfg.key_file:
        try:
            read_material(cfg, sec.path)
        except TlsFileError as exc:
            sec.problems.add(exc.field, exc.message)
    return cfg


def _listener(sec: Section, cls: type[T], base: T, **given: Any) -> T:
    tls = next(d.setting for d in declared(cls) if d.name == "tls")
    return fill(sec, cls, base, tls=_server_tls(sec.section("tls"), client_ca="client_ca_file"
                                                not in tls.omit), **given)


def _grpc_address(sec: Section) -> str:
    address = sec.string("address", GrpcListenerConfig.address)
    if address in ("unix:", "unix://"):
        sec.err("address", "unix socket address needs a path, e.g. unix:///run/sidecar.sock")
    elif not address.startswith("unix:"):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            sec.err("address", f"must be host:port (port 0-65535) or unix:///path; "
                               f"got {address!r}")
    return address


def _server(sec: Section) -> ServerConfig:
    grpc_sec = sec.section("grpc")
    base = ServerConfig()
    return fill(sec, ServerConfig, base,
                grpc=_listener(grpc_sec, GrpcListenerConfig, base.grpc,
                               address=_grpc_address(grpc_sec)),
                edge=_listener(sec.section("edge"), EdgeConfig, base.edge),
                admin=_listener(sec.section("admin"), HttpListenerConfig, base.admin))


# --------------------------------------------------------------------------- storage


def _redis_url(sec: Section, url_env: str, mode: str) -> Secret | None:
    """The URL in ``url_env`` (never echoed: it may hold a password)."""
    value = sec.env.get(url_env, "")
    if mode != "standalone":
        what = "cluster seed nodes" if mode == "cluster" else "sentinels"
        problem = "is not set or empty" if not value else redis_url_list_problem(value, mode)
        if problem:
            sec.err("url_env", f"environment variable {url_env} {problem}; in {mode} mode "
                               f"it must hold the {what} as a comma-separated list like "
                               f"{REDIS_LIST_EXAMPLE[mode]}")
            return None
    elif not value:
        sec.err("url_env", f"environment variable {url_env} is not set or empty; it must "
                           "hold the Redis URL, e.g. redis://:password@host:6379/0")
        return None
    elif not redis_url_ok(value):
        sec.err("url_env", f"environment variable {url_env} must hold a URL like "
                           "redis://host:6379/0, rediss://host:6380/0 (TLS) or "
                           "unix:///path/redis.sock")
        return None
    return Secret(env=url_env, value=value)


def _redis(sec: Section, *, needed: bool) -> RedisConfig:
    """The URL is read (and must be set) only when the redis backend is chosen."""
    url_env = sec.string("url_env", RedisConfig.url_env) or RedisConfig.url_env
    mode = read_one(sec, RedisConfig, "mode")
    url: Secret | None = None
    if not ENV_NAME_RE.match(url_env):
        sec.err("url_env", f"must name an environment variable (letters, digits, _); "
                           f"got {url_env!r}")
    elif needed:
        url = _redis_url(sec, url_env, mode)
    prefix = sec.string("key_prefix", RedisConfig.key_prefix)
    if not prefix or len(prefix) > 100 or any(c.isspace() for c in prefix):
        sec.err("key_prefix", f"must be 1-100 characters without spaces; got {prefix!r}")
        prefix = RedisConfig.key_prefix
    sentinel = _redis_sentinel(sec.section("sentinel"), needed=needed and mode == "sentinel")
    return fill(sec, RedisConfig, url_env=url_env, url=url, mode=mode, key_prefix=prefix,
                sentinel=sentinel,
                hints={"url": "the URL may hold a password: put it in an environment "
                              "variable and name it with url_env"})


def _redis_sentinel(sec: Section, *, needed: bool) -> RedisSentinelConfig:
    """The master name is required, and the password read, only in sentinel mode."""
    master_name = sec.string("master_name")
    if needed and not master_name:
        sec.err("master_name", "is required when storage.redis.mode is sentinel: the name "
                               "the sentinels monitor the primary under")
    if any(c.isspace() for c in master_name):
        sec.err("master_name", f"must not contain spaces; got {master_name!r}")
    password_env = sec.string("password_env")
    password: Secret | None = None
    if password_env and not ENV_NAME_RE.match(password_env):
        sec.err("password_env", f"must name an environment variable (letters, digits, _); "
                                f"got {password_env!r}")
    elif password_env and needed:
        password = sec.secret("password_env", required=True)
    return fill(sec, RedisSentinelConfig, master_name=master_name, password_env=password_env,
                password=password,
                hints={"password": "secrets come from the environment: use password_env"})


def _storage(sec: Section) -> StorageConfig:
    backend = read_one(sec, StorageConfig, "backend")
    return fill(sec, StorageConfig, backend=backend,
                redis=_redis(sec.section("redis"), needed=backend == "redis"))


# --------------------------------------------------------------------------- integrations


def _timeouts(sec: Section, base: TimeoutsConfig) -> TimeoutsConfig:
    cfg = fill(sec, TimeoutsConfig, base, finish=False)
    if cfg.attempt > cfg.total:
        sec.err("attempt", f"({cfg.attempt:g}s) must not exceed total ({cfg.total:g}s)")
    if cfg.connect > cfg.attempt:
        sec.err("connect", f"({cfg.connect:g}s) must not exceed attempt ({cfg.attempt:g}s)")
    sec.finish()
    return cfg


def _base_url(sec: Section, allow_http: bool) -> str:
    url = sec.string("base_url", required=True)
    if not url:
        return url
    canonical, problem = base_url(url, allow_http)
    if problem:
        sec.err("base_url", problem)
    return canonical


def _headers(sec: Section, key: str) -> tuple[tuple[str, str], ...]:
    raw = sec.take(key)
    if raw is MISSING or raw is None:
        return ()
    if not isinstance(raw, dict):
        sec.err(key, f"must be a mapping of header name to value, got {kind_of(raw)}")
        return ()
    out = []
    for name, value in raw.items():
        if not HEADER_NAME_RE.match(str(name)):
            sec.err(key, f"invalid header name {name!r}")
        elif isinstance(value, dict | list) or "\n" in str(value) or "\r" in str(value):
            sec.err(f"{key}.{name}", "must be a single-line string")
        else:
            out.append((str(name), str(value)))
    return tuple(out)


def _plain_or_env(sec: Section, key: str, *, required: bool) -> tuple[str, str]:
    """``<key>`` as plain text, or ``<key>_env`` naming the variable that holds it (not
    a secret, so it may be shown): returns (value, variable name or "")."""
    env_key = f"{key}_env"
    if sec.has(key) and sec.has(env_key):
        sec.take(key)
        sec.err(key, f"set {key} or {env_key}, not both")
    if sec.has(env_key):
        found = sec.secret(env_key, required=True)
        return (found.value, found.env) if found else ("", "")
    if required and not sec.has(key):
        sec.err(key, f"is required (or {env_key})")
    return sec.string(key), ""


def _token_url(sec: Section, allow_http: bool) -> str:
    url = sec.string("token_url", required=True)
    problem = token_url_problem(url, allow_http) if url else ""
    if problem:
        sec.err("token_url", problem)
    return url


def _scopes(sec: Section) -> tuple[str, ...]:
    raw = sec.take("scopes")
    if raw is MISSING or raw is None:
        return ()
    if not isinstance(raw, list):
        sec.err("scopes", f"must be a list of scopes, got {kind_of(raw)}")
        return ()
    for i, scope in enumerate(raw):
        # RFC 6749 §3.3: printable ASCII but space, double quote and backslash.
        if not isinstance(scope, str) or not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", scope):
            sec.err(f"scopes[{i}]", f"must be a scope token (RFC 6749 §3.3); got {scope!r}")
    return tuple(str(scope) for scope in raw)


#: Form fields of the token request the sidecar writes itself.
_TOKEN_FIELDS = ("grant_type", "client_id", "client_secret", "scope", "audience")


def _params(sec: Section) -> tuple[tuple[str, str], ...]:
    raw = sec.take("params")
    if raw is MISSING or raw is None:
        return ()
    if not isinstance(raw, dict):
        sec.err("params", f"must be a mapping of form field to value, got {kind_of(raw)}")
        return ()
    out = []
    for name, value in raw.items():
        if str(name) in _TOKEN_FIELDS:
            sec.err(f"params.{name}", "is set by the sidecar (see scopes, audience)")
        elif value is None or isinstance(value, dict | list | bool):
            sec.err(f"params.{name}", f"must be a string, got {kind_of(value)}")
        else:
            out.append((str(name), as_str(value)))
    return tuple(out)


def _oauth2(sec: Section, allow_http: bool) -> OAuth2Config:
    token_url = _token_url(sec, allow_http)
    client_id, client_id_env = _plain_or_env(sec, "client_id", required=True)
    cfg = fill(sec, OAuth2Config, finish=False, token_url=token_url, client_id=client_id,
               client_id_env=client_id_env, scopes=_scopes(sec), params=_params(sec))
    if cfg.refresh_before >= cfg.default_lifetime:
        sec.err("refresh_before", f"({cfg.refresh_before:g}s) must be shorter than "
                                  f"default_lifetime ({cfg.default_lifetime:g}s)")
    return cfg


_AUTH_HINTS = {"token": "secrets come from the environment: use token_env",
               "value": "secrets come from the environment: use value_env",
               "api_key": "secrets come from the environment: use value_env",
               "password": "secrets come from the environment: use password_env",
               "client_secret": "secrets come from the environment: use client_secret_env"}


def _auth(sec: Section, allow_http: bool) -> AuthConfig:
    """Which keys are read depends on ``type``: the others are unknown fields."""
    kind = read_one(sec, AuthConfig, "type")
    cfg = AuthConfig()
    if kind == "bearer":
        cfg = AuthConfig(type=kind, header="Authorization",
                         secret=sec.secret("token_env", required=True))
    elif kind == "api_key":
        header = sec.string("header", required=True)
        if header and not HEADER_NAME_RE.match(header):
            sec.err("header", f"invalid header name {header!r}")
        cfg = AuthConfig(type=kind, header=header,
                         secret=sec.secret("value_env", required=True))
    elif kind == "basic":
        username, username_env = _plain_or_env(sec, "username", required=True)
        if ":" in username:
            sec.err("username", "must not contain a colon (RFC 7617)")
        cfg = AuthConfig(type=kind, header="Authorization", username=username,
                         username_env=username_env,
                         secret=sec.secret("password_env", required=True))
    elif kind == "oauth2_client_credentials":
        cfg = AuthConfig(type=kind, header="Authorization",
                         secret=sec.secret("client_secret_env", required=True),
                         oauth2=_oauth2(sec, allow_http))
    sec.finish(_AUTH_HINTS)
    return cfg


def _tls(sec: Section) -> TlsConfig:
    def file(key: str) -> str:
        value = sec.string(key)
        if value and not _is_file(sec.problems.base_dir / value):
            sec.err(key, f"file not found: {value}")
        return str(sec.problems.base_dir / value) if value else ""

    cfg = fill(sec, TlsConfig, finish=False, ca_file=file("ca_file"),
               client_cert_file=file("client_cert_file"),
               client_key_file=file("client_key_file"))
    if bool(cfg.client_cert_file) != bool(cfg.client_key_file):
        sec.err("client_cert_file", "client_cert_file and client_key_file go together")
    sec.finish()
    return cfg


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False, not an exception, for names no file can have
    (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _statuses(sec: Section, key: str, default: frozenset[int]) -> frozenset[int]:
    """A list of HTTP statuses: numbers, or classes like ``5xx``."""
    raw = sec.take(key)
    if raw is MISSING or raw is None:
        return default
    if not isinstance(raw, list):
        sec.err(key, f"must be a list of statuses (e.g. [429, 503] or [5xx]), got {kind_of(raw)}")
        return default
    out: set[int] = set()
    for item in raw:
        text = str(item).strip().lower()
        if re.fullmatch(r"[1-5]xx", text):
            base = int(text[0]) * 100
            out.update(range(base, base + 100))
        elif text.isdigit() and 100 <= int(text) <= 599:
            out.add(int(text))
        else:
            sec.err(key, f"{item!r} is not an HTTP status (100-599) or class like 5xx")
            return default
    return frozenset(out)


def _retry(sec: Section, base: RetryConfig) -> RetryConfig:
    errors = sec.take("on_errors")
    on_errors = base.on_errors
    if errors is not MISSING and errors is not None:
        if not isinstance(errors, list) or any(e not in RETRY_ERROR_KINDS for e in errors):
            sec.err("on_errors", f"must be a list drawn from {', '.join(RETRY_ERROR_KINDS)}; "
                                 f"got {errors!r}")
        else:
            on_errors = frozenset(errors)
    return fill(sec, RetryConfig, base, on_errors=on_errors,
                on_status=_statuses(sec, "on_status", base.on_status))


def _breaker(sec: Section, base: BreakerConfig) -> BreakerConfig:
    return fill(sec, BreakerConfig, base,
                failure_statuses=_statuses(sec, "failure_statuses", base.failure_statuses))


def _rate_limit(sec: Section, base: RateLimitPolicy | None) -> RateLimitPolicy | None:
    """A limit of its own needs a ``rate``; ``burst`` defaults to the rate."""
    if not sec.boolean("enabled", True):
        sec.finish()
        return None
    if base is None and not sec.has("rate"):
        sec.take("rate")
        sec.err("rate", "is required (calls per second)")
        sec.finish()
        return None
    b = base or RateLimitPolicy()
    rate = read_one(sec, RateLimitPolicy, "rate", b)
    burst = sec.integer("burst", max(b.burst, 1) if base else max(1, int(rate)), minimum=1)
    return fill(sec, RateLimitPolicy, b, rate=rate, burst=burst)


def _bulkhead(sec: Section) -> BulkheadConfig:
    max_wait = sec.duration("max_wait", -1.0, positive=False) if sec.has("max_wait") else None
    return fill(sec, BulkheadConfig,
                max_wait=None if max_wait is None or max_wait < 0 else max_wait)


def _queue(sec: Section) -> QueueConfig:
    base = QueueConfig()
    schedule = base.schedule
    raw = sec.take("schedule")
    if raw is not MISSING and raw is not None:
        steps = [parse_duration(x) for x in raw] if isinstance(raw, list) else None
        if steps is None or len(steps) > 50 or any(
                x is None or not math.isfinite(x) or x <= 0 or x > MAX_DURATION for x in steps):
            sec.err("schedule", "must be a list of at most 50 durations greater than zero "
                                f"(e.g. [5s, 5m, 1h]); got {raw!r}")
        else:
            schedule = tuple(float(x) for x in steps if x is not None)
    retryable = _statuses(sec, "retryable_4xx", base.retryable_4xx)
    if any(not 400 <= s < 500 for s in retryable):
        sec.err("retryable_4xx", "must list 4xx statuses only")
        retryable = base.retryable_4xx
    return fill(sec, QueueConfig, base, schedule=schedule, retryable_4xx=retryable)


def _signing(sec: Section) -> SigningConfig | None:
    if not sec.boolean("enabled", True):
        sec.finish()
        return None
    secrets = _secret_list(sec)
    for i, secret in enumerate(secrets):
        if not secret.value.startswith("whsec_") or standard_secret_key(secret.value) is None:
            sec.err(f"secrets_env[{i}]", f"{secret.env} must hold a whsec_ secret "
                                         "(whsec_ and base64 of the key)")
    return fill(sec, SigningConfig, secrets=secrets)


def _integration(name: str, sec: Section) -> IntegrationConfig:
    if not _NAME_RE.match(name):
        sec.problems.add(sec.path, "integration names are 1-63 characters of a-z, 0-9, _ "
                                   "and -, starting with a letter")
    allow_http = read_one(sec, IntegrationConfig, "allow_insecure_http")
    base = IntegrationConfig(name="", base_url="")
    return fill(
        sec, IntegrationConfig, base, name=name, base_url=_base_url(sec, allow_http),
        allow_insecure_http=allow_http, headers=_headers(sec, "headers"),
        auth=_auth(sec.section("auth"), allow_http),
        timeouts=_timeouts(sec.section("timeouts"), base.timeouts),
        tls=_tls(sec.section("tls")),
        retry=_retry(sec.section("retry"), base.retry),
        circuit_breaker=_breaker(sec.section("circuit_breaker"), base.circuit_breaker),
        rate_limit=_optional(sec, "rate_limit", lambda s: _rate_limit(s, None)),
        bulkhead=_bulkhead(sec.section("bulkhead")), queue=_queue(sec.section("queue")),
        signing=_optional(sec, "signing", _signing))


def _route(sec: Section, integrations: Mapping[str, IntegrationConfig],
           names: set[tuple[str, str]]) -> RouteConfig:
    integration = sec.string("integration", required=True)
    if integration and integration not in integrations:
        known = ", ".join(sorted(integrations)) or "none configured"
        sec.err("integration", f"unknown integration {integration!r} (known: {known})")
    name = sec.string("name", required=True)
    if name and (integration, name) in names:
        sec.err("name", f"duplicate route name {name!r} for integration {integration!r}")
    names.add((integration, name))
    method = sec.string("method", "*").upper()
    if method != "*" and method not in HTTP_METHODS:
        sec.err("method", f"must be * or one of {', '.join(HTTP_METHODS)}; got {method!r}")
    path = sec.string("path", "/**")
    if "://" in path or ".." in path.split("/"):
        sec.err("path", f"must be a path pattern relative to the base URL; got {path!r}")
    base = integrations.get(integration) or IntegrationConfig(name="", base_url="")
    limited = sec.has("rate_limit")
    rate_limit = _optional(sec, "rate_limit", lambda s: _rate_limit(s, base.rate_limit))
    return fill(
        sec, RouteConfig, name=name, integration=integration, method=method,
        path="/" + path.lstrip("/"),
        timeouts=_optional(sec, "timeouts", lambda s: _timeouts(s, base.timeouts)),
        retry=_optional(sec, "retry", lambda s: _retry(s, base.retry)),
        circuit_breaker=_optional(sec, "circuit_breaker",
                                  lambda s: _breaker(s, base.circuit_breaker)),
        rate_limit=rate_limit,
        fallback=_optional(sec, "fallback", lambda s: fill(s, FallbackConfig, base.fallback)),
        # Present but switched off (errors aside: they fail the whole config).
        unlimited=limited and rate_limit is None)


def _routes(root: Section, integrations: Mapping[str, IntegrationConfig]) -> tuple[
        RouteConfig, ...]:
    raw = root.take("routes")
    if raw is MISSING or raw is None:
        return ()
    if not isinstance(raw, list):
        root.err("routes", f"must be a list, got {kind_of(raw)}")
        return ()
    names: set[tuple[str, str]] = set()
    return tuple(_route(Section(item, f"routes[{i}]", root.problems), integrations, names)
                 for i, item in enumerate(raw))


# --------------------------------------------------------------------------- webhooks


def _secret_list(sec: Section) -> tuple[Secret, ...]:
    raw = sec.take("secrets_env")
    if raw is MISSING or raw is None or raw == []:
        sec.err("secrets_env", "is required: a list of environment variable names (several "
                               "during a rotation)")
        return ()
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list):
        sec.err("secrets_env", f"must be a list of environment variable names, got "
                               f"{kind_of(raw)}")
        return ()
    out = []
    for i, name in enumerate(names):
        field_name = f"secrets_env[{i}]"
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            sec.err(field_name, f"must name an environment variable; got {name!r}")
        elif not sec.env.get(name):
            sec.err(field_name, f"environment variable {name} is not set or empty")
        else:
            out.append(Secret(env=name, value=sec.env[name]))
    return tuple(out)


def _extraction(sec: Section, key: str) -> tuple[str, str]:
    sub = sec.section(key)
    header, path = sub.string("header"), sub.string("path")
    sub.finish()
    return header, path


def _webhook_source(name: str, sec: Section, edge_limit: int) -> WebhookSourceConfig:
    if not _NAME_RE.match(name):
        sec.problems.add(sec.path, "source names are 1-63 characters of a-z, 0-9, _ and -, "
                                   "starting with a letter")
    scheme = read_one(sec, WebhookSourceConfig, "scheme")
    id_header, id_path = _extraction(sec, "event_id")
    type_header, type_path = _extraction(sec, "event_type")
    topic = sec.string("topic")
    problem = topic_problem(topic) if topic else None
    if problem:
        sec.err("topic", f"{problem}; got {topic!r}")
    cfg = fill(
        sec, WebhookSourceConfig, name=name, scheme=scheme, secrets=_secret_list(sec),
        max_body_bytes=sec.integer("max_body_bytes", min(edge_limit, 1024 * 1024), minimum=1,
                                   maximum=edge_limit),
        topic=topic,
        rate_limit=_rate_limit(sec.section("rate_limit"), None) if sec.has("rate_limit")
        else WebhookSourceConfig.rate_limit,
        event_id_header=id_header, event_id_path=id_path,
        event_type_header=type_header, event_type_path=type_path,
        hints={"secrets": "secrets come from the environment: use secrets_env",
               "secret": "secrets come from the environment: use secrets_env"})
    if scheme and cfg.secrets:
        for problem in validate_scheme_config(scheme_config(cfg)):
            sec.problems.add(sec.path, problem)
    return cfg


def _delivery(sec: Section) -> DeliveryConfig:
    cfg = fill(sec, DeliveryConfig, DeliveryConfig(), finish=False)
    if cfg.default_in_flight > cfg.max_in_flight:
        sec.err("default_in_flight", "must not exceed max_in_flight")
    sec.finish()
    return cfg


def _webhooks(sec: Section, edge_limit: int) -> WebhooksConfig:
    sources_sec = sec.section("sources")
    sources = {
        str(name): _webhook_source(str(name), Section(body, sources_sec.field(str(name)),
                                                      sec.problems), edge_limit)
        for name, body in sources_sec.raw.items()
    }
    base = WebhooksConfig()
    return fill(sec, WebhooksConfig, base, sources=sources,
                delivery=_delivery(sec.section("delivery")),
                per_ip_rate_limit=_rate_limit(sec.section("per_ip_rate_limit"),
                                              base.per_ip_rate_limit))


# --------------------------------------------------------------------------- realtime


def _jwt(sec: Section) -> JwtConfig:
    raw = sec.take("algorithms")
    algorithms = JwtConfig.algorithms
    if raw is not MISSING and raw is not None:
        if not isinstance(raw, list) or not raw or any(a not in JWT_ALGORITHMS for a in raw):
            sec.err("algorithms", f"must be a non-empty list drawn from "
                                  f"{', '.join(JWT_ALGORITHMS)}; got {raw!r}")
        else:
            algorithms = tuple(raw)
    key_file = sec.string("rs256_public_key_file")
    public_key = ""
    base_dir = sec.problems.base_dir
    if key_file:
        try:
            public_key = (base_dir / key_file).read_text()
        except (OSError, ValueError):  # ValueError: a NUL in the name, or not UTF-8 text
            sec.err("rs256_public_key_file", f"cannot read {key_file!r} as a PEM text file")
    cfg = fill(sec, JwtConfig, finish=False, algorithms=algorithms, rs256_public_key=public_key,
               rs256_public_key_file=str(base_dir / key_file) if key_file else "")
    if any(a.startswith("HS") for a in algorithms) and cfg.hs256_secret is None and not (
            any(a.startswith("RS") for a in algorithms) and public_key):
        sec.err("hs256_secret_env", "an HS algorithm is allowed but no secret is configured")
    if any(a.startswith("RS") for a in algorithms) and not public_key:
        sec.err("rs256_public_key_file", "an RS algorithm is allowed but no public key is "
                                         "configured")
    sec.finish(secret_hints(JwtConfig))
    return cfg


def _websocket(sec: Section) -> WebSocketConfig:
    jwt_sec = sec.section("jwt")
    # On when keys are configured: without them no client could authenticate.
    enabled = sec.boolean("enabled", bool(jwt_sec.raw))
    origins = sec.take("allowed_origins")
    if origins is MISSING or origins is None:
        origins = []
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        sec.err("allowed_origins", "must be a list of origins like https://app.example")
        origins = []
    return fill(sec, WebSocketConfig, enabled=enabled,
                jwt=_jwt(jwt_sec) if enabled else JwtConfig(),
                allowed_origins=tuple(o.rstrip("/") for o in origins))


# --------------------------------------------------------------------------- tracing

#: The OpenTelemetry exporter variables, read only when tracing is enabled and the
#: file leaves the setting out (the file wins: it is this sidecar's own config).
OTEL_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
OTEL_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_HEADERS = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"
OTEL_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
TRACES_PATH = "/v1/traces"


def _otlp_endpoint(sec: Section, enabled: bool) -> str:
    """A base URL gets ``/v1/traces`` (as OTEL_EXPORTER_OTLP_ENDPOINT does); a URL
    that already ends in it, or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, is used as is."""
    endpoint = sec.string("endpoint")
    origin = sec.field("endpoint")
    if not endpoint and enabled:
        if sec.env.get(OTEL_TRACES_ENDPOINT):
            return _checked_url(sec, sec.env[OTEL_TRACES_ENDPOINT], OTEL_TRACES_ENDPOINT)
        if sec.env.get(OTEL_ENDPOINT):
            endpoint, origin = sec.env[OTEL_ENDPOINT], OTEL_ENDPOINT
    if not endpoint:
        return DEFAULT_OTLP_ENDPOINT
    if not endpoint.rstrip("/").endswith(TRACES_PATH):
        endpoint = endpoint.rstrip("/") + TRACES_PATH
    return _checked_url(sec, endpoint, origin)


def _checked_url(sec: Section, url: str, origin: str) -> str:
    split = url_parts(url)
    parts = urlsplit("") if isinstance(split, str) else split
    if parts.scheme not in ("http", "https") or not parts.hostname:
        where = "" if origin == sec.field("endpoint") else f" (from {origin})"
        sec.err("endpoint", f"must be an http:// or https:// URL{where}")
        return DEFAULT_OTLP_ENDPOINT
    return url


def _otlp_headers(sec: Section, enabled: bool) -> Secret | None:
    if sec.has("headers_env"):
        secret = sec.secret("headers_env", required=False)
    else:
        name = next((n for n in OTEL_HEADERS if enabled and sec.env.get(n)), "")
        secret = Secret(name, sec.env[name]) if name else None
    if secret is not None and parse_key_values(secret.value) is None:
        # Never the value: it holds API keys.
        sec.err("headers_env", f"{secret.env} must hold key=value pairs separated by commas")
        return None
    return secret


def _resource_attributes(sec: Section, enabled: bool) -> dict[str, str]:
    attrs: dict[str, str] = {}
    raw = sec.env.get(OTEL_RESOURCE_ATTRIBUTES, "") if enabled else ""
    if raw:
        parsed = parse_key_values(raw)
        if parsed is None:
            sec.err("resource_attributes", f"{OTEL_RESOURCE_ATTRIBUTES} must hold key=value "
                                           f"pairs separated by commas")
        attrs.update(parsed or ())
    own = sec.section("resource_attributes")
    for key in own.raw:
        attrs[str(key)] = own.string(key, required=True)
    own.finish()
    return attrs


def _tracing(sec: Section) -> TracingConfig:
    enabled = read_one(sec, TracingConfig, "enabled")
    attrs = _resource_attributes(sec, enabled)
    from_env = sec.env.get(OTEL_SERVICE_NAME, "") if enabled else ""
    service_name = sec.string("service_name", from_env or attrs.get("service.name")
                              or TracingConfig.service_name)
    if not service_name:
        sec.err("service_name", "must not be empty")
    attrs.pop("service.name", None)
    max_queue = read_one(sec, TracingConfig, "max_queue")
    otlp_sec = sec.section("otlp")
    otlp = fill(otlp_sec, OtlpConfig, endpoint=_otlp_endpoint(otlp_sec, enabled),
                headers=_otlp_headers(otlp_sec, enabled))
    return fill(sec, TracingConfig, enabled=enabled, service_name=service_name,
                resource_attributes=tuple(sorted(attrs.items())), max_queue=max_queue,
                max_batch=sec.integer("max_batch", TracingConfig.max_batch, minimum=1,
                                      maximum=max_queue), otlp=otlp)


# --------------------------------------------------------------------------- entry points


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    origins: dict[str, str] = {}
    for var, path in ENV_OVERRIDES.items():
        if var not in env:
            continue
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = env[var]
        origins[".".join(path)] = var
    return origins


def parse_config(raw: object, env: Mapping[str, str] | None = None, *, source: str = "",
                 base_dir: Path | None = None, lines: Mapping[str, int] | None = None) -> Config:
    """Validate an already-parsed YAML document (plus the environment); ``lines`` (the
    line of each key) puts the file and line on each problem."""
    env = os.environ if env is None else env
    if raw is None:
        raw = {}
    origins: dict[str, str] = {}
    if isinstance(raw, dict):
        raw = dict(raw)
        origins = _apply_env_overrides(raw, env)
    problems = Problems(origins, env, base_dir or Path.cwd(), lines, Path(source).name)
    root = Section(raw, "", problems)
    version = root.integer("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        root.err("version", f"unsupported config version {version}; this sidecar reads "
                            f"{CONFIG_VERSION}")
    server = _server(root.section("server"))
    storage = _storage(root.section("storage"))
    logging = fill(root.section("logging"), LoggingConfig)
    ints_sec = root.section("integrations")
    integrations = {
        str(name): _integration(str(name), Section(body, ints_sec.field(str(name)), problems))
        for name, body in ints_sec.raw.items()
    }
    routes = _routes(root, integrations)
    webhooks = _webhooks(root.section("webhooks"), server.edge.max_body_bytes)
    rt_sec = root.section("realtime")
    realtime = fill(rt_sec, RealtimeConfig, websocket=_websocket(rt_sec.section("websocket")))
    reload = fill(root.section("reload"), ReloadConfig)
    config = fill(root, Config, server=server, storage=storage, logging=logging,
                  integrations=integrations, routes=routes, webhooks=webhooks,
                  realtime=realtime, reload=reload, tracing=_tracing(root.section("tracing")))
    if problems.items:
        raise ConfigError(problems.items, source)
    return config


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (YAML) and the environment; ``None`` means built-in defaults."""
    env = os.environ if env is None else env
    if path is None:
        return parse_config({}, env, source="<defaults>")
    p = Path(path)
    try:
        raw, lines = read_yaml_with_lines(p)
    except YamlFileError as exc:
        raise ConfigError([ConfigProblem(exc.where, exc.description)], str(p)) from None
    return parse_config(raw, env, source=str(p), base_dir=p.resolve().parent, lines=lines)

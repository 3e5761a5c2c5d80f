"""Read the YAML file and the environment into a validated ``Config``.

Every problem is collected and reported at once, each naming the offending
field by its dotted path and saying why, so one start-up shows them all.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from sidecar.config.model import (
    AUTH_TYPES,
    DEFAULT_ADMIN_HOST,
    DEFAULT_ADMIN_PORT,
    DEFAULT_EDGE_HOST,
    DEFAULT_EDGE_PORT,
    DEFAULT_OTLP_ENDPOINT,
    OAUTH2_CLIENT_AUTH,
    REDIS_MODES,
    WEBHOOK_SCHEMES,
    ApiVersionConfig,
    AuthConfig,
    BreakerConfig,
    BulkheadConfig,
    Config,
    DeliveryConfig,
    EdgeConfig,
    FallbackConfig,
    GrpcListenerConfig,
    HttpListenerConfig,
    IdempotencyConfig,
    IntegrationConfig,
    JwtConfig,
    LoggingConfig,
    OAuth2Config,
    OtlpConfig,
    RealtimeConfig,
    RedisConfig,
    RedisSentinelConfig,
    ReloadConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    ServerTlsConfig,
    StorageConfig,
    TimeoutsConfig,
    TlsConfig,
    TracingConfig,
    WebhooksConfig,
    WebhookSourceConfig,
    WebSocketConfig,
    parse_key_values,
    redis_urls,
)
from sidecar.config.policies import scheme_config
from sidecar.config.yaml_file import YamlFileError, read_yaml
from sidecar.core.events.topics import topic_problem
from sidecar.core.resilience.backoff import BackoffPolicy
from sidecar.core.resilience.breaker import BreakerPolicy
from sidecar.core.resilience.rate_limit import RateLimitPolicy
from sidecar.core.resilience.retry_budget import RetryBudgetPolicy
from sidecar.core.webhooks import validate_scheme_config
from sidecar.server_tls import TlsFileError, read_material

T = TypeVar("T")

#: Environment variables that override one field each (per-deployment
#: settings a pod spec sets without editing the ConfigMap).
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "SIDECAR_GRPC_ADDRESS": ("server", "grpc", "address"),
    "SIDECAR_EDGE_HOST": ("server", "edge", "host"),
    "SIDECAR_EDGE_PORT": ("server", "edge", "port"),
    "SIDECAR_ADMIN_HOST": ("server", "admin", "host"),
    "SIDECAR_ADMIN_PORT": ("server", "admin", "port"),
    "SIDECAR_SHUTDOWN_GRACE": ("server", "shutdown_grace"),
    "SIDECAR_STORAGE_BACKEND": ("storage", "backend"),
    "SIDECAR_DATA_DIR": ("storage", "data_dir"),
    "SIDECAR_LOG_LEVEL": ("logging", "level"),
    "SIDECAR_LOG_FORMAT": ("logging", "format"),
}

STORAGE_BACKENDS = ("sqlite", "redis")
REDIS_SCHEMES = ("redis", "rediss", "unix")
LOG_LEVELS = ("debug", "info", "warning", "error")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


@dataclass(frozen=True)
class ConfigProblem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[ConfigProblem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration{where} ({len(problems)} problem(s)):\n{lines}")


class _Problems:
    def __init__(self, origins: Mapping[str, str]) -> None:
        self.items: list[ConfigProblem] = []
        self._origins = origins

    def add(self, path: str, message: str) -> None:
        origin = self._origins.get(path)
        label = f"{path} (from {origin})" if origin else path
        self.items.append(ConfigProblem(label, message))


_MISSING: Any = object()


class _Section:
    """One mapping of the raw config: typed reads, and unknown-key detection."""

    def __init__(self, raw: object, path: str, problems: _Problems) -> None:
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()
        if raw is None or raw is _MISSING:
            raw = {}
        if not isinstance(raw, dict):
            problems.add(path or "<root>", f"must be a mapping, got {_kind(raw)}")
            raw = {}
        self.raw: dict[str, Any] = raw

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.raw

    def take(self, key: str) -> Any:
        self._seen.add(key)
        return self.raw.get(key, _MISSING)

    def err(self, key: str, message: str) -> None:
        self.problems.add(self.field(key), message)

    def section(self, key: str) -> _Section:
        return _Section(self.take(key), self.field(key), self.problems)

    def _typed(self, key: str, default: T, conv: Callable[[Any], T], what: str) -> T:
        value = self.take(key)
        if value is _MISSING or value is None:
            return default
        try:
            return conv(value)
        except (TypeError, ValueError):
            self.err(key, f"must be {what}, got {_kind(value)} {value!r}")
            return default

    def string(
        self, key: str, default: str = "", *, required: bool = False, choices: tuple[str, ...] = ()
    ) -> str:
        if required and self.raw.get(key) in (None, ""):
            self.take(key)
            self.err(key, "is required")
            return default
        value = self._typed(key, default, _as_str, "a string")
        if choices and value not in choices:
            self.err(key, f"must be one of {', '.join(choices)}; got {value!r}")
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
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
        if value is _MISSING or value is None:
            return default
        seconds = _as_duration(value)
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

    def secret(self, key: str, env: Mapping[str, str], *, required: bool) -> Secret | None:
        """Read ``<key>`` as the NAME of an environment variable holding a secret."""
        name = self.string(key, required=required)
        if not name:
            return None
        if not _ENV_NAME_RE.match(name):
            self.err(key, f"must name an environment variable (letters, digits, _); got {name!r}")
            return None
        value = env.get(name)
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


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _as_str(value: Any) -> str:
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


#: The longest duration any setting takes: longer ones are mistakes (or overflow timers).
MAX_DURATION = 10 * 365 * 24 * 3600.0
MAX_DURATION_TEXT = "10 years"
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def _url_parts(url: str) -> SplitResult | str:
    """``url`` split, or what is wrong with it: a space or control character anywhere,
    a malformed IPv6 literal, a port that is not a number from 0 to 65535."""
    if _URL_FORBIDDEN.search(url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    return parts


def _as_duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value.strip().startswith("-"):
            return -1.0
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return None


# --------------------------------------------------------------------------- sections


def _server_tls(sec: _Section, base_dir: Path, *, client_ca: bool) -> ServerTlsConfig | None:
    """``tls`` of a listener: present (and ``enabled`` not false) turns TLS on."""
    if not sec.raw or not sec.boolean("enabled", True):
        sec.finish()
        return None

    def path(key: str, *, required: bool) -> str:
        value = sec.string(key, required=required)
        return str(base_dir / value) if value else ""

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


def _grpc(sec: _Section, env: Mapping[str, str], base_dir: Path) -> GrpcListenerConfig:
    address = sec.string("address", GrpcListenerConfig.address)
    if not address.startswith("unix:"):
        _check_host_port(sec, "address", address)
    elif address in ("unix:", "unix://"):
        sec.err("address", "unix socket address needs a path, e.g. unix:///run/sidecar.sock")
    cfg = GrpcListenerConfig(
        address=address,
        max_message_bytes=sec.integer("max_message_bytes", GrpcListenerConfig.max_message_bytes,
                                      minimum=1024, maximum=256 * 1024 * 1024),
        api_token=sec.secret("api_token_env", env, required=False),
        reflection=sec.boolean("reflection", True),
        tls=_server_tls(sec.section("tls"), base_dir, client_ca=True),
    )
    sec.finish({"api_token": "secrets come from the environment: use api_token_env"})
    return cfg


def _check_host_port(sec: _Section, key: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        sec.err(key, f"must be host:port (port 0-65535) or unix:///path; got {address!r}")


def _http_listener(sec: _Section, host: str, port: int, base_dir: Path) -> HttpListenerConfig:
    return HttpListenerConfig(
        host=sec.string("host", host) or host,
        port=sec.integer("port", port, minimum=0, maximum=65535),
        tls=_server_tls(sec.section("tls"), base_dir, client_ca=False),
    )


def _server(sec: _Section, env: Mapping[str, str], base_dir: Path) -> ServerConfig:
    grpc = _grpc(sec.section("grpc"), env, base_dir)
    edge_sec = sec.section("edge")
    edge_listener = _http_listener(edge_sec, DEFAULT_EDGE_HOST, DEFAULT_EDGE_PORT, base_dir)
    edge = EdgeConfig(
        host=edge_listener.host,
        port=edge_listener.port,
        max_body_bytes=edge_sec.integer("max_body_bytes", EdgeConfig.max_body_bytes,
                                        minimum=1024, maximum=64 * 1024 * 1024),
        tls=edge_listener.tls,
        header_timeout=edge_sec.duration("header_timeout", EdgeConfig.header_timeout),
        body_timeout=edge_sec.duration("body_timeout", EdgeConfig.body_timeout),
    )
    edge_sec.finish()
    admin_sec = sec.section("admin")
    admin = _http_listener(admin_sec, DEFAULT_ADMIN_HOST, DEFAULT_ADMIN_PORT, base_dir)
    admin_sec.finish()
    cfg = ServerConfig(grpc=grpc, edge=edge, admin=admin,
                       shutdown_grace=sec.duration("shutdown_grace", ServerConfig.shutdown_grace,
                                                   positive=False))
    sec.finish()
    return cfg


def _storage(sec: _Section, env: Mapping[str, str]) -> StorageConfig:
    backend = sec.string("backend", "sqlite", choices=STORAGE_BACKENDS)
    cfg = StorageConfig(
        backend=backend,
        data_dir=sec.string("data_dir", StorageConfig.data_dir) or StorageConfig.data_dir,
        redis=_redis(sec.section("redis"), env, needed=backend == "redis"),
    )
    sec.finish()
    return cfg


def _redis_url_ok(value: str, schemes: tuple[str, ...] = REDIS_SCHEMES) -> bool:
    parts = _url_parts(value)
    if isinstance(parts, str):
        return False
    if parts.scheme == "unix":
        return "unix" in schemes and bool(parts.path)
    return parts.scheme in schemes and bool(parts.hostname)


#: What a cluster or sentinel URL list may look like, for the error messages.
_REDIS_LIST_EXAMPLE = {
    "cluster": "redis://:password@node-1:6379,redis://node-2:6379 (rediss:// for TLS)",
    "sentinel": "redis://:password@sentinel-1:26379,redis://sentinel-2:26379/0 "
                "(rediss:// for TLS)",
}


def _redis_url_list_problem(value: str, mode: str) -> str:
    """Why a cluster or sentinel URL list is unusable ("" when it is fine); never
    quotes the value, which may hold a password."""
    urls = redis_urls(value)
    if not urls:
        return "holds no URL"
    for i, url in enumerate(urls, 1):
        which = f"has a URL ({i} of {len(urls)})"
        if not _redis_url_ok(url, ("redis", "rediss")):
            return f"{which} that is not a redis:// or rediss:// URL with a host"
        db = urlsplit(url).path.strip("/")
        if db and not db.isdigit():
            return f"{which} with no database number in its path"
        if mode == "cluster" and db not in ("", "0"):
            return f"{which} naming database {db}; a Redis Cluster has only 0"
    parts = [urlsplit(u) for u in urls]
    if len({p.scheme for p in parts}) > 1:
        return "mixes redis:// and rediss:// URLs; use one scheme for all"
    # Credentials and database may be written once; where repeated they must agree.
    for what, values in (("credentials", {(p.username, p.password) for p in parts
                                          if p.username or p.password}),
                         ("database", {p.path.strip("/") for p in parts if p.path.strip("/")})):
        if len(values) > 1:
            return f"gives different {what} in different URLs; give them once or the same"
    return ""


def _redis(sec: _Section, env: Mapping[str, str], *, needed: bool) -> RedisConfig:
    """The URL is read (and must be set) only when the redis backend is chosen."""
    url_env = sec.string("url_env", RedisConfig.url_env) or RedisConfig.url_env
    mode = sec.string("mode", RedisConfig.mode, choices=REDIS_MODES)
    url: Secret | None = None
    if not _ENV_NAME_RE.match(url_env):
        sec.err("url_env", f"must name an environment variable (letters, digits, _); "
                           f"got {url_env!r}")
    elif needed:
        value = env.get(url_env, "")
        # Never echo the value: it may hold a password.
        if mode != "standalone":
            what = "cluster seed nodes" if mode == "cluster" else "sentinels"
            problem = ("is not set or empty" if not value
                       else _redis_url_list_problem(value, mode))
            if problem:
                sec.err("url_env", f"environment variable {url_env} {problem}; in {mode} mode "
                                   f"it must hold the {what} as a comma-separated list like "
                                   f"{_REDIS_LIST_EXAMPLE[mode]}")
            else:
                url = Secret(env=url_env, value=value)
        elif not value:
            sec.err("url_env", f"environment variable {url_env} is not set or empty; it must "
                               "hold the Redis URL, e.g. redis://:password@host:6379/0")
        elif not _redis_url_ok(value):
            sec.err("url_env", f"environment variable {url_env} must hold a URL like "
                               "redis://host:6379/0, rediss://host:6380/0 (TLS) or "
                               "unix:///path/redis.sock")
        else:
            url = Secret(env=url_env, value=value)
    prefix = sec.string("key_prefix", RedisConfig.key_prefix)
    if not prefix or len(prefix) > 100 or any(c.isspace() for c in prefix):
        sec.err("key_prefix", f"must be 1-100 characters without spaces; got {prefix!r}")
        prefix = RedisConfig.key_prefix
    cfg = RedisConfig(
        url_env=url_env,
        url=url,
        mode=mode,
        key_prefix=prefix,
        socket_timeout=sec.duration("socket_timeout", RedisConfig.socket_timeout),
        sentinel=_redis_sentinel(sec.section("sentinel"), env,
                                 needed=needed and mode == "sentinel"),
    )
    sec.finish({"url": "the URL may hold a password: put it in an environment variable "
                       "and name it with url_env"})
    return cfg


def _redis_sentinel(sec: _Section, env: Mapping[str, str], *,
                    needed: bool) -> RedisSentinelConfig:
    """The master name is required, and the password read, only in sentinel mode."""
    master_name = sec.string("master_name")
    if needed and not master_name:
        sec.err("master_name", "is required when storage.redis.mode is sentinel: the name "
                               "the sentinels monitor the primary under")
    if any(c.isspace() for c in master_name):
        sec.err("master_name", f"must not contain spaces; got {master_name!r}")
    password_env = sec.string("password_env")
    password: Secret | None = None
    if password_env and not _ENV_NAME_RE.match(password_env):
        sec.err("password_env", f"must name an environment variable (letters, digits, _); "
                                f"got {password_env!r}")
    elif password_env and needed:
        password = sec.secret("password_env", env, required=True)
    cfg = RedisSentinelConfig(master_name=master_name, password_env=password_env,
                              password=password)
    sec.finish({"password": "secrets come from the environment: use password_env"})
    return cfg


def _reload(sec: _Section) -> ReloadConfig:
    cfg = ReloadConfig(watch=sec.boolean("watch", ReloadConfig.watch),
                       watch_interval=sec.duration("watch_interval", ReloadConfig.watch_interval))
    if cfg.watch_interval < 0.05:
        sec.err("watch_interval", f"must be at least 50ms; got {cfg.watch_interval:g}s")
    sec.finish()
    return cfg


def _logging(sec: _Section) -> LoggingConfig:
    cfg = LoggingConfig(
        level=sec.string("level", "info", choices=LOG_LEVELS),
        format=sec.string("format", "json", choices=("json", "text")),
    )
    sec.finish()
    return cfg


def _timeouts(sec: _Section, base: TimeoutsConfig) -> TimeoutsConfig:
    cfg = TimeoutsConfig(
        connect=sec.duration("connect", base.connect),
        attempt=sec.duration("attempt", base.attempt),
        total=sec.duration("total", base.total),
    )
    if cfg.attempt > cfg.total:
        sec.err("attempt", f"({cfg.attempt:g}s) must not exceed total ({cfg.total:g}s)")
    if cfg.connect > cfg.attempt:
        sec.err("connect", f"({cfg.connect:g}s) must not exceed attempt ({cfg.attempt:g}s)")
    sec.finish()
    return cfg


def _base_url(sec: _Section, allow_http: bool) -> str:
    url = sec.string("base_url", required=True)
    if not url:
        return url
    parts = _url_parts(url)
    if isinstance(parts, str):
        sec.err("base_url", f"{parts}; got {url!r}")
        return url
    if parts.scheme not in ("http", "https"):
        sec.err("base_url", f"must be an http:// or https:// URL; got {url!r}")
    elif not parts.hostname:
        sec.err("base_url", f"has no host; got {url!r}")
    elif parts.username or parts.password:
        sec.err("base_url", "must not contain credentials; configure auth instead")
    elif parts.query or parts.fragment:
        sec.err("base_url", "must not contain a query or fragment")
    elif parts.scheme == "http" and not allow_http:
        sec.err("base_url", "plain http:// is refused; use https:// or set "
                            "allow_insecure_http: true (local development only)")
    # Canonical form: lower-case scheme (so nothing downstream can mistake
    # HTTPS:// for plain HTTP), no trailing slash.
    path = parts.path.rstrip("/") if parts.path not in ("", "/") else ""
    return f"{parts.scheme.lower()}://{parts.netloc}{path}"


def _headers(sec: _Section, key: str) -> tuple[tuple[str, str], ...]:
    raw = sec.take(key)
    if raw is _MISSING or raw is None:
        return ()
    if not isinstance(raw, dict):
        sec.err(key, f"must be a mapping of header name to value, got {_kind(raw)}")
        return ()
    out = []
    for name, value in raw.items():
        if not _HEADER_NAME_RE.match(str(name)):
            sec.err(key, f"invalid header name {name!r}")
        elif isinstance(value, dict | list) or "\n" in str(value) or "\r" in str(value):
            sec.err(f"{key}.{name}", "must be a single-line string")
        else:
            out.append((str(name), str(value)))
    return tuple(out)


def _plain_or_env(sec: _Section, key: str, env: Mapping[str, str], *,
                  required: bool) -> tuple[str, str]:
    """``<key>`` as plain text, or ``<key>_env`` naming the variable that holds it (not
    a secret, so it may be shown): returns (value, variable name or "")."""
    env_key = f"{key}_env"
    if sec.has(key) and sec.has(env_key):
        sec.take(key)
        sec.err(key, f"set {key} or {env_key}, not both")
    if sec.has(env_key):
        found = sec.secret(env_key, env, required=True)
        return (found.value, found.env) if found else ("", "")
    if required and not sec.has(key):
        sec.err(key, f"is required (or {env_key})")
    return sec.string(key), ""


def _token_url(sec: _Section, allow_http: bool) -> str:
    url = sec.string("token_url", required=True)
    if not url:
        return url
    parts = _url_parts(url)
    if isinstance(parts, str):
        sec.err("token_url", f"{parts}; got {url!r}")
    elif parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        sec.err("token_url", f"must be an https:// URL with a host; got {url!r}")
    elif parts.username or parts.password:
        sec.err("token_url", "must not contain credentials; use client_id and "
                             "client_secret_env")
    elif parts.fragment:
        sec.err("token_url", "must not contain a fragment")
    elif parts.scheme.lower() == "http" and not allow_http:
        sec.err("token_url", "plain http:// is refused (the client secret would travel in "
                             "clear text); use https:// or set allow_insecure_http: true on "
                             "the integration (local development only)")
    return url


def _scopes(sec: _Section) -> tuple[str, ...]:
    raw = sec.take("scopes")
    if raw is _MISSING or raw is None:
        return ()
    if not isinstance(raw, list):
        sec.err("scopes", f"must be a list of scopes, got {_kind(raw)}")
        return ()
    for i, scope in enumerate(raw):
        # RFC 6749 §3.3: printable ASCII but space, double quote and backslash.
        if not isinstance(scope, str) or not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", scope):
            sec.err(f"scopes[{i}]", f"must be a scope token (RFC 6749 §3.3); got {scope!r}")
    return tuple(str(scope) for scope in raw)


#: Form fields of the token request the sidecar writes itself.
_TOKEN_FIELDS = ("grant_type", "client_id", "client_secret", "scope", "audience")


def _params(sec: _Section) -> tuple[tuple[str, str], ...]:
    raw = sec.take("params")
    if raw is _MISSING or raw is None:
        return ()
    if not isinstance(raw, dict):
        sec.err("params", f"must be a mapping of form field to value, got {_kind(raw)}")
        return ()
    out = []
    for name, value in raw.items():
        if str(name) in _TOKEN_FIELDS:
            sec.err(f"params.{name}", "is set by the sidecar (see scopes, audience)")
        elif value is None or isinstance(value, dict | list | bool):
            sec.err(f"params.{name}", f"must be a string, got {_kind(value)}")
        else:
            out.append((str(name), _as_str(value)))
    return tuple(out)


def _oauth2(sec: _Section, env: Mapping[str, str], allow_http: bool) -> OAuth2Config:
    token_url = _token_url(sec, allow_http)
    client_id, client_id_env = _plain_or_env(sec, "client_id", env, required=True)
    cfg = OAuth2Config(
        token_url=token_url, client_id=client_id, client_id_env=client_id_env,
        scopes=_scopes(sec), audience=sec.string("audience"), params=_params(sec),
        client_auth=sec.string("client_auth", "basic", choices=OAUTH2_CLIENT_AUTH),
        refresh_before=sec.duration("refresh_before", OAuth2Config.refresh_before,
                                    positive=False),
        default_lifetime=sec.duration("default_lifetime", OAuth2Config.default_lifetime),
        timeout=sec.duration("timeout", OAuth2Config.timeout),
    )
    if cfg.refresh_before >= cfg.default_lifetime:
        sec.err("refresh_before", f"({cfg.refresh_before:g}s) must be shorter than "
                                  f"default_lifetime ({cfg.default_lifetime:g}s)")
    return cfg


def _auth(sec: _Section, env: Mapping[str, str], allow_http: bool) -> AuthConfig:
    kind = sec.string("type", "none", choices=AUTH_TYPES)
    cfg = AuthConfig()
    if kind == "bearer":
        cfg = AuthConfig(type=kind, header="Authorization",
                         secret=sec.secret("token_env", env, required=True))
    elif kind == "api_key":
        header = sec.string("header", required=True)
        if header and not _HEADER_NAME_RE.match(header):
            sec.err("header", f"invalid header name {header!r}")
        cfg = AuthConfig(type=kind, header=header,
                         secret=sec.secret("value_env", env, required=True))
    elif kind == "basic":
        username, username_env = _plain_or_env(sec, "username", env, required=True)
        if ":" in username:
            sec.err("username", "must not contain a colon (RFC 7617)")
        cfg = AuthConfig(type=kind, header="Authorization", username=username,
                         username_env=username_env,
                         secret=sec.secret("password_env", env, required=True))
    elif kind == "oauth2_client_credentials":
        cfg = AuthConfig(type=kind, header="Authorization",
                         secret=sec.secret("client_secret_env", env, required=True),
                         oauth2=_oauth2(sec, env, allow_http))
    sec.finish({"token": "secrets come from the environment: use token_env",
                "value": "secrets come from the environment: use value_env",
                "api_key": "secrets come from the environment: use value_env",
                "password": "secrets come from the environment: use password_env",
                "client_secret": "secrets come from the environment: use client_secret_env"})
    return cfg


def _api_version(sec: _Section) -> ApiVersionConfig:
    cfg = ApiVersionConfig(
        version=sec.string("version"),
        location=sec.string("location", "header", choices=("header", "path")),
        header=sec.string("header", ApiVersionConfig.header),
    )
    if not _HEADER_NAME_RE.match(cfg.header):
        sec.err("header", f"invalid header name {cfg.header!r}")
    sec.finish()
    return cfg


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False, not an exception, for names no file can have
    (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _tls(sec: _Section, base_dir: Path) -> TlsConfig:
    def file(key: str) -> str:
        value = sec.string(key)
        if value and not _is_file(base_dir / value):
            sec.err(key, f"file not found: {value}")
        return str(base_dir / value) if value else ""

    cfg = TlsConfig(verify=sec.boolean("verify", True), ca_file=file("ca_file"),
                    client_cert_file=file("client_cert_file"),
                    client_key_file=file("client_key_file"))
    if bool(cfg.client_cert_file) != bool(cfg.client_key_file):
        sec.err("client_cert_file", "client_cert_file and client_key_file go together")
    sec.finish()
    return cfg


def _integration(name: str, sec: _Section, env: Mapping[str, str],
                 base_dir: Path) -> IntegrationConfig:
    if not _NAME_RE.match(name):
        sec.problems.add(sec.path, "integration names are 1-63 characters of a-z, 0-9, _ "
                                   "and -, starting with a letter")
    allow_http = sec.boolean("allow_insecure_http", False)
    cfg = IntegrationConfig(
        name=name,
        base_url=_base_url(sec, allow_http),
        allow_insecure_http=allow_http,
        headers=_headers(sec, "headers"),
        auth=_auth(sec.section("auth"), env, allow_http),
        timeouts=_timeouts(sec.section("timeouts"), TimeoutsConfig()),
        api_version=_api_version(sec.section("api_version")),
        tls=_tls(sec.section("tls"), base_dir),
        max_request_bytes=sec.integer("max_request_bytes", IntegrationConfig.max_request_bytes,
                                      minimum=0),
        max_response_bytes=sec.integer("max_response_bytes",
                                       IntegrationConfig.max_response_bytes, minimum=1),
        retry=_retry(sec.section("retry"), RetryConfig()),
        retry_budget=_retry_budget(sec.section("retry_budget"), RetryBudgetPolicy()),
        circuit_breaker=_breaker(sec.section("circuit_breaker"), BreakerConfig()),
        rate_limit=_optional(sec, "rate_limit", lambda s: _rate_limit(s, None)),
        bulkhead=_bulkhead(sec.section("bulkhead")),
        idempotency=_idempotency(sec.section("idempotency")),
        fallback=_fallback(sec.section("fallback"), FallbackConfig()),
    )
    sec.finish()
    return cfg


def _route_overrides(sec: _Section, base: IntegrationConfig, name: str, integration: str,
                     method: str, path: str) -> RouteConfig:
    limited = sec.has("rate_limit")
    rate_limit = _optional(sec, "rate_limit", lambda s: _rate_limit(s, base.rate_limit))
    return RouteConfig(
        name=name, integration=integration, method=method, path="/" + path.lstrip("/"),
        timeouts=_optional(sec, "timeouts", lambda s: _timeouts(s, base.timeouts)),
        retry=_optional(sec, "retry", lambda s: _retry(s, base.retry)),
        circuit_breaker=_optional(sec, "circuit_breaker",
                                  lambda s: _breaker(s, base.circuit_breaker)),
        rate_limit=rate_limit,
        fallback=_optional(sec, "fallback", lambda s: _fallback(s, base.fallback)),
        # Present but switched off (errors aside: they fail the whole config).
        unlimited=limited and rate_limit is None,
    )


def _routes(root: _Section, integrations: Mapping[str, IntegrationConfig]) -> tuple[RouteConfig,
                                                                                     ...]:
    raw = root.take("routes")
    if raw is _MISSING or raw is None:
        return ()
    if not isinstance(raw, list):
        root.err("routes", f"must be a list, got {_kind(raw)}")
        return ()
    routes: list[RouteConfig] = []
    names: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        sec = _Section(item, f"routes[{i}]", root.problems)
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
        route = _route_overrides(sec, base, name, integration, method, path)
        sec.finish()
        routes.append(route)
    return tuple(routes)


# --------------------------------------------------------------------------- call policies

RETRY_ERROR_KINDS = ("connect", "reset", "timeout", "tls", "protocol")


def _statuses(sec: _Section, key: str, default: frozenset[int]) -> frozenset[int]:
    """A list of HTTP statuses: numbers, or classes like ``5xx``."""
    raw = sec.take(key)
    if raw is _MISSING or raw is None:
        return default
    if not isinstance(raw, list):
        sec.err(key, f"must be a list of statuses (e.g. [429, 503] or [5xx]), got {_kind(raw)}")
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


def _build(sec: _Section, default: T, factory: Callable[[], T]) -> T:
    """Construct a core policy, reporting its own invariant checks against this section."""
    try:
        return factory()
    except ValueError as exc:
        sec.problems.add(sec.path, str(exc))
        return default


def _backoff(sec: _Section, base: BackoffPolicy) -> BackoffPolicy:
    initial = sec.duration("initial", base.initial)
    multiplier = sec.number("multiplier", base.multiplier, minimum=1.0)
    maximum = sec.duration("max", base.maximum)
    jitter = sec.string("jitter", base.jitter, choices=("full", "none"))
    sec.finish()
    return _build(sec, base, lambda: BackoffPolicy(initial=initial, multiplier=multiplier,
                                                   maximum=maximum, jitter=jitter))  # type: ignore[arg-type]


def _retry(sec: _Section, base: RetryConfig) -> RetryConfig:
    errors = sec.take("on_errors")
    on_errors = base.on_errors
    if errors is not _MISSING and errors is not None:
        if not isinstance(errors, list) or any(e not in RETRY_ERROR_KINDS for e in errors):
            sec.err("on_errors", f"must be a list drawn from {', '.join(RETRY_ERROR_KINDS)}; "
                                 f"got {errors!r}")
        else:
            on_errors = frozenset(errors)
    cfg = RetryConfig(
        max_attempts=sec.integer("max_attempts", base.max_attempts, minimum=1, maximum=20),
        backoff=_backoff(sec.section("backoff"), base.backoff),
        on_status=_statuses(sec, "on_status", base.on_status),
        on_errors=on_errors,
        honor_retry_after=sec.boolean("honor_retry_after", base.honor_retry_after),
    )
    sec.finish()
    return cfg


def _retry_budget(sec: _Section, base: RetryBudgetPolicy | None) -> RetryBudgetPolicy | None:
    if not sec.boolean("enabled", base is not None):
        sec.finish()
        return None
    b = base or RetryBudgetPolicy()
    ratio = sec.number("ratio", b.ratio, minimum=0.0, maximum=10.0)
    floor = sec.number("min_retries_per_second", b.min_retries_per_second, minimum=0.0)
    window = sec.duration("window", b.window)
    sec.finish()
    return _build(sec, b, lambda: RetryBudgetPolicy(ratio=ratio, min_retries_per_second=floor,
                                                    window=window))


def _breaker(sec: _Section, base: BreakerConfig) -> BreakerConfig:
    p = base.policy
    enabled = sec.boolean("enabled", base.enabled)
    fields = {
        "consecutive_failures": sec.integer("consecutive_failures", p.consecutive_failures,
                                            minimum=0),
        "failure_rate_threshold": sec.number("failure_rate", p.failure_rate_threshold,
                                             minimum=0.0, maximum=1.0),
        "slow_call_rate_threshold": sec.number("slow_call_rate", p.slow_call_rate_threshold,
                                               minimum=0.0, maximum=1.0),
        "slow_call_duration": sec.duration("slow_call_duration", p.slow_call_duration),
        "window": sec.duration("window", p.window),
        "minimum_calls": sec.integer("minimum_calls", p.minimum_calls, minimum=1),
        "open_duration": sec.duration("open_duration", p.open_duration),
        "half_open_probes": sec.integer("half_open_probes", p.half_open_probes, minimum=1),
        "close_after": sec.integer("close_after", p.close_after, minimum=1),
        "probe_timeout": sec.duration("probe_timeout", p.probe_timeout),
    }
    failure_statuses = _statuses(sec, "failure_statuses", base.failure_statuses)
    sec.finish()
    policy = _build(sec, p, lambda: BreakerPolicy(**fields))  # type: ignore[arg-type]
    return BreakerConfig(enabled=enabled, policy=policy, failure_statuses=failure_statuses)


def _rate_limit(sec: _Section, base: RateLimitPolicy | None) -> RateLimitPolicy | None:
    if not sec.boolean("enabled", True):
        sec.finish()
        return None
    if base is None and not sec.has("rate"):
        sec.take("rate")
        sec.err("rate", "is required (calls per second)")
        sec.finish()
        return None
    b = base or RateLimitPolicy()
    rate = sec.number("rate", b.rate, minimum=0.001)
    burst = sec.integer("burst", max(b.burst, 1) if base else max(1, int(rate)), minimum=1)
    on_limit = sec.string("on_limit", b.on_limit, choices=("wait", "reject"))
    sec.finish()
    return _build(sec, b, lambda: RateLimitPolicy(rate=rate, burst=burst,
                                                  on_limit=on_limit))  # type: ignore[arg-type]


def _bulkhead(sec: _Section) -> BulkheadConfig:
    max_wait = sec.duration("max_wait", -1.0, positive=False) if sec.has("max_wait") else None
    cfg = BulkheadConfig(
        max_concurrent=sec.integer("max_concurrent", BulkheadConfig.max_concurrent, minimum=1,
                                   maximum=10_000),
        max_wait=None if max_wait is None or max_wait < 0 else max_wait,
    )
    sec.finish()
    return cfg


def _idempotency(sec: _Section) -> IdempotencyConfig:
    header = sec.string("header", IdempotencyConfig.header)
    if not _HEADER_NAME_RE.match(header):
        sec.err("header", f"invalid header name {header!r}")
    cfg = IdempotencyConfig(header=header,
                            retention=sec.duration("retention", IdempotencyConfig.retention))
    sec.finish()
    return cfg


def _fallback(sec: _Section, base: FallbackConfig) -> FallbackConfig:
    cfg = FallbackConfig(
        enabled=sec.boolean("enabled", base.enabled),
        max_age=sec.duration("max_age", base.max_age),
        max_entries=sec.integer("max_entries", base.max_entries, minimum=1, maximum=100_000),
    )
    sec.finish()
    return cfg


def _optional(sec: _Section, key: str, parse: Callable[[_Section], T]) -> T | None:
    """Parse ``key`` only when present (route overrides)."""
    return parse(sec.section(key)) if sec.has(key) else None


# --------------------------------------------------------------------------- webhooks



def _secret_list(sec: _Section, env: Mapping[str, str]) -> tuple[Secret, ...]:
    raw = sec.take("secrets_env")
    if raw is _MISSING or raw is None or raw == []:
        sec.err("secrets_env", "is required: a list of environment variable names (several "
                               "during a rotation)")
        return ()
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list):
        sec.err("secrets_env", f"must be a list of environment variable names, got {_kind(raw)}")
        return ()
    out = []
    for i, name in enumerate(names):
        field_name = f"secrets_env[{i}]"
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            sec.err(field_name, f"must name an environment variable; got {name!r}")
        elif not env.get(name):
            sec.err(field_name, f"environment variable {name} is not set or empty")
        else:
            out.append(Secret(env=name, value=env[name]))
    return tuple(out)


def _extraction(sec: _Section, key: str) -> tuple[str, str]:
    sub = sec.section(key)
    header, path = sub.string("header"), sub.string("path")
    sub.finish()
    return header, path


def _webhook_source(name: str, sec: _Section, env: Mapping[str, str],
                    edge_limit: int) -> WebhookSourceConfig:
    if not _NAME_RE.match(name):
        sec.problems.add(sec.path, "source names are 1-63 characters of a-z, 0-9, _ and -, "
                                   "starting with a letter")
    scheme = sec.string("scheme", required=True, choices=WEBHOOK_SCHEMES)
    id_header, id_path = _extraction(sec, "event_id")
    type_header, type_path = _extraction(sec, "event_type")
    topic = sec.string("topic")
    problem = topic_problem(topic) if topic else None
    if problem:
        sec.err("topic", f"{problem}; got {topic!r}")
    cfg = WebhookSourceConfig(
        name=name, scheme=scheme, secrets=_secret_list(sec, env),
        tolerance=sec.duration("tolerance", WebhookSourceConfig.tolerance),
        max_body_bytes=sec.integer("max_body_bytes", min(edge_limit, 1024 * 1024), minimum=1,
                                   maximum=edge_limit),
        topic=topic,
        rate_limit=_optional(sec, "rate_limit", lambda s: _rate_limit(s, None))
        if sec.has("rate_limit") else WebhookSourceConfig.rate_limit,
        algorithm=sec.string("algorithm", "sha256", choices=("sha256", "sha512")),
        signature_header=sec.string("signature_header"),
        encoding=sec.string("encoding", "hex", choices=("hex", "base64")),
        prefix=sec.string("prefix"),
        signed_content=sec.string("signed_content", "{body}"),
        timestamp_header=sec.string("timestamp_header"),
        id_header=sec.string("id_header"),
        event_id_header=id_header, event_id_path=id_path,
        event_type_header=type_header, event_type_path=type_path,
    )
    sec.finish({"secrets": "secrets come from the environment: use secrets_env",
                "secret": "secrets come from the environment: use secrets_env"})
    if scheme and cfg.secrets:
        for problem in validate_scheme_config(scheme_config(cfg)):
            sec.problems.add(sec.path, problem)
    return cfg


def _delivery(sec: _Section) -> DeliveryConfig:
    base = DeliveryConfig()
    cfg = DeliveryConfig(
        ack_timeout=sec.duration("ack_timeout", base.ack_timeout),
        max_attempts=sec.integer("max_attempts", base.max_attempts, minimum=1, maximum=1000),
        backoff=_backoff(sec.section("backoff"), base.backoff),
        default_in_flight=sec.integer("default_in_flight", base.default_in_flight, minimum=1),
        max_in_flight=sec.integer("max_in_flight", base.max_in_flight, minimum=1,
                                  maximum=10_000),
        heartbeat=sec.duration("heartbeat", base.heartbeat),
    )
    if cfg.default_in_flight > cfg.max_in_flight:
        sec.err("default_in_flight", "must not exceed max_in_flight")
    sec.finish()
    return cfg


def _webhooks(sec: _Section, env: Mapping[str, str], edge_limit: int) -> WebhooksConfig:
    sources_sec = sec.section("sources")
    sources = {
        str(name): _webhook_source(str(name), _Section(body, sources_sec.field(str(name)),
                                                       sec.problems), env, edge_limit)
        for name, body in sources_sec.raw.items()
    }
    base = WebhooksConfig()
    cfg = WebhooksConfig(
        sources=sources,
        delivery=_delivery(sec.section("delivery")),
        retention=sec.duration("retention", base.retention),
        per_ip_rate_limit=_rate_limit(sec.section("per_ip_rate_limit"), base.per_ip_rate_limit),
        max_concurrent=sec.integer("max_concurrent", base.max_concurrent, minimum=1),
        # aiohttp's parser refuses more than 128 headers before we see the request.
        max_headers=sec.integer("max_headers", base.max_headers, minimum=10, maximum=128),
    )
    sec.finish()
    return cfg


# --------------------------------------------------------------------------- realtime

JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512")


def _jwt(sec: _Section, env: Mapping[str, str], base_dir: Path) -> JwtConfig:
    raw = sec.take("algorithms")
    algorithms = JwtConfig.algorithms
    if raw is not _MISSING and raw is not None:
        if not isinstance(raw, list) or not raw or any(a not in JWT_ALGORITHMS for a in raw):
            sec.err("algorithms", f"must be a non-empty list drawn from "
                                  f"{', '.join(JWT_ALGORITHMS)}; got {raw!r}")
        else:
            algorithms = tuple(raw)
    key_file = sec.string("rs256_public_key_file")
    public_key = ""
    if key_file:
        path = base_dir / key_file
        try:
            public_key = path.read_text()
        except (OSError, ValueError):  # ValueError: a NUL in the name, or not UTF-8 text
            sec.err("rs256_public_key_file", f"cannot read {key_file!r} as a PEM text file")
    cfg = JwtConfig(
        algorithms=algorithms,
        hs256_secret=sec.secret("hs256_secret_env", env, required=False),
        rs256_public_key=public_key,
        rs256_public_key_file=str(base_dir / key_file) if key_file else "",
        audience=sec.string("audience"),
        issuer=sec.string("issuer"),
        roles_claim=sec.string("roles_claim", "roles"),
        topics_claim=sec.string("topics_claim", "topics"),
        leeway=sec.duration("leeway", 5.0, positive=False),
    )
    if any(a.startswith("HS") for a in algorithms) and cfg.hs256_secret is None and not (
            any(a.startswith("RS") for a in algorithms) and public_key):
        sec.err("hs256_secret_env", "an HS algorithm is allowed but no secret is configured")
    if any(a.startswith("RS") for a in algorithms) and not public_key:
        sec.err("rs256_public_key_file", "an RS algorithm is allowed but no public key is "
                                         "configured")
    sec.finish({"hs256_secret": "secrets come from the environment: use hs256_secret_env"})
    return cfg


def _realtime(sec: _Section, env: Mapping[str, str], base_dir: Path) -> RealtimeConfig:
    base = RealtimeConfig()
    ws_sec = sec.section("websocket")
    jwt_sec = ws_sec.section("jwt")
    # On when keys are configured: without them no client could authenticate.
    enabled = ws_sec.boolean("enabled", bool(jwt_sec.raw))
    origins = ws_sec.take("allowed_origins")
    if origins is _MISSING or origins is None:
        origins = []
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        ws_sec.err("allowed_origins", "must be a list of origins like https://app.example")
        origins = []
    ws = WebSocketConfig(
        enabled=enabled,
        jwt=_jwt(jwt_sec, env, base_dir) if enabled else JwtConfig(),
        allowed_origins=tuple(o.rstrip("/") for o in origins),
        ping_interval=ws_sec.duration("ping_interval", 20.0),
        max_connections=ws_sec.integer("max_connections", 10_000, minimum=1),
        max_message_bytes=ws_sec.integer("max_message_bytes", 64 * 1024, minimum=1024),
    )
    ws_sec.finish()
    cfg = RealtimeConfig(
        queue_size=sec.integer("queue_size", base.queue_size, minimum=1, maximum=1_000_000),
        slow_consumer=sec.string("slow_consumer", base.slow_consumer,
                                 choices=("disconnect", "drop_oldest")),
        heartbeat=sec.duration("heartbeat", base.heartbeat),
        max_data_bytes=sec.integer("max_data_bytes", base.max_data_bytes, minimum=1),
        idempotency_retention=sec.duration("idempotency_retention",
                                           base.idempotency_retention),
        max_events_per_topic=sec.integer("max_events_per_topic", base.max_events_per_topic,
                                         minimum=1),
        max_event_age=sec.duration("max_event_age", base.max_event_age),
        durable_publish=sec.boolean("durable_publish", base.durable_publish),
        websocket=ws,
    )
    sec.finish()
    return cfg


# --------------------------------------------------------------------------- tracing

#: The OpenTelemetry exporter variables, read only when tracing is enabled and the
#: file leaves the setting out (the file wins: it is this sidecar's own config).
OTEL_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
OTEL_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_HEADERS = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"
OTEL_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
TRACES_PATH = "/v1/traces"


def _otlp_endpoint(sec: _Section, env: Mapping[str, str], enabled: bool) -> str:
    """A base URL gets ``/v1/traces`` (as OTEL_EXPORTER_OTLP_ENDPOINT does); a URL
    that already ends in it, or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, is used as is."""
    endpoint = sec.string("endpoint")
    origin = sec.field("endpoint")
    if not endpoint and enabled:
        if env.get(OTEL_TRACES_ENDPOINT):
            endpoint, origin = env[OTEL_TRACES_ENDPOINT], OTEL_TRACES_ENDPOINT
            return _checked_url(sec, endpoint, origin)
        if env.get(OTEL_ENDPOINT):
            endpoint, origin = env[OTEL_ENDPOINT], OTEL_ENDPOINT
    if not endpoint:
        return DEFAULT_OTLP_ENDPOINT
    if not endpoint.rstrip("/").endswith(TRACES_PATH):
        endpoint = endpoint.rstrip("/") + TRACES_PATH
    return _checked_url(sec, endpoint, origin)


def _checked_url(sec: _Section, url: str, origin: str) -> str:
    split = _url_parts(url)
    parts = urlsplit("") if isinstance(split, str) else split
    if parts.scheme not in ("http", "https") or not parts.hostname:
        where = "" if origin == sec.field("endpoint") else f" (from {origin})"
        sec.err("endpoint", f"must be an http:// or https:// URL{where}")
        return DEFAULT_OTLP_ENDPOINT
    return url


def _otlp_headers(sec: _Section, env: Mapping[str, str], enabled: bool) -> Secret | None:
    if sec.has("headers_env"):
        secret = sec.secret("headers_env", env, required=False)
    else:
        name = next((n for n in OTEL_HEADERS if enabled and env.get(n)), "")
        secret = Secret(name, env[name]) if name else None
    if secret is not None and parse_key_values(secret.value) is None:
        # Never the value: it holds API keys.
        sec.err("headers_env", f"{secret.env} must hold key=value pairs separated by commas")
        return None
    return secret


def _otlp(sec: _Section, env: Mapping[str, str], enabled: bool) -> OtlpConfig:
    cfg = OtlpConfig(
        endpoint=_otlp_endpoint(sec, env, enabled),
        headers=_otlp_headers(sec, env, enabled),
        compression=sec.string("compression", OtlpConfig.compression, choices=("none", "gzip")),
        timeout=sec.duration("timeout", OtlpConfig.timeout),
    )
    sec.finish({"headers": "secrets come from the environment: use headers_env"})
    return cfg


def _resource_attributes(sec: _Section, env: Mapping[str, str],
                         enabled: bool) -> dict[str, str]:
    attrs: dict[str, str] = {}
    raw = env.get(OTEL_RESOURCE_ATTRIBUTES, "") if enabled else ""
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


def _tracing(sec: _Section, env: Mapping[str, str]) -> TracingConfig:
    enabled = sec.boolean("enabled", TracingConfig.enabled)
    attrs = _resource_attributes(sec, env, enabled)
    from_env = env.get(OTEL_SERVICE_NAME, "") if enabled else ""
    service_name = sec.string("service_name", from_env or attrs.get("service.name")
                              or TracingConfig.service_name)
    attrs.pop("service.name", None)
    max_queue = sec.integer("max_queue", TracingConfig.max_queue, minimum=1)
    cfg = TracingConfig(
        enabled=enabled,
        service_name=service_name,
        resource_attributes=tuple(sorted(attrs.items())),
        sample_ratio=sec.number("sample_ratio", TracingConfig.sample_ratio, minimum=0.0,
                                maximum=1.0),
        max_queue=max_queue,
        max_batch=sec.integer("max_batch", TracingConfig.max_batch, minimum=1,
                              maximum=max_queue),
        export_interval=sec.duration("export_interval", TracingConfig.export_interval),
        otlp=_otlp(sec.section("otlp"), env, enabled),
    )
    if not cfg.service_name:
        sec.err("service_name", "must not be empty")
    sec.finish()
    return cfg


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
                 base_dir: Path | None = None) -> Config:
    """Validate an already-parsed YAML document (plus the environment)."""
    env = os.environ if env is None else env
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        raw = dict(raw)
        origins = _apply_env_overrides(raw, env)
    else:
        origins = {}
    problems = _Problems(origins)
    root = _Section(raw, "", problems)
    version = root.integer("version", 1)
    if version != 1:
        root.err("version", f"unsupported config version {version}; this sidecar reads 1")
    server = _server(root.section("server"), env, base_dir or Path.cwd())
    storage = _storage(root.section("storage"), env)
    logging = _logging(root.section("logging"))
    ints_sec = root.section("integrations")
    integrations = {
        str(name): _integration(str(name), _Section(body, ints_sec.field(str(name)), problems),
                                env, base_dir or Path.cwd())
        for name, body in ints_sec.raw.items()
    }
    routes = _routes(root, integrations)
    webhooks = _webhooks(root.section("webhooks"), env, server.edge.max_body_bytes)
    realtime = _realtime(root.section("realtime"), env, base_dir or Path.cwd())
    reload = _reload(root.section("reload"))
    tracing = _tracing(root.section("tracing"), env)
    root.finish()
    if problems.items:
        raise ConfigError(problems.items, source)
    return Config(server=server, storage=storage, logging=logging, integrations=integrations,
                  routes=routes, webhooks=webhooks, realtime=realtime, reload=reload,
                  tracing=tracing)


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (YAML) and the environment; ``None`` means built-in defaults."""
    env = os.environ if env is None else env
    if path is None:
        return parse_config({}, env, source="<defaults>")
    p = Path(path)
    try:
        raw = read_yaml(p)
    except YamlFileError as exc:
        raise ConfigError([ConfigProblem(exc.where, exc.description)], str(p)) from None
    return parse_config(raw, env, source=str(p), base_dir=p.resolve().parent)

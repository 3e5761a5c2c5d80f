"""The validated configuration: frozen dataclasses with named defaults.

Every setting is declared here once, on its field (``sidecar.config.settings``): its
YAML key, kind, unit, bounds, whether a reload applies it, and a one-line doc. The
loader, ``config show``, the reload diff, the JSON Schema and docs/configuration.md
are derived from these declarations. Built only by ``sidecar.config.load``;
everything else reads these objects.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sidecar.config.settings import Setting, about, declare_policy, setting
from sidecar.core.resilience.backoff import BackoffPolicy
from sidecar.core.resilience.breaker import BreakerPolicy
from sidecar.core.resilience.rate_limit import RateLimitPolicy
from sidecar.core.resilience.retry_budget import RetryBudgetPolicy

# Listener defaults follow what sidecar users expect: the app API only on
# loopback (nothing else in the pod should reach it by accident), the edge and
# the admin port on every interface (the outside world and Prometheus).
DEFAULT_GRPC_ADDRESS = "127.0.0.1:50051"
DEFAULT_EDGE_HOST = "0.0.0.0"  # noqa: S104 - the edge receives webhooks from outside
DEFAULT_EDGE_PORT = 8080
DEFAULT_ADMIN_HOST = "0.0.0.0"  # noqa: S104 - Prometheus and kubelet scrape it
DEFAULT_ADMIN_PORT = 9464
#: gRPC's own default; large enough for typical REST bodies.
DEFAULT_GRPC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Kubernetes' default terminationGracePeriodSeconds is 30 s; draining within
#: half of it leaves room for the app container to stop after us.
DEFAULT_SHUTDOWN_GRACE = 15.0
DEFAULT_EDGE_MAX_BODY_BYTES = 1024 * 1024
#: Seconds a client may take to send a request's headers, or to begin its next request
#: on a kept-alive connection. Providers send at once; a trickle is an attack.
DEFAULT_EDGE_HEADER_TIMEOUT = 10.0
#: Seconds a client may take to send a request's body (1 MiB at 35 KB/s).
DEFAULT_EDGE_BODY_TIMEOUT = 30.0
DEFAULT_DATA_DIR = "./data"
DEFAULT_REDIS_URL_ENV = "REDIS_URL"
#: Several apps can share one Redis: every key of this sidecar starts with it.
DEFAULT_REDIS_KEY_PREFIX = "sidecar:"
#: Long enough for a loaded Redis, short enough that readiness notices an outage.
DEFAULT_REDIS_SOCKET_TIMEOUT = 2.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_ATTEMPT_TIMEOUT = 10.0
DEFAULT_TOTAL_TIMEOUT = 30.0
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Secret:
    """A value taken from an environment variable; never printed."""

    env: str
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Secret(env={self.env!r}, value='<redacted>')"

    __str__ = __repr__


@dataclass(frozen=True)
class ServerTlsConfig:
    """TLS on one of the sidecar's own listeners: PEM files, re-read on every reload."""

    cert_file: str = field(metadata=about(
        doc="PEM certificate chain (relative to the config file)", unit="path"))
    key_file: str = field(metadata=about(doc="PEM private key", unit="path"))
    #: gRPC only: clients must present a certificate signed by this CA (mTLS).
    client_ca_file: str = setting("", doc="gRPC only: clients need a certificate signed by "
                                          "this CA (mTLS)", unit="path")


@dataclass(frozen=True)
class GrpcListenerConfig:
    #: ``host:port`` or ``unix:///path/to/socket``; port 0 picks a free port.
    address: str = setting(DEFAULT_GRPC_ADDRESS, kind="custom", env="SIDECAR_GRPC_ADDRESS",
                           doc="`host:port` or `unix:///path`; port 0 picks a free one",
                           schema={"type": "string"})
    max_message_bytes: int = setting(DEFAULT_GRPC_MAX_MESSAGE_BYTES, kind="integer",
                                     unit="bytes", minimum=1024, maximum=256 * 1024 * 1024,
                                     doc="largest gRPC message either way")
    #: When set, callers must send ``authorization: Bearer <token>``.
    api_token: Secret | None = setting(None, kind="secret", yaml="api_token_env",
                                       doc="callers must send `authorization: Bearer "
                                           "<token>` (compared in constant time)")
    reflection: bool = setting(True, kind="boolean", doc="serve gRPC server reflection")
    #: None: plaintext (the default, for a loopback-only listener).
    tls: ServerTlsConfig | None = setting(None, kind="section", of=ServerTlsConfig, switch=True,
                                          reload="live", reload_rule="tls",
                                          doc="TLS on this listener; files re-read on reload")


@dataclass(frozen=True)
class HttpListenerConfig:
    host: str = field(metadata=about(doc="interface to listen on", blank_default=True,
                                     required=False,
                                     env="SIDECAR_ADMIN_HOST"))
    port: int = field(metadata=about(kind="integer", minimum=0, maximum=65535, required=False,
                                     doc="port; 0 picks a free one", env="SIDECAR_ADMIN_PORT"))
    tls: ServerTlsConfig | None = setting(None, kind="section", of=ServerTlsConfig, switch=True,
                                          reload="live", reload_rule="tls",
                                          omit=("client_ca_file",),
                                          doc="TLS on this listener; files re-read on reload")


@dataclass(frozen=True)
class EdgeConfig:
    host: str = setting(DEFAULT_EDGE_HOST, blank_default=True, env="SIDECAR_EDGE_HOST",
                        doc="interface of the public edge (webhooks, /ws)")
    port: int = setting(DEFAULT_EDGE_PORT, kind="integer", minimum=0, maximum=65535,
                        env="SIDECAR_EDGE_PORT", doc="port of the public edge")
    max_body_bytes: int = setting(DEFAULT_EDGE_MAX_BODY_BYTES, kind="integer", unit="bytes",
                                  minimum=1024, maximum=64 * 1024 * 1024,
                                  doc="largest request body on the edge (413 above)")
    tls: ServerTlsConfig | None = setting(None, kind="section", of=ServerTlsConfig, switch=True,
                                          reload="live", reload_rule="tls",
                                          omit=("client_ca_file",),
                                          doc="TLS on this listener; files re-read on reload")
    header_timeout: float = setting(DEFAULT_EDGE_HEADER_TIMEOUT, kind="duration",
                                    doc="a request's headers (or the next request on a "
                                        "kept-alive connection) must arrive within this")
    body_timeout: float = setting(DEFAULT_EDGE_BODY_TIMEOUT, kind="duration",
                                  doc="a webhook's body must arrive within this (else 408)")


@dataclass(frozen=True)
class ServerConfig:
    grpc: GrpcListenerConfig = setting(GrpcListenerConfig(), kind="section",
                                       doc="the app's gRPC API (loopback by default)")
    edge: EdgeConfig = setting(EdgeConfig(), kind="section",
                               doc="the public HTTP edge: webhooks and WebSocket")
    admin: HttpListenerConfig = setting(HttpListenerConfig(DEFAULT_ADMIN_HOST,
                                                           DEFAULT_ADMIN_PORT),
                                        kind="section", doc="metrics, probes, status page")
    #: Seconds in-flight work may take to finish after SIGTERM.
    shutdown_grace: float = setting(DEFAULT_SHUTDOWN_GRACE, kind="duration", positive=False,
                                    env="SIDECAR_SHUTDOWN_GRACE", doc="drain time after SIGTERM")


#: How the sidecar reaches Redis: one server, a Redis Cluster, or a primary
#: that Redis Sentinel manages (and fails over).
REDIS_MODES = ("standalone", "cluster", "sentinel")


def redis_urls(value: str) -> list[str]:
    """The URLs of a comma-separated list (cluster seed nodes, sentinels)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def url_passwords(url: str) -> list[str]:
    """The passwords a Redis URL carries: in its user info and in a ``password=`` query."""
    parts = urlsplit(url)
    found = [unquote(parts.password or ""), *parse_qs(parts.query).get("password", [])]
    return [p for p in found if p]


@dataclass(frozen=True)
class RedisSentinelConfig:
    #: The name the sentinels monitor the primary under (``sentinel monitor <name> ...``).
    master_name: str = setting("", kind="custom", schema={"type": "string"},
                               doc="sentinel mode (required): the name the sentinels "
                                   "monitor the primary under")
    #: The environment variable holding the sentinels' own password (``requirepass``
    #: in sentinel.conf); empty: the sentinels ask for none.
    password_env: str = setting("", kind="custom", schema={"type": "string"},
                                doc="the variable holding the sentinels' own password")
    password: Secret | None = setting(None, kind="secret", yaml=None,
                                      doc="the sentinels' password (from password_env)")


@dataclass(frozen=True)
class RedisConfig:
    #: The environment variable holding the URL (``redis://``, ``rediss://`` for
    #: TLS, ``unix://``); it may carry a password, so it is a secret. In cluster
    #: mode a comma-separated list of seed nodes, in sentinel mode of sentinels.
    url_env: str = setting(DEFAULT_REDIS_URL_ENV, kind="custom", schema={"type": "string"},
                           doc="the variable holding the URL (`redis://`, `rediss://`, "
                               "`unix://`; in cluster and sentinel mode a comma-separated "
                               "list); read with `backend: redis`")
    url: Secret | None = setting(None, kind="secret", yaml=None,
                                 doc="the URL (from url_env)")
    #: One of ``REDIS_MODES``.
    mode: str = setting("standalone", choices=REDIS_MODES,
                        doc="`standalone`, `cluster` (the prefix gets a hash tag) or "
                            "`sentinel`")
    key_prefix: str = setting(DEFAULT_REDIS_KEY_PREFIX, kind="custom",
                              schema={"type": "string", "minLength": 1, "maxLength": 100},
                              doc="every key of this sidecar starts with it (no spaces)")
    socket_timeout: float = setting(DEFAULT_REDIS_SOCKET_TIMEOUT, kind="duration",
                                    doc="per Redis command")
    sentinel: RedisSentinelConfig = setting(RedisSentinelConfig(), kind="section",
                                            doc="sentinel mode")

    def url_secrets(self) -> list[Secret]:
        """The URL, the passwords inside it and the sentinels' password, each to be
        redacted wherever it shows."""
        found: list[Secret] = []
        if self.url is not None:
            urls = [self.url.value] if self.mode == "standalone" else redis_urls(self.url.value)
            found = [self.url, *(Secret(self.url.env, p) for u in urls for p in url_passwords(u))]
        if self.sentinel.password is not None:
            found.append(self.sentinel.password)
        return found


@dataclass(frozen=True)
class StorageConfig:
    #: ``sqlite`` (embedded, one replica) or ``redis`` (shared by replicas).
    backend: str = setting("sqlite", choices=("sqlite", "redis"), env="SIDECAR_STORAGE_BACKEND",
                           doc="`sqlite` (one replica) or `redis` (several)")
    data_dir: str = setting(DEFAULT_DATA_DIR, blank_default=True, unit="path",
                            env="SIDECAR_DATA_DIR", doc="where `sidecar.db` (SQLite, WAL) lives")
    redis: RedisConfig = setting(RedisConfig(), kind="section",
                                 doc="with `backend: redis`")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("info", choices=("debug", "info", "warning", "error"), reload="live",
                         env="SIDECAR_LOG_LEVEL", doc="least severe level logged")
    #: ``json`` (one object per line, for log pipelines) or ``text``.
    format: str = setting("json", choices=("json", "text"), env="SIDECAR_LOG_FORMAT",
                          doc="`json` (one object per line) or `text`")


@dataclass(frozen=True)
class TimeoutsConfig:
    """Seconds. ``attempt`` bounds one upstream try, ``total`` the whole call."""

    connect: float = setting(DEFAULT_CONNECT_TIMEOUT, kind="duration",
                             doc="to open a connection (at most `attempt`)")
    attempt: float = setting(DEFAULT_ATTEMPT_TIMEOUT, kind="duration",
                             doc="one upstream try (at most `total`)")
    total: float = setting(DEFAULT_TOTAL_TIMEOUT, kind="duration",
                           doc="the whole call, retries included")


AUTH_TYPES = ("none", "bearer", "api_key", "basic", "oauth2_client_credentials")
#: RFC 6749 §2.3.1: the client authenticates with HTTP Basic (``basic``, the method
#: every server must support) or with form fields in the body (``body``).
OAUTH2_CLIENT_AUTH = ("basic", "body")
#: Fetch a new access token this long before the old one expires, so no call
#: goes out with a token about to lapse in flight.
DEFAULT_TOKEN_REFRESH_BEFORE = 60.0
#: How long a token is used when the server does not say (no ``expires_in``):
#: an hour is what most servers issue; a 401 fetches a new one sooner.
DEFAULT_TOKEN_LIFETIME = 3600.0
DEFAULT_TOKEN_TIMEOUT = 10.0


@dataclass(frozen=True)
class OAuth2Config:
    """OAuth2 client credentials (RFC 6749 §4.4); the client secret is ``AuthConfig.secret``."""

    token_url: str = field(metadata=about(
        kind="custom", schema={"type": "string"},
        doc="the token endpoint; `https://` unless the integration allows http"))
    client_id: str = field(metadata=about(kind="custom", schema={"type": "string"},
                                          doc="the client id (or `client_id_env`)"))
    #: The variable ``client_id`` was read from; empty: it was given in the file.
    client_id_env: str = setting("", kind="custom", schema={"type": "string"},
                                 doc="the variable holding the client id")
    scopes: tuple[str, ...] = setting((), kind="custom",
                                      schema={"type": "array", "items": {"type": "string"}},
                                      doc="scopes, sent space-joined as `scope`")
    audience: str = setting("", doc="`audience` form field")
    #: Extra form fields of the token request (Azure's ``resource``, ...).
    params: tuple[tuple[str, str], ...] = setting(
        (), kind="custom", doc="extra form fields of the token request (e.g. `resource`)",
        schema={"type": "object", "additionalProperties": {"type": ["string", "number"]}})
    client_auth: str = setting("basic", choices=OAUTH2_CLIENT_AUTH,
                               doc="`basic` (HTTP Basic, RFC 6749 §2.3.1) or `body`")
    refresh_before: float = setting(DEFAULT_TOKEN_REFRESH_BEFORE, kind="duration",
                                    positive=False, doc="renew this long before expiry")
    default_lifetime: float = setting(DEFAULT_TOKEN_LIFETIME, kind="duration",
                                      doc="lifetime when the server sends no `expires_in`")
    #: Seconds for one token request (the call's deadline bounds the wait too).
    timeout: float = setting(DEFAULT_TOKEN_TIMEOUT, kind="duration",
                             doc="per token request (the call's deadline bounds it too)")


@dataclass(frozen=True)
class AuthConfig:
    #: One of ``AUTH_TYPES``: ``bearer`` (Authorization: Bearer), ``api_key`` (a named
    #: header), ``basic`` (HTTP Basic) or ``oauth2_client_credentials``.
    type: str = setting("none", choices=AUTH_TYPES, doc="how calls authenticate upstream")
    header: str = setting("", kind="custom", schema={"type": "string"},
                          doc="`api_key`: the header that carries the key")
    #: The token, API key, Basic password or OAuth2 client secret.
    secret: Secret | None = setting(
        None, kind="secret", doc="the secret's variable: `token_env` (bearer), `value_env` "
                                 "(api_key), `password_env` (basic), `client_secret_env` "
                                 "(OAuth2)",
        yaml="token_env", aliases=("value_env", "password_env", "client_secret_env"))
    #: ``basic``: the user name, and the variable it was read from (empty: from the file).
    username: str = setting("", kind="custom", schema={"type": "string"},
                            doc="`basic`: the user (or `username_env`)")
    username_env: str = setting("", kind="custom", schema={"type": "string"},
                                doc="`basic`: the variable holding the user")
    oauth2: OAuth2Config | None = setting(None, kind="section", of=OAuth2Config, flatten=True,
                                          doc="`oauth2_client_credentials`")

    def static_value(self) -> str | None:
        """The header value of a kind that never changes (all but OAuth2), else None."""
        if self.secret is None or self.oauth2 is not None:
            return None
        if self.type == "bearer":
            return f"Bearer {self.secret.value}"
        if self.type == "basic":
            pair = f"{self.username}:{self.secret.value}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return self.secret.value

    def secrets(self) -> list[Secret]:
        """The secret, and the Basic header (whose base64 does not contain the password)."""
        if self.secret is None:
            return []
        if self.type == "basic":
            value = self.static_value()
            assert value is not None
            return [self.secret, Secret(self.secret.env, value.removeprefix("Basic "))]
        return [self.secret]


@dataclass(frozen=True)
class ApiVersionConfig:
    #: The pinned version; empty means none is sent.
    version: str = setting("", doc="pinned API version sent on every call; empty: none")
    #: ``header`` (sent in ``header``) or ``path`` (prefixed to the path).
    location: str = setting("header", choices=("header", "path"),
                            doc="send it as a header or a path prefix")
    header: str = setting("Api-Version", kind="header", doc="the header it is sent in")


@dataclass(frozen=True)
class TlsConfig:
    verify: bool = setting(True, kind="boolean", doc="check the upstream's certificate")
    ca_file: str = setting("", kind="custom", unit="path", schema={"type": "string"},
                           doc="CA bundle to trust instead of the system's")
    client_cert_file: str = setting("", kind="custom", unit="path", schema={"type": "string"},
                                    doc="client certificate (mTLS), with client_key_file")
    client_key_file: str = setting("", kind="custom", unit="path", schema={"type": "string"},
                                   doc="client key (mTLS)")


#: Retried by default: rate limited, and the gateway answers that mean "the
#: request did not reach a healthy server" (502/503/504). 500 is not: the
#: upstream may have acted on the request.
DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_RETRY_ERRORS = frozenset({"connect", "reset", "timeout"})
RETRY_ERROR_KINDS = ("connect", "reset", "timeout", "tls", "protocol")
#: A list of HTTP statuses: numbers, or classes like ``5xx``.
STATUSES_SCHEMA: dict[str, Any] = {"type": "array", "items": {"anyOf": [
    {"type": "integer", "minimum": 100, "maximum": 599},
    {"type": "string", "pattern": "^[1-5]xx$"}]}}
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BULKHEAD = 100
#: Stripe keeps idempotency keys 24 hours; the IETF draft suggests the same.
DEFAULT_IDEMPOTENCY_RETENTION = 24 * 3600.0


@dataclass(frozen=True)
class RetryConfig:
    #: Attempts in all, the first included (1 = never retry).
    max_attempts: int = setting(DEFAULT_MAX_ATTEMPTS, kind="integer", minimum=1, maximum=20,
                                doc="attempts in all (1 = no retry)")
    backoff: BackoffPolicy = setting(BackoffPolicy(), kind="section",
                                     doc="delay before each retry")
    on_status: frozenset[int] = setting(DEFAULT_RETRY_STATUSES, kind="custom",
                                        schema=STATUSES_SCHEMA,
                                        doc="retryable statuses (numbers or classes like 5xx)")
    #: Transport error kinds: connect, reset, timeout, tls, protocol.
    on_errors: frozenset[str] = setting(
        DEFAULT_RETRY_ERRORS, kind="custom", doc="retryable transport errors",
        schema={"type": "array", "items": {"enum": list(RETRY_ERROR_KINDS)}})
    #: Wait what Retry-After / RateLimit-Reset say when it fits the deadline.
    honor_retry_after: bool = setting(True, kind="boolean",
                                      doc="wait what `Retry-After` / `RateLimit-Reset` say "
                                          "when it fits the deadline")


@dataclass(frozen=True)
class BreakerConfig:
    enabled: bool = setting(True, kind="boolean", doc="false: calls never stop")
    policy: BreakerPolicy = setting(BreakerPolicy(), kind="section", flatten=True,
                                    doc="when it opens and how it recovers")
    #: Upstream statuses that count as failures (transport errors always do).
    failure_statuses: frozenset[int] = setting(frozenset(range(500, 600)), kind="custom",
                                               schema=STATUSES_SCHEMA,
                                               doc="statuses that count as failures")


@dataclass(frozen=True)
class BulkheadConfig:
    #: Upstream requests in flight at once for the integration.
    max_concurrent: int = setting(DEFAULT_BULKHEAD, kind="integer", minimum=1, maximum=10_000,
                                  doc="upstream requests in flight at once")
    #: Seconds a call may wait for a free slot; None waits until its deadline.
    max_wait: float | None = setting(None, kind="custom", default_text="the deadline",
                                     schema={"$ref": "#/$defs/duration"},
                                     doc="how long a call may wait for a slot")


#: Pauses before each retry of a queued call: about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
#: 10 h (Stripe's and Svix's spirit).
DEFAULT_QUEUE_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: 4xx answers that mean "later", not "never": a queued call is tried again.
DEFAULT_QUEUE_RETRYABLE_4XX = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class QueueConfig:
    """How the integration's queued calls (EnqueueCall) are attempted."""

    schedule: tuple[float, ...] = setting(
        DEFAULT_QUEUE_SCHEDULE, kind="custom", default_text="5s, 5m, 30m, 2h, 5h, 10h, 10h",
        schema={"type": "array", "items": {"$ref": "#/$defs/duration"}, "maxItems": 50},
        doc="pause before each retry; its length is the number of retries")
    jitter: float = setting(0.2, kind="number", minimum=0.0, maximum=1.0,
                            doc="each pause is drawn from [1 - jitter, 1] of its step")
    max_age: float = setting(3 * 24 * 3600.0, kind="duration",
                             doc="no attempt starts later than this after enqueue (then DEAD)")
    concurrency: int = setting(8, kind="integer", minimum=1, maximum=1000,
                               doc="attempts of queued calls in flight at once")
    retryable_4xx: frozenset[int] = setting(
        DEFAULT_QUEUE_RETRYABLE_4XX, kind="custom", schema=STATUSES_SCHEMA,
        doc="4xx answers tried again; any other 4xx ends the call FAILED")


@dataclass(frozen=True)
class SigningConfig:
    """Every request sent to the integration signed (queued or not), as Standard
    Webhooks says: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``
    (HMAC-SHA256 of ``id.timestamp.body``)."""

    #: ``whsec_`` secrets from environment variables; each signs (rotation).
    secrets: tuple[Secret, ...] = setting(
        (), kind="custom", yaml="secrets_env",
        schema={"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1,
                                               "items": {"type": "string"}}]},
        doc="variables holding `whsec_` secrets; every one signs (rotation)")


@dataclass(frozen=True)
class IdempotencyConfig:
    header: str = setting("Idempotency-Key", kind="header",
                          doc="header sent upstream with the call's key")
    #: Seconds a completed key is remembered.
    retention: float = setting(DEFAULT_IDEMPOTENCY_RETENTION, kind="duration",
                               doc="how long a completed key is remembered")


@dataclass(frozen=True)
class FallbackConfig:
    #: Answer a GET from the last good response while the breaker is open.
    enabled: bool = setting(False, kind="boolean",
                            doc="serve the last good GET response while the breaker is open")
    #: Seconds a last good response may be served for.
    max_age: float = setting(3600.0, kind="duration",
                             doc="how old a served response may be")
    #: Responses remembered per integration (least recently used dropped).
    max_entries: int = setting(256, kind="integer", minimum=1, maximum=100_000,
                               doc="responses remembered (least recently used dropped)")


@dataclass(frozen=True)
class IntegrationConfig:
    name: str = field(metadata=about(yaml=None, doc="the key in `integrations`"))
    base_url: str = field(metadata=about(
        kind="custom", schema={"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9+.-]*://"},
        doc="`https://` URL; the only place calls can go"))
    allow_insecure_http: bool = setting(False, kind="boolean",
                                        doc="permit `http://` (local development)")
    headers: tuple[tuple[str, str], ...] = setting(
        (), kind="custom", doc="default request headers",
        schema={"type": "object", "additionalProperties": {"type": ["string", "number",
                                                                    "boolean"]}})
    auth: AuthConfig = setting(AuthConfig(), kind="section", doc="credentials sent upstream")
    timeouts: TimeoutsConfig = setting(TimeoutsConfig(), kind="section",
                                       doc="connect <= attempt <= total")
    api_version: ApiVersionConfig = setting(ApiVersionConfig(), kind="section",
                                            doc="a pinned upstream API version")
    tls: TlsConfig = setting(TlsConfig(), kind="section", doc="upstream TLS")
    max_request_bytes: int = setting(DEFAULT_MAX_REQUEST_BYTES, kind="integer", minimum=0,
                                     unit="bytes", doc="largest request body")
    max_response_bytes: int = setting(DEFAULT_MAX_RESPONSE_BYTES, kind="integer", minimum=1,
                                      unit="bytes", doc="largest response body")
    retry: RetryConfig = setting(RetryConfig(), kind="section", doc="when and how to retry")
    #: None: no budget (not recommended).
    retry_budget: RetryBudgetPolicy | None = setting(
        RetryBudgetPolicy(), kind="section", switch=True,
        doc="retries <= ratio x calls + floor over the window")
    circuit_breaker: BreakerConfig = setting(BreakerConfig(), kind="section",
                                             doc="stop calling a failing upstream")
    #: None: no local rate limit.
    rate_limit: RateLimitPolicy | None = setting(
        None, kind="section", of=RateLimitPolicy, switch=True, default_text="none",
        doc="token bucket (`rate` required)")
    bulkhead: BulkheadConfig = setting(BulkheadConfig(), kind="section",
                                       doc="bounded concurrency")
    idempotency: IdempotencyConfig = setting(IdempotencyConfig(), kind="section",
                                             doc="idempotency keys")
    fallback: FallbackConfig = setting(FallbackConfig(), kind="section",
                                       doc="stale answers while the breaker is open")
    queue: QueueConfig = setting(QueueConfig(), kind="section",
                                 doc="queued calls (EnqueueCall): schedule and concurrency")
    #: None: requests are not signed.
    signing: SigningConfig | None = setting(
        None, kind="section", of=SigningConfig, switch=True, default_text="none",
        doc="sign every request sent (Standard Webhooks)")


@dataclass(frozen=True)
class RouteConfig:
    """Per-route overrides for one integration, matched by method and path."""

    name: str = field(metadata=about(kind="custom", schema={"type": "string"},
                                     doc="unique per integration"))
    integration: str = field(metadata=about(kind="custom", schema={"type": "string"},
                                            doc="a configured integration"))
    #: Upper-case HTTP method, or ``*`` for any.
    method: str = field(metadata=about(kind="custom", schema={"type": "string"},
                                       default_text="`*`", required=False,
                                       doc="HTTP method, or `*` for any"))
    #: Path pattern relative to the base URL; ``*`` matches one segment, a
    #: trailing ``**`` any rest.
    path: str = field(metadata=about(kind="custom", schema={"type": "string"},
                                     default_text="`/**`", required=False,
                                     doc="path pattern (`*` one segment, `**` the rest)"))
    #: Each override is None when the route inherits the integration's.
    timeouts: TimeoutsConfig | None = setting(
        None, kind="section", of=TimeoutsConfig, default_text="the integration's",
        doc="overrides; keys left out inherit")
    retry: RetryConfig | None = setting(
        None, kind="section", of=RetryConfig, default_text="the integration's",
        doc="overrides; keys left out inherit")
    #: A route with its own breaker trips independently of the integration's.
    circuit_breaker: BreakerConfig | None = setting(
        None, kind="section", of=BreakerConfig, default_text="the integration's",
        doc="a breaker of the route's own")
    #: A route with its own rate limit has its own bucket.
    rate_limit: RateLimitPolicy | None = setting(
        None, kind="section", of=RateLimitPolicy, switch=True,
        default_text="the integration's",
        doc="a bucket of the route's own; `enabled: false` exempts the route")
    fallback: FallbackConfig | None = setting(
        None, kind="section", of=FallbackConfig, default_text="the integration's",
        doc="overrides; keys left out inherit")
    #: ``rate_limit: {enabled: false}``: the route's calls are not rate limited, whatever
    #: the integration's limit (``rate_limit`` is then None).
    unlimited: bool = setting(False, kind="boolean", yaml=None,
                              doc="`rate_limit: {enabled: false}`")


#: ``event_id`` / ``event_type`` of a webhook source: a header, or a dotted JSON path.
EXTRACTION_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": False,
                                     "properties": {"header": {"type": "string"},
                                                    "path": {"type": "string"}}}
WEBHOOK_SCHEMES = ("standard_webhooks", "stripe", "github", "shopify", "slack", "generic_hmac")
#: Providers retry for up to about three days (Stripe); remembering event ids
#: for a week covers every provider's redelivery window.
DEFAULT_WEBHOOK_RETENTION = 7 * 24 * 3600.0


@dataclass(frozen=True)
class WebhookSourceConfig:
    """One provider account sending to ``POST /webhooks/<name>``."""

    name: str = field(metadata=about(yaml=None, doc="the key in `sources`"))
    scheme: str = field(metadata=about(choices=WEBHOOK_SCHEMES,
                                       doc="how signatures are verified"))
    #: Every active secret (rotation: any may match), from environment variables.
    secrets: tuple[Secret, ...] = field(metadata=about(
        kind="custom", yaml="secrets_env",
        schema={"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1,
                                               "items": {"type": "string"}}]},
        doc="variables, every one an active secret (rotation)"))
    #: Seconds a signed timestamp may be old (or ahead).
    tolerance: float = setting(300.0, kind="duration",
                               doc="how old (or ahead) a signed timestamp may be")
    max_body_bytes: int = setting(DEFAULT_EDGE_MAX_BODY_BYTES, kind="custom", unit="bytes",
                                  schema={"type": "integer", "minimum": 1},
                                  doc="body limit (at most `server.edge.max_body_bytes`)")
    #: Topic the events go to; default ``webhooks.<name>``.
    topic: str = setting("", kind="custom", schema={"type": "string"},
                         default_text="`webhooks.<name>`", doc="topic the events go to")
    #: Per-source request rate on the edge; None: unlimited.
    rate_limit: RateLimitPolicy | None = setting(
        RateLimitPolicy(rate=100.0, burst=200), kind="section", switch=True,
        doc="requests per second for this source")
    # generic_hmac
    algorithm: str = setting("sha256", choices=("sha256", "sha512"), doc="`generic_hmac`: HMAC")
    signature_header: str = setting("", doc="`generic_hmac`: the header with the signature")
    encoding: str = setting("hex", choices=("hex", "base64"),
                            doc="`generic_hmac`: how the signature is encoded")
    prefix: str = setting("", doc="`generic_hmac`: text before the signature (`v1=`)")
    signed_content: str = setting("{body}", doc="`generic_hmac`: what is signed (`{body}`, "
                                                "`{timestamp}`, `{id}`, `{url}`)")
    timestamp_header: str = setting("", doc="`generic_hmac`: the header with the timestamp")
    id_header: str = setting("", doc="`generic_hmac`: the header with the event id")
    # event id / type extraction overrides: a header, or a dotted JSON path
    event_id_header: str = setting("", kind="custom", yaml="event_id",
                                   schema=EXTRACTION_SCHEMA,
                                   doc="where the event id is: `{header: ...}` or "
                                       "`{path: data.id}`")
    event_id_path: str = setting("", yaml=None, doc="event_id.path")
    event_type_header: str = setting("", kind="custom", yaml="event_type",
                                     schema=EXTRACTION_SCHEMA,
                                     doc="where the event type is")
    event_type_path: str = setting("", yaml=None, doc="event_type.path")

    @property
    def topic_name(self) -> str:
        return self.topic or f"webhooks.{self.name}"


@dataclass(frozen=True)
class DeliveryConfig:
    """Durable consumer groups: how events reach the app and come back."""

    ack_timeout: float = setting(30.0, kind="duration",
                                 doc="an unacked delivery is redelivered after this")
    max_attempts: int = setting(10, kind="integer", minimum=1, maximum=1000,
                                doc="deliveries before an event is dead")
    #: Delay before redelivering an event acked with "retry" (grows per attempt).
    backoff: BackoffPolicy = setting(BackoffPolicy(initial=1.0, multiplier=2.0, maximum=300.0,
                                                   jitter="none"), kind="section",
                                     doc="delay before redelivering an event acked `retry`")
    #: Unacked events per member when the subscriber does not ask.
    default_in_flight: int = setting(10, kind="integer", minimum=1,
                                     doc="unacked events per member when it does not ask")
    max_in_flight: int = setting(100, kind="integer", minimum=1, maximum=10_000,
                                 doc="most unacked events per member")
    #: Seconds between heartbeats on an idle stream.
    heartbeat: float = setting(15.0, kind="duration", doc="heartbeat on an idle stream")


@dataclass(frozen=True)
class WebhooksConfig:
    sources: dict[str, WebhookSourceConfig] = field(default_factory=dict, metadata=about(
        kind="custom", of=WebhookSourceConfig,
        doc="one provider account each, posting to `/webhooks/<name>`", required=False))
    delivery: DeliveryConfig = setting(DeliveryConfig(), kind="section", reload="restart",
                                       doc="durable consumer groups")
    #: How long event ids are remembered for de-duplication, and events kept.
    retention: float = setting(DEFAULT_WEBHOOK_RETENTION, kind="duration",
                               doc="de-duplication window and how long events are kept")
    #: Requests per client IP per second on the webhook edge; None: unlimited.
    per_ip_rate_limit: RateLimitPolicy | None = setting(
        RateLimitPolicy(rate=50.0, burst=100), kind="section", switch=True,
        doc="requests per client IP on the webhook edge")
    #: Webhook requests handled at once; more get 503 (memory stays bounded).
    max_concurrent: int = setting(256, kind="integer", minimum=1,
                                  doc="webhook requests handled at once (more get 503)")
    #: aiohttp's parser refuses more than 128 headers before the sidecar sees the request.
    max_headers: int = setting(100, kind="integer", minimum=10, maximum=128,
                               doc="headers per webhook request")


JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512")


@dataclass(frozen=True)
class JwtConfig:
    """How WebSocket clients authenticate."""

    #: Allowed algorithms; a token with any other (``none`` included) is refused.
    algorithms: tuple[str, ...] = setting(
        ("HS256",), kind="custom", doc="allow-list; any other (`none` included) is refused",
        schema={"type": "array", "minItems": 1, "items": {"enum": list(JWT_ALGORITHMS)}})
    hs256_secret: Secret | None = setting(None, kind="secret", yaml="hs256_secret_env",
                                          doc="HMAC secret (HS algorithms)")
    #: PEM public key for RS256 (the file's contents).
    rs256_public_key: str = setting("", yaml=None, doc="the PEM key read from the file")
    #: The file it was read from, resolved against the config file's directory
    #: (``config show`` prints this path, not the key).
    rs256_public_key_file: str = setting("", kind="custom", unit="path",
                                         schema={"type": "string"},
                                         doc="PEM public key file (RS algorithms)")
    audience: str = setting("", doc="required `aud` claim; empty: not checked")
    issuer: str = setting("", doc="required `iss` claim; empty: not checked")
    #: Claim listing the user's roles (joined as ``role:<r>`` rooms).
    roles_claim: str = setting("roles", doc="claim listing roles (joined as `role:<r>`)")
    #: Claim listing further topics the client may subscribe to.
    topics_claim: str = setting("topics", doc="claim listing extra topics allowed")
    #: Seconds of clock skew tolerated on exp/nbf.
    leeway: float = setting(5.0, kind="duration", positive=False,
                            doc="clock skew tolerated on exp/nbf")


@dataclass(frozen=True)
class WebSocketConfig:
    #: Defaults to on when ``jwt`` keys are configured.
    enabled: bool = setting(False, kind="custom", schema={"type": "boolean"}, reload="restart",
                            default_text="on when `jwt` is set", doc="the `/ws` edge")
    jwt: JwtConfig = setting(JwtConfig(), kind="section",
                             doc="how clients authenticate (read when enabled)")
    #: Allowed ``Origin`` values; empty allows any (non-browser clients send none).
    allowed_origins: tuple[str, ...] = setting(
        (), kind="custom", schema={"type": "array", "items": {"type": "string"}},
        default_text="any", doc="browser origins allowed (`https://app.example`)")
    #: Seconds between server pings; a peer silent for two intervals is closed.
    ping_interval: float = setting(20.0, kind="duration",
                                   doc="server pings; silent for two intervals: closed")
    max_connections: int = setting(10_000, kind="integer", minimum=1, doc="open connections")
    #: Largest client frame (subscribe requests are small).
    max_message_bytes: int = setting(64 * 1024, kind="integer", minimum=1024, unit="bytes",
                                     doc="largest client frame")


@dataclass(frozen=True)
class RealtimeConfig:
    #: Events each subscriber may have queued before the slow-consumer policy acts.
    queue_size: int = setting(1000, kind="integer", minimum=1, maximum=1_000_000,
                              doc="events a live subscriber may have queued")
    #: ``disconnect`` or ``drop_oldest`` (delivers a gap marker).
    slow_consumer: str = setting("disconnect", choices=("disconnect", "drop_oldest"),
                                 doc="when the queue is full (`drop_oldest` sends a gap)")
    heartbeat: float = setting(15.0, kind="duration", doc="heartbeat on an idle subscription")
    max_data_bytes: int = setting(1024 * 1024, kind="integer", minimum=1, unit="bytes",
                                  doc="largest Publish payload")
    idempotency_retention: float = setting(24 * 3600.0, kind="duration",
                                           doc="how long Publish idempotency keys are kept")
    #: The log keeps at most this many events per topic ...
    max_events_per_topic: int = setting(10_000, kind="integer", minimum=1, reload="live",
                                        doc="the event log keeps at most this many per topic")
    #: ... and none older than this (seconds).
    max_event_age: float = setting(24 * 3600.0, kind="duration", reload="live",
                                   doc="... and none older (webhook topics: "
                                       "`webhooks.retention`)")
    #: SQLite: Publish answers only after an fsync (safe from power loss). Off: once
    #: the event is written (safe from a crash or restart of the sidecar), no fsync.
    durable_publish: bool = setting(False, kind="boolean",
                                    doc="SQLite: Publish waits for an fsync (safe from "
                                        "power loss), not only for the write")
    websocket: WebSocketConfig = setting(WebSocketConfig(), kind="section", reload="live",
                                         reload_rule="switched",
                                         doc="the `/ws` edge (applies to new connections)")


#: Often enough that a rotated certificate or edited ConfigMap is picked up
#: within seconds; a stat() of a few files costs nothing.
DEFAULT_WATCH_INTERVAL = 5.0


@dataclass(frozen=True)
class ReloadConfig:
    """Hot reload: SIGHUP always; optionally also when the watched files change."""

    #: Poll the config file and the listeners' TLS files and reload on a change.
    watch: bool = setting(False, kind="boolean", doc="also reload when the config or TLS "
                                                     "files change (SIGHUP always works)")
    watch_interval: float = setting(DEFAULT_WATCH_INTERVAL, kind="duration", minimum=0.05,
                                    doc="how often the files are checked")


#: The OTLP/HTTP port's standard address (OpenTelemetry's default endpoint).
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_SERVICE_NAME = "integration-sidecar"


def parse_key_values(text: str) -> list[tuple[str, str]] | None:
    """``k=v,k2=v2`` as OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES write it
    (values percent-decoded, blanks around items ignored); None when an item has no key."""
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            return None
        pairs.append((key.strip(), unquote(value.strip())))
    return pairs


@dataclass(frozen=True)
class OtlpConfig:
    """Where spans go: OTLP/HTTP with the JSON encoding."""

    #: The URL spans are POSTed to (``.../v1/traces``).
    endpoint: str = setting(DEFAULT_OTLP_ENDPOINT, kind="custom", schema={"type": "string"},
                            default_text="`OTEL_EXPORTER_OTLP_*ENDPOINT`, else "
                                         f"`{DEFAULT_OTLP_ENDPOINT}`",
                            doc="collector URL; `/v1/traces` is added unless it ends so")
    #: ``k=v,k2=v2`` request headers (API keys) from an environment variable.
    headers: Secret | None = setting(None, kind="custom", yaml="headers_env",
                                     schema={"type": "string"},
                                     default_text="`OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`",
                                     doc="variable holding `k=v,k2=v2` request headers")
    compression: str = setting("none", choices=("none", "gzip"), doc="`gzip` to compress")
    #: Per export request.
    timeout: float = setting(10.0, kind="duration", doc="per export request")

    def header_pairs(self) -> list[tuple[str, str]]:
        return parse_key_values(self.headers.value) or [] if self.headers else []


@dataclass(frozen=True)
class TracingConfig:
    """The sidecar's own spans, exported over OTLP. Off by default: then no span is
    made and the exporter is not even imported."""

    enabled: bool = setting(False, kind="boolean",
                            doc="export the sidecar's own spans over OTLP/HTTP (JSON)")
    service_name: str = setting(DEFAULT_SERVICE_NAME, kind="custom", schema={"type": "string"},
                                default_text="`OTEL_SERVICE_NAME`, else "
                                             f"`{DEFAULT_SERVICE_NAME}`",
                                doc="the resource's `service.name`")
    #: Extra resource attributes (OTEL_RESOURCE_ATTRIBUTES merged in), e.g. k8s.pod.name.
    resource_attributes: tuple[tuple[str, str], ...] = setting(
        (), kind="custom", default_text="`OTEL_RESOURCE_ATTRIBUTES`",
        schema={"type": "object", "additionalProperties": {"type": ["string", "number",
                                                                    "boolean"]}},
        doc="extra resource attributes (merged over the variable's)")
    #: Share of the traces the sidecar starts itself that are recorded; a caller's
    #: sampled flag decides for its own traces. 1.0: export is opt-in, so whoever
    #: turned it on wants to see every trace (a collector can tail-sample).
    sample_ratio: float = setting(1.0, kind="number", minimum=0.0, maximum=1.0,
                                  doc="share of the traces the sidecar starts that are kept")
    #: Spans waiting for export; beyond it new spans are dropped (and counted).
    max_queue: int = setting(2048, kind="integer", minimum=1,
                             doc="spans waiting; more are dropped and counted")
    max_batch: int = setting(512, kind="custom", schema={"type": "integer", "minimum": 1},
                             doc="spans per export request (at most `max_queue`)")
    export_interval: float = setting(5.0, kind="duration", doc="how often spans are exported")
    otlp: OtlpConfig = setting(OtlpConfig(), kind="section", doc="where spans go")


#: ``version:``, the config format this sidecar reads (in the file, not in ``Config``).
CONFIG_VERSION = 1
VERSION_SETTING = Setting("config format version (the only one: 1)", "integer",
                          minimum=CONFIG_VERSION, maximum=CONFIG_VERSION)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = setting(ServerConfig(), kind="section", reload="restart",
                                   doc="the sidecar's own listeners")
    storage: StorageConfig = setting(StorageConfig(), kind="section", reload="restart",
                                     doc="where events, groups and keys are kept")
    logging: LoggingConfig = setting(LoggingConfig(), kind="section", reload="restart",
                                     doc="the sidecar's own log")
    integrations: dict[str, IntegrationConfig] = field(default_factory=dict, metadata=about(
        kind="custom", of=IntegrationConfig, reload="live", required=False,
        doc="upstream APIs the app calls, by name"))
    routes: tuple[RouteConfig, ...] = setting(
        (), kind="custom", of=RouteConfig, reload="live",
        doc="per-route overrides (first matching route wins)")
    webhooks: WebhooksConfig = setting(WebhooksConfig(), kind="section", reload="live",
                                       doc="verified, de-duplicated, durable webhooks")
    realtime: RealtimeConfig = setting(RealtimeConfig(), kind="section", reload="restart",
                                       doc="Publish, live Subscribe, WebSocket")
    reload: ReloadConfig = setting(ReloadConfig(), kind="section", reload="live",
                                   doc="hot reload")
    tracing: TracingConfig = setting(TracingConfig(), kind="section", reload="restart",
                                     doc="the sidecar's own spans over OTLP")

    def secrets(self) -> list[Secret]:
        """Every secret value in the config, for log redaction."""
        found: list[Secret] = []
        if self.server.grpc.api_token:
            found.append(self.server.grpc.api_token)
        found += self.storage.redis.url_secrets()
        for integration in self.integrations.values():
            found += integration.auth.secrets()
            if integration.signing is not None:
                found += integration.signing.secrets
        for source in self.webhooks.sources.values():
            found += source.secrets
        if self.realtime.websocket.jwt.hs256_secret:
            found.append(self.realtime.websocket.jwt.hs256_secret)
        otlp_headers = self.tracing.otlp.headers
        if otlp_headers is not None:
            # Each header value too: a log line would show one, not the whole list.
            found += [otlp_headers, *(Secret(otlp_headers.env, v)
                                      for _, v in self.tracing.otlp.header_pairs() if v)]
        return found


# The core policy types, declared as the file writes them. Their defaults are the
# policies' own, or those of the instance the enclosing field gives.
declare_policy(
    BackoffPolicy,
    initial=Setting("delay before the first retry", "duration"),
    multiplier=Setting("each delay is the previous one times this", "number",
                       minimum=1.0),
    maximum=Setting("longest delay", "duration", yaml="max"),
    jitter=Setting("`full` (a random delay up to the computed one) or `none`",
                   choices=("full", "none")),
)
declare_policy(
    BreakerPolicy,
    consecutive_failures=Setting("open after this many failures in a row (0 = off)",
                                 "integer", minimum=0),
    failure_rate_threshold=Setting("open at this failure share over the window "
                                   "(0 = off)", "number", yaml="failure_rate",
                                   minimum=0.0, maximum=1.0),
    slow_call_rate_threshold=Setting("open at this slow-call share (0 = off)",
                                     "number", yaml="slow_call_rate", minimum=0.0,
                                     maximum=1.0),
    slow_call_duration=Setting("a call slower than this is slow", "duration"),
    window=Setting("the rates are measured over this", "duration"),
    minimum_calls=Setting("calls the window needs before rates count", "integer",
                          minimum=1),
    open_duration=Setting("how long it stays open before probing", "duration"),
    half_open_probes=Setting("probe calls let through when half-open", "integer",
                             minimum=1),
    close_after=Setting("successful probes that close it", "integer", minimum=1),
    probe_timeout=Setting("an unsettled probe is presumed lost after this",
                          "duration"),
)
declare_policy(
    RateLimitPolicy,
    rate=Setting("tokens (calls) per second", "number", minimum=0.001, unit="1/s"),
    burst=Setting("bucket size", "integer", minimum=1, default_text="`rate`"),
    on_limit=Setting("`wait` for a token, or `reject` at once",
                     choices=("wait", "reject")),
)
declare_policy(
    RetryBudgetPolicy,
    ratio=Setting("retries may add this share of the calls", "number", minimum=0.0,
                  maximum=10.0),
    min_retries_per_second=Setting("retries per second allowed regardless", "number",
                                   minimum=0.0),
    window=Setting("the ratio is measured over this", "duration"),
)

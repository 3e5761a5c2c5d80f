"""The validated configuration: frozen dataclasses with named defaults.

Built only by ``sidecar.config.load``; everything else reads these objects.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

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

    cert_file: str
    key_file: str
    #: gRPC only: clients must present a certificate signed by this CA (mTLS).
    client_ca_file: str = ""


@dataclass(frozen=True)
class GrpcListenerConfig:
    #: ``host:port`` or ``unix:///path/to/socket``; port 0 picks a free port.
    address: str = DEFAULT_GRPC_ADDRESS
    max_message_bytes: int = DEFAULT_GRPC_MAX_MESSAGE_BYTES
    #: When set, callers must send ``authorization: Bearer <token>``.
    api_token: Secret | None = None
    reflection: bool = True
    #: None: plaintext (the default, for a loopback-only listener).
    tls: ServerTlsConfig | None = None


@dataclass(frozen=True)
class HttpListenerConfig:
    host: str
    port: int
    tls: ServerTlsConfig | None = None


@dataclass(frozen=True)
class EdgeConfig:
    host: str = DEFAULT_EDGE_HOST
    port: int = DEFAULT_EDGE_PORT
    max_body_bytes: int = DEFAULT_EDGE_MAX_BODY_BYTES
    tls: ServerTlsConfig | None = None
    header_timeout: float = DEFAULT_EDGE_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_EDGE_BODY_TIMEOUT


@dataclass(frozen=True)
class ServerConfig:
    grpc: GrpcListenerConfig = GrpcListenerConfig()
    edge: EdgeConfig = EdgeConfig()
    admin: HttpListenerConfig = HttpListenerConfig(DEFAULT_ADMIN_HOST, DEFAULT_ADMIN_PORT)
    #: Seconds in-flight work may take to finish after SIGTERM.
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE


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
    master_name: str = ""
    #: The environment variable holding the sentinels' own password (``requirepass``
    #: in sentinel.conf); empty: the sentinels ask for none.
    password_env: str = ""
    password: Secret | None = None


@dataclass(frozen=True)
class RedisConfig:
    #: The environment variable holding the URL (``redis://``, ``rediss://`` for
    #: TLS, ``unix://``); it may carry a password, so it is a secret. In cluster
    #: mode a comma-separated list of seed nodes, in sentinel mode of sentinels.
    url_env: str = DEFAULT_REDIS_URL_ENV
    url: Secret | None = None
    #: One of ``REDIS_MODES``.
    mode: str = "standalone"
    key_prefix: str = DEFAULT_REDIS_KEY_PREFIX
    socket_timeout: float = DEFAULT_REDIS_SOCKET_TIMEOUT
    sentinel: RedisSentinelConfig = RedisSentinelConfig()

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
    backend: str = "sqlite"
    data_dir: str = DEFAULT_DATA_DIR
    redis: RedisConfig = RedisConfig()


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    #: ``json`` (one object per line, for log pipelines) or ``text``.
    format: str = "json"


@dataclass(frozen=True)
class TimeoutsConfig:
    """Seconds. ``attempt`` bounds one upstream try, ``total`` the whole call."""

    connect: float = DEFAULT_CONNECT_TIMEOUT
    attempt: float = DEFAULT_ATTEMPT_TIMEOUT
    total: float = DEFAULT_TOTAL_TIMEOUT


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

    token_url: str
    client_id: str
    #: The variable ``client_id`` was read from; empty: it was given in the file.
    client_id_env: str = ""
    scopes: tuple[str, ...] = ()
    audience: str = ""
    #: Extra form fields of the token request (Azure's ``resource``, ...).
    params: tuple[tuple[str, str], ...] = ()
    client_auth: str = "basic"
    refresh_before: float = DEFAULT_TOKEN_REFRESH_BEFORE
    default_lifetime: float = DEFAULT_TOKEN_LIFETIME
    #: Seconds for one token request (the call's deadline bounds the wait too).
    timeout: float = DEFAULT_TOKEN_TIMEOUT


@dataclass(frozen=True)
class AuthConfig:
    #: One of ``AUTH_TYPES``: ``bearer`` (Authorization: Bearer), ``api_key`` (a named
    #: header), ``basic`` (HTTP Basic) or ``oauth2_client_credentials``.
    type: str = "none"
    header: str = ""
    #: The token, API key, Basic password or OAuth2 client secret.
    secret: Secret | None = None
    #: ``basic``: the user name, and the variable it was read from (empty: from the file).
    username: str = ""
    username_env: str = ""
    oauth2: OAuth2Config | None = None

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
    version: str = ""
    #: ``header`` (sent in ``header``) or ``path`` (prefixed to the path).
    location: str = "header"
    header: str = "Api-Version"


@dataclass(frozen=True)
class TlsConfig:
    verify: bool = True
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""


#: Retried by default: rate limited, and the gateway answers that mean "the
#: request did not reach a healthy server" (502/503/504). 500 is not: the
#: upstream may have acted on the request.
DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_RETRY_ERRORS = frozenset({"connect", "reset", "timeout"})
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BULKHEAD = 100
#: Stripe keeps idempotency keys 24 hours; the IETF draft suggests the same.
DEFAULT_IDEMPOTENCY_RETENTION = 24 * 3600.0


@dataclass(frozen=True)
class RetryConfig:
    #: Attempts in all, the first included (1 = never retry).
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: BackoffPolicy = BackoffPolicy()
    on_status: frozenset[int] = DEFAULT_RETRY_STATUSES
    #: Transport error kinds: connect, reset, timeout, tls, protocol.
    on_errors: frozenset[str] = DEFAULT_RETRY_ERRORS
    #: Wait what Retry-After / RateLimit-Reset say when it fits the deadline.
    honor_retry_after: bool = True


@dataclass(frozen=True)
class BreakerConfig:
    enabled: bool = True
    policy: BreakerPolicy = BreakerPolicy()
    #: Upstream statuses that count as failures (transport errors always do).
    failure_statuses: frozenset[int] = frozenset(range(500, 600))


@dataclass(frozen=True)
class BulkheadConfig:
    #: Upstream requests in flight at once for the integration.
    max_concurrent: int = DEFAULT_BULKHEAD
    #: Seconds a call may wait for a free slot; None waits until its deadline.
    max_wait: float | None = None


@dataclass(frozen=True)
class IdempotencyConfig:
    header: str = "Idempotency-Key"
    #: Seconds a completed key is remembered.
    retention: float = DEFAULT_IDEMPOTENCY_RETENTION


@dataclass(frozen=True)
class FallbackConfig:
    #: Answer a GET from the last good response while the breaker is open.
    enabled: bool = False
    #: Seconds a last good response may be served for.
    max_age: float = 3600.0
    #: Responses remembered per integration (least recently used dropped).
    max_entries: int = 256


@dataclass(frozen=True)
class IntegrationConfig:
    name: str
    base_url: str
    allow_insecure_http: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    auth: AuthConfig = AuthConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    api_version: ApiVersionConfig = ApiVersionConfig()
    tls: TlsConfig = TlsConfig()
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    retry: RetryConfig = RetryConfig()
    #: None: no budget (not recommended).
    retry_budget: RetryBudgetPolicy | None = RetryBudgetPolicy()
    circuit_breaker: BreakerConfig = BreakerConfig()
    #: None: no local rate limit.
    rate_limit: RateLimitPolicy | None = None
    bulkhead: BulkheadConfig = BulkheadConfig()
    idempotency: IdempotencyConfig = IdempotencyConfig()
    fallback: FallbackConfig = FallbackConfig()


@dataclass(frozen=True)
class RouteConfig:
    """Per-route overrides for one integration, matched by method and path."""

    name: str
    integration: str
    #: Upper-case HTTP method, or ``*`` for any.
    method: str
    #: Path pattern relative to the base URL; ``*`` matches one segment, a
    #: trailing ``**`` any rest.
    path: str
    #: Each override is None when the route inherits the integration's.
    timeouts: TimeoutsConfig | None = None
    retry: RetryConfig | None = None
    #: A route with its own breaker trips independently of the integration's.
    circuit_breaker: BreakerConfig | None = None
    #: A route with its own rate limit has its own bucket.
    rate_limit: RateLimitPolicy | None = None
    fallback: FallbackConfig | None = None
    #: ``rate_limit: {enabled: false}``: the route's calls are not rate limited, whatever
    #: the integration's limit (``rate_limit`` is then None).
    unlimited: bool = False


WEBHOOK_SCHEMES = ("standard_webhooks", "stripe", "github", "shopify", "slack", "generic_hmac")
#: Providers retry for up to about three days (Stripe); remembering event ids
#: for a week covers every provider's redelivery window.
DEFAULT_WEBHOOK_RETENTION = 7 * 24 * 3600.0


@dataclass(frozen=True)
class WebhookSourceConfig:
    """One provider account sending to ``POST /webhooks/<name>``."""

    name: str
    scheme: str
    #: Every active secret (rotation: any may match), from environment variables.
    secrets: tuple[Secret, ...]
    #: Seconds a signed timestamp may be old (or ahead).
    tolerance: float = 300.0
    max_body_bytes: int = DEFAULT_EDGE_MAX_BODY_BYTES
    #: Topic the events go to; default ``webhooks.<name>``.
    topic: str = ""
    #: Per-source request rate on the edge; None: unlimited.
    rate_limit: RateLimitPolicy | None = RateLimitPolicy(rate=100.0, burst=200)
    # generic_hmac
    algorithm: str = "sha256"
    signature_header: str = ""
    encoding: str = "hex"
    prefix: str = ""
    signed_content: str = "{body}"
    timestamp_header: str = ""
    id_header: str = ""
    # event id / type extraction overrides: a header, or a dotted JSON path
    event_id_header: str = ""
    event_id_path: str = ""
    event_type_header: str = ""
    event_type_path: str = ""

    @property
    def topic_name(self) -> str:
        return self.topic or f"webhooks.{self.name}"


@dataclass(frozen=True)
class DeliveryConfig:
    """Durable consumer groups: how events reach the app and come back."""

    ack_timeout: float = 30.0
    max_attempts: int = 10
    #: Delay before redelivering an event acked with "retry" (grows per attempt).
    backoff: BackoffPolicy = BackoffPolicy(initial=1.0, multiplier=2.0, maximum=300.0,
                                           jitter="none")
    #: Unacked events per member when the subscriber does not ask.
    default_in_flight: int = 10
    max_in_flight: int = 100
    #: Seconds between heartbeats on an idle stream.
    heartbeat: float = 15.0


@dataclass(frozen=True)
class WebhooksConfig:
    sources: dict[str, WebhookSourceConfig] = field(default_factory=dict)
    delivery: DeliveryConfig = DeliveryConfig()
    #: How long event ids are remembered for de-duplication, and events kept.
    retention: float = DEFAULT_WEBHOOK_RETENTION
    #: Requests per client IP per second on the webhook edge; None: unlimited.
    per_ip_rate_limit: RateLimitPolicy | None = RateLimitPolicy(rate=50.0, burst=100)
    #: Webhook requests handled at once; more get 503 (memory stays bounded).
    max_concurrent: int = 256
    max_headers: int = 100


@dataclass(frozen=True)
class JwtConfig:
    """How WebSocket clients authenticate."""

    #: Allowed algorithms; a token with any other (``none`` included) is refused.
    algorithms: tuple[str, ...] = ("HS256",)
    hs256_secret: Secret | None = None
    #: PEM public key for RS256 (the file's contents).
    rs256_public_key: str = ""
    #: The file it was read from, resolved against the config file's directory
    #: (``config show`` prints this path, not the key).
    rs256_public_key_file: str = ""
    audience: str = ""
    issuer: str = ""
    #: Claim listing the user's roles (joined as ``role:<r>`` rooms).
    roles_claim: str = "roles"
    #: Claim listing further topics the client may subscribe to.
    topics_claim: str = "topics"
    #: Seconds of clock skew tolerated on exp/nbf.
    leeway: float = 5.0


@dataclass(frozen=True)
class WebSocketConfig:
    #: Defaults to on when ``jwt`` keys are configured.
    enabled: bool = False
    jwt: JwtConfig = JwtConfig()
    #: Allowed ``Origin`` values; empty allows any (non-browser clients send none).
    allowed_origins: tuple[str, ...] = ()
    #: Seconds between server pings; a peer silent for two intervals is closed.
    ping_interval: float = 20.0
    max_connections: int = 10_000
    #: Largest client frame (subscribe requests are small).
    max_message_bytes: int = 64 * 1024


@dataclass(frozen=True)
class RealtimeConfig:
    #: Events each subscriber may have queued before the slow-consumer policy acts.
    queue_size: int = 1000
    #: ``disconnect`` or ``drop_oldest`` (delivers a gap marker).
    slow_consumer: str = "disconnect"
    heartbeat: float = 15.0
    max_data_bytes: int = 1024 * 1024
    idempotency_retention: float = 24 * 3600.0
    #: The log keeps at most this many events per topic ...
    max_events_per_topic: int = 10_000
    #: ... and none older than this (seconds).
    max_event_age: float = 24 * 3600.0
    #: SQLite: Publish answers only after an fsync (safe from power loss). Off: once
    #: the event is written (safe from a crash or restart of the sidecar), no fsync.
    durable_publish: bool = False
    websocket: WebSocketConfig = WebSocketConfig()


#: Often enough that a rotated certificate or edited ConfigMap is picked up
#: within seconds; a stat() of a few files costs nothing.
DEFAULT_WATCH_INTERVAL = 5.0


@dataclass(frozen=True)
class ReloadConfig:
    """Hot reload: SIGHUP always; optionally also when the watched files change."""

    #: Poll the config file and the listeners' TLS files and reload on a change.
    watch: bool = False
    watch_interval: float = DEFAULT_WATCH_INTERVAL


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
    endpoint: str = DEFAULT_OTLP_ENDPOINT
    #: ``k=v,k2=v2`` request headers (API keys) from an environment variable.
    headers: Secret | None = None
    compression: str = "none"
    #: Per export request.
    timeout: float = 10.0

    def header_pairs(self) -> list[tuple[str, str]]:
        return parse_key_values(self.headers.value) or [] if self.headers else []


@dataclass(frozen=True)
class TracingConfig:
    """The sidecar's own spans, exported over OTLP. Off by default: then no span is
    made and the exporter is not even imported."""

    enabled: bool = False
    service_name: str = DEFAULT_SERVICE_NAME
    #: Extra resource attributes (OTEL_RESOURCE_ATTRIBUTES merged in), e.g. k8s.pod.name.
    resource_attributes: tuple[tuple[str, str], ...] = ()
    #: Share of the traces the sidecar starts itself that are recorded; a caller's
    #: sampled flag decides for its own traces. 1.0: export is opt-in, so whoever
    #: turned it on wants to see every trace (a collector can tail-sample).
    sample_ratio: float = 1.0
    #: Spans waiting for export; beyond it new spans are dropped (and counted).
    max_queue: int = 2048
    max_batch: int = 512
    export_interval: float = 5.0
    otlp: OtlpConfig = OtlpConfig()


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    logging: LoggingConfig = LoggingConfig()
    integrations: dict[str, IntegrationConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    webhooks: WebhooksConfig = WebhooksConfig()
    realtime: RealtimeConfig = RealtimeConfig()
    reload: ReloadConfig = ReloadConfig()
    tracing: TracingConfig = TracingConfig()

    def secrets(self) -> list[Secret]:
        """Every secret value in the config, for log redaction."""
        found: list[Secret] = []
        if self.server.grpc.api_token:
            found.append(self.server.grpc.api_token)
        found += self.storage.redis.url_secrets()
        for integration in self.integrations.values():
            found += integration.auth.secrets()
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

"""``config show`` prints the effective config in the file's own schema: it reads back
as the same config, through the real CLI too, and holds no secret value."""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.config import Config, dump_redacted, load_config, parse_config
from sidecar.config.dump import to_file_schema
from tests.certs import Pki, make_pki, openssl_available

ROOT = Path(__file__).parent.parent
EXAMPLES = [*sorted((ROOT / "deploy" / "config").glob("*.yaml")),
            ROOT / "deploy" / "kubernetes" / "base" / "sidecar.yaml"]
#: The variables the example configs name in their *_env fields.
EXAMPLE_ENV = {name: f"example-{name.lower()}-value" for name in (
    "PAYMENTS_API_TOKEN", "SIDECAR_API_TOKEN", "STRIPE_WEBHOOK_SECRET", "SIDECAR_JWT_SECRET")}

REDIS_PASSWORD = "r3dis-Pa55-Q7xv"
REDIS_URL = f"redis://:{REDIS_PASSWORD}@redis-q7.internal:6391/2"
SECRETS = {
    "SC_API_TOKEN": "grpc-api-token-5Hq2",
    "SC_REDIS": REDIS_URL,
    "SC_SENTINEL_PASSWORD": "sentinel-pass-2Fm8",
    "PAY_TOKEN": "sk_live_pay-token-8Kd3",
    "MAIL_KEY": "mail-api-key-2Lw9",
    "STRIPE_OLD": "whsec_stripe-old-4Nc1",
    "STRIPE_NEW": "whsec_stripe-new-7Pb6",
    "GH_SECRET": "github-secret-3Rz8",
    "SHOP_SECRET": "shopify-secret-6Tm4",
    "SLACK_SECRET": "slack-secret-9Vy5",
    "SW_SECRET": "whsec_" + base64.b64encode(b"standard-webhooks-key-1Xj7").decode(),
    "PARTNER_SECRET": "partner-hmac-secret-0Ga2",
    "JWT_SECRET": "jwt-hs256-secret-value-5Ue3",
    "OTLP_HEADERS": "x-honeycomb-team=otlp-key-8Wq1,x-tenant=otlp-tenant-2Fs6",
    "SMS_PASSWORD": "sms-basic-password-4Hd7",
    "MAILGUN_PASSWORD": "mailgun-basic-password-1Jx3",
    "GRAPH_SECRET": "graph-client-secret-6Rk2",
    "CRM_SECRET": "crm-client-secret-9Bn5",
    "OUT_SIGNING": "whsec_" + base64.b64encode(b"outbound-signing-key-3Qp8").decode(),
}
#: Not secrets (shown by their variable name all the same).
PLAIN_ENV = {"SMS_ACCOUNT": "AC-sms-account-17", "GRAPH_CLIENT_ID": "graph-client-3f2a"}
ENV = {**SECRETS, **PLAIN_ENV}


def full_config() -> dict[str, Any]:
    """Every section set, every model field away from its default somewhere; file paths
    relative to the config file's directory (``files``)."""
    rate = {"rate": 7.5, "burst": 9, "on_limit": "reject"}
    return {
        "version": 1,
        "server": {
            "grpc": {"address": "127.0.0.1:6001", "max_message_bytes": 8 * 1024 * 1024,
                     "api_token_env": "SC_API_TOKEN", "reflection": False,
                     "tls": {"cert_file": "pki/server.crt", "key_file": "pki/server.key",
                             "client_ca_file": "pki/ca.crt"}},
            "edge": {"host": "127.0.0.2", "port": 8181, "max_body_bytes": 2 * 1024 * 1024,
                     "header_timeout": "7s", "body_timeout": "45s",
                     "tls": {"cert_file": "pki/server.crt", "key_file": "pki/server.key"}},
            "admin": {"host": "127.0.0.3", "port": 9565,
                      "tls": {"enabled": True, "cert_file": "pki/server.crt",
                              "key_file": "pki/server.key"}},
            "shutdown_grace": "2500ms",
        },
        "storage": {"backend": "redis", "data_dir": "/srv/sidecar-data",
                    "redis": {"url_env": "SC_REDIS", "mode": "sentinel", "key_prefix": "{shop}:",
                              "socket_timeout": 0.3,
                              "sentinel": {"master_name": "shop-primary",
                                           "password_env": "SC_SENTINEL_PASSWORD"}}},
        "logging": {"level": "debug", "format": "text"},
        "reload": {"watch": True, "watch_interval": "250ms"},
        "integrations": {
            "payments": {
                "base_url": "http://Pay.example:8443/v2/",
                "allow_insecure_http": True,
                # Values YAML would read as something else unless quoted.
                "headers": {"Accept": "application/json", "X-Flag": "yes", "X-Num": "0123",
                            "X-Note": "a: b #c", "X-Name": "café"},
                "auth": {"type": "bearer", "token_env": "PAY_TOKEN"},
                "timeouts": {"connect": "1500ms", "attempt": "4s", "total": "1m"},
                "api_version": {"version": "2024-06-01", "location": "path",
                                "header": "X-Version"},
                "tls": {"verify": False, "ca_file": "pki/ca.crt",
                        "client_cert_file": "pki/client.crt",
                        "client_key_file": "pki/client.key"},
                "max_request_bytes": 1000, "max_response_bytes": 2000,
                "retry": {"max_attempts": 5,
                          "backoff": {"initial": "50ms", "multiplier": 1.5, "max": "3s",
                                      "jitter": "none"},
                          "on_status": ["4xx", 503, "5xx"], "on_errors": ["tls", "protocol"],
                          "honor_retry_after": False},
                "retry_budget": {"ratio": 0.35, "min_retries_per_second": 2.5,
                                 "window": "20s"},
                "circuit_breaker": {"consecutive_failures": 0, "failure_rate": 0.25,
                                    "slow_call_rate": 0.75, "slow_call_duration": "2s",
                                    "window": "90s", "minimum_calls": 4, "open_duration": "45s",
                                    "half_open_probes": 2, "close_after": 5,
                                    "probe_timeout": "7s", "failure_statuses": [500, 503]},
                "rate_limit": rate,
                "bulkhead": {"max_concurrent": 12, "max_wait": "0s"},
                "idempotency": {"header": "X-Idem", "retention": "36h"},
                "fallback": {"enabled": True, "max_age": "10m", "max_entries": 17},
                "queue": {"schedule": ["10s", "90m", "1d"], "jitter": 0.5, "max_age": "2d",
                          "concurrency": 3, "retryable_4xx": [408, 429]},
                "signing": {"secrets_env": ["OUT_SIGNING"]},
            },
            "mail": {
                "base_url": "https://mail.example",
                "auth": {"type": "api_key", "header": "X-Api-Key", "value_env": "MAIL_KEY"},
                "retry": {"on_status": [], "on_errors": []},
                "retry_budget": {"enabled": False},
                "circuit_breaker": {"enabled": False},
                "bulkhead": {"max_wait": 0.25},
            },
            "plain": {"base_url": "https://plain.example", "rate_limit": {"enabled": False}},
            "sms": {"base_url": "https://sms.example",
                    "auth": {"type": "basic", "username_env": "SMS_ACCOUNT",
                             "password_env": "SMS_PASSWORD"}},
            "mailgun": {"base_url": "https://mailgun.example",
                        "auth": {"type": "basic", "username": "api",
                                 "password_env": "MAILGUN_PASSWORD"}},
            "graph": {"base_url": "https://graph.example",
                      "auth": {"type": "oauth2_client_credentials",
                               "token_url": "https://login.example/tenant/oauth2/token?x=1",
                               "client_id_env": "GRAPH_CLIENT_ID",
                               "client_secret_env": "GRAPH_SECRET",
                               "scopes": ["https://graph.example/.default", "mail.send"],
                               "audience": "https://graph.example/", "client_auth": "body",
                               "params": {"resource": "https://graph.example", "n": 7},
                               "refresh_before": "2m", "default_lifetime": "30m",
                               "timeout": "2500ms"}},
            "crm": {"base_url": "https://crm.example",
                    "auth": {"type": "oauth2_client_credentials",
                             "token_url": "https://crm.example/oauth/token",
                             "client_id": "crm-client", "client_secret_env": "CRM_SECRET"}},
        },
        "routes": [
            {"integration": "payments", "name": "charge", "method": "post",
             "path": "charges/*/capture",
             "timeouts": {"attempt": "2s", "total": "9s"},
             "retry": {"max_attempts": 1},
             "circuit_breaker": {"consecutive_failures": 2},
             "rate_limit": {"rate": 1, "burst": 1},
             "fallback": {"enabled": False}},
            {"integration": "mail", "name": "any", "path": "/**",
             "rate_limit": {"rate": 3}},
            {"integration": "payments", "name": "health", "method": "get", "path": "health",
             "rate_limit": {"enabled": False}},
        ],
        "webhooks": {
            "sources": {
                "stripe": {"scheme": "stripe", "secrets_env": ["STRIPE_OLD", "STRIPE_NEW"],
                           "tolerance": "10m", "max_body_bytes": 4096,
                           "topic": "payments.stripe", "rate_limit": rate,
                           "event_id": {"path": "data.object.id"}},
                "github": {"scheme": "github", "secrets_env": "GH_SECRET",
                           "rate_limit": {"enabled": False},
                           "event_type": {"header": "X-GitHub-Event"}},
                "shopify": {"scheme": "shopify", "secrets_env": ["SHOP_SECRET"],
                            "event_id": {"header": "X-Shopify-Webhook-Id"},
                            "event_type": {"path": "topic"},
                            # Read for every scheme, so it must show when set.
                            "prefix": "ignored="},
                "slack": {"scheme": "slack", "secrets_env": ["SLACK_SECRET"]},
                "standard": {"scheme": "standard_webhooks", "secrets_env": ["SW_SECRET"]},
                "partner": {"scheme": "generic_hmac", "secrets_env": ["PARTNER_SECRET"],
                            "algorithm": "sha512", "signature_header": "X-Signature",
                            "encoding": "base64", "prefix": "v1=",
                            "signed_content": "{timestamp}\n{id}.{body}",
                            "timestamp_header": "X-Timestamp", "id_header": "X-Event-Id"},
            },
            "delivery": {"ack_timeout": "45s", "max_attempts": 4,
                         "backoff": {"initial": "2s", "multiplier": 3, "max": "10m",
                                     "jitter": "full"},
                         "default_in_flight": 3, "max_in_flight": 30, "heartbeat": "20s"},
            "retention": "3d",
            "per_ip_rate_limit": {"rate": 20, "burst": 40, "on_limit": "reject"},
            "max_concurrent": 64,
            "max_headers": 50,
        },
        "realtime": {
            "queue_size": 50, "slow_consumer": "drop_oldest", "heartbeat": "5s",
            "max_data_bytes": 4096, "idempotency_retention": "2h",
            "max_events_per_topic": 77, "max_event_age": "90m", "durable_publish": True,
            "websocket": {
                "jwt": {"algorithms": ["HS384", "RS256"], "hs256_secret_env": "JWT_SECRET",
                        "rs256_public_key_file": "jwt.pub.pem", "audience": "my-app",
                        "issuer": "https://issuer.example", "roles_claim": "grp",
                        "topics_claim": "chan", "leeway": "0s"},
                "allowed_origins": ["https://app.example/", "http://localhost:3000"],
                "ping_interval": "7s", "max_connections": 9, "max_message_bytes": 2048,
            },
        },
        "tracing": {
            "enabled": True, "service_name": "checkout-sidecar",
            "resource_attributes": {"k8s.pod.name": "pod-7", "deployment.environment": "qa"},
            "sample_ratio": 0.25, "max_queue": 100, "max_batch": 10, "export_interval": "2s",
            "otlp": {"endpoint": "https://otel.example:4318", "headers_env": "OTLP_HEADERS",
                     "compression": "gzip", "timeout": "3s"},
        },
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config directory with the certificates and the JWT key ``full_config`` names."""
    if not openssl_available():
        pytest.skip("the openssl command is needed for TLS files")
    directory = tmp_path_factory.mktemp("conf")
    pki: Pki = make_pki(directory / "pki")
    assert pki.ca_cert.parent == directory / "pki"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "jwt.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return directory


@pytest.fixture(scope="module")
def full(files: Path) -> Config:
    return parse_config(full_config(), ENV, base_dir=files)


def reparse(text: str, env: dict[str, str], base_dir: Path) -> Config:
    return parse_config(yaml.safe_load(text), env, base_dir=base_dir)


def defaulted_fields(config: Config) -> set[str]:
    """``Class.field`` of every model field that has its default in each instance in ``config``."""
    changed: dict[str, bool] = {}

    def walk(value: object) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                current = getattr(value, f.name)
                if f.default is not dataclasses.MISSING:
                    key = f"{type(value).__name__}.{f.name}"
                    changed[key] = changed.get(key, False) or current != f.default
                walk(current)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, tuple | list):
            for item in value:
                walk(item)

    walk(config)
    return {key for key, was_changed in changed.items() if not was_changed}


def test_the_full_config_leaves_no_model_field_at_its_default(full: Config) -> None:
    # Otherwise the round trip below would not show that the field is written.
    assert defaulted_fields(full) == set()


def test_every_section_reads_back_the_same(full: Config, tmp_path: Path) -> None:
    text = dump_redacted(full)
    # Another directory: the file paths in the dump are already resolved.
    assert reparse(text, ENV, tmp_path) == full


def test_the_yaml_is_exactly_the_file_schema(full: Config) -> None:
    """Quoting, a line break in a template and non-ASCII survive the hand-written YAML."""
    shown = yaml.safe_load(dump_redacted(full))
    assert shown == to_file_schema(full)
    assert shown["integrations"]["payments"]["headers"]["X-Flag"] == "yes"
    assert shown["webhooks"]["sources"]["partner"]["signed_content"] == "{timestamp}\n{id}.{body}"


def test_keys_durations_and_statuses_are_written_as_the_file_reads_them(full: Config) -> None:
    shown = yaml.safe_load(dump_redacted(full))
    grpc = shown["server"]["grpc"]
    assert grpc["api_token_env"] == "SC_API_TOKEN" and "api_token" not in grpc
    assert shown["storage"]["redis"] == {
        "url_env": "SC_REDIS", "mode": "sentinel", "key_prefix": "{shop}:",
        "socket_timeout": "300ms",
        "sentinel": {"master_name": "shop-primary", "password_env": "SC_SENTINEL_PASSWORD"}}
    pay = shown["integrations"]["payments"]
    assert pay["auth"] == {"type": "bearer", "token_env": "PAY_TOKEN"}
    assert shown["integrations"]["mail"]["auth"] == {
        "type": "api_key", "header": "X-Api-Key", "value_env": "MAIL_KEY"}
    assert pay["retry"]["backoff"] == {"initial": "50ms", "multiplier": 1.5, "max": "3s",
                                       "jitter": "none"}
    assert pay["retry"]["on_status"] == ["4xx", "5xx"]
    assert pay["circuit_breaker"]["failure_statuses"] == [500, 503]
    assert pay["timeouts"] == {"connect": "1500ms", "attempt": "4s", "total": "1m"}
    assert shown["webhooks"]["retention"] == "3d"
    assert shown["realtime"]["idempotency_retention"] == "2h"
    assert shown["integrations"]["plain"]["rate_limit"] == {"enabled": False}
    assert shown["integrations"]["plain"]["circuit_breaker"]["failure_statuses"] == ["5xx"]
    # generic_hmac settings only where the scheme is generic_hmac or they are set.
    sources = shown["webhooks"]["sources"]
    assert "algorithm" in sources["partner"] and "algorithm" not in sources["stripe"]
    assert sources["shopify"]["prefix"] == "ignored="
    assert sources["github"]["secrets_env"] == ["GH_SECRET"]
    routes = shown["routes"]
    assert (routes[0]["method"], routes[0]["path"]) == ("POST", "/charges/*/capture")
    assert set(routes[1]) == {"integration", "name", "method", "path", "rate_limit"}
    assert routes[2]["rate_limit"] == {"enabled": False}  # not the same as inheriting
    assert shown["tracing"]["otlp"]["endpoint"] == "https://otel.example:4318/v1/traces"
    assert shown["tracing"]["otlp"]["headers_env"] == "OTLP_HEADERS"
    integrations = shown["integrations"]
    assert integrations["sms"]["auth"] == {"type": "basic", "username_env": "SMS_ACCOUNT",
                                           "password_env": "SMS_PASSWORD"}
    assert integrations["mailgun"]["auth"]["username"] == "api"
    graph = integrations["graph"]["auth"]
    assert graph["client_id_env"] == "GRAPH_CLIENT_ID" and "client_id" not in graph
    assert graph["client_secret_env"] == "GRAPH_SECRET" and "client_secret" not in graph
    assert (graph["refresh_before"], graph["default_lifetime"], graph["timeout"]) == (
        "2m", "30m", "2500ms")
    assert graph["params"] == {"resource": "https://graph.example", "n": "7"}
    assert integrations["crm"]["auth"]["client_id"] == "crm-client"


def test_no_secret_value_and_nothing_of_the_redis_url(full: Config) -> None:
    text = dump_redacted(full, SECRETS)
    for value in [*SECRETS.values(), REDIS_PASSWORD, "redis-q7", "6391"]:
        assert value not in text
    assert "url_env: SC_REDIS" in text


@pytest.mark.parametrize("example", [None, *EXAMPLES],
                         ids=lambda p: str(p.relative_to(ROOT)) if p else "defaults")
def test_example_configs_read_back_the_same(example: Path | None, tmp_path: Path) -> None:
    config = load_config(example, EXAMPLE_ENV)
    text = dump_redacted(config, EXAMPLE_ENV)
    assert reparse(text, EXAMPLE_ENV, tmp_path) == config
    for value in EXAMPLE_ENV.values():
        assert value not in text


def test_environment_overrides_are_marked_and_written_in(files: Path, tmp_path: Path) -> None:
    env = {**ENV, "SIDECAR_ADMIN_PORT": "9999", "SIDECAR_LOG_LEVEL": "warning"}
    config = parse_config(full_config(), env, base_dir=files)
    assert (config.server.admin.port, config.logging.level) == (9999, "warning")
    text = dump_redacted(config, env)
    assert "    port: 9999  # from SIDECAR_ADMIN_PORT\n" in text
    assert "  level: warning  # from SIDECAR_LOG_LEVEL\n" in text
    # The values are in the file now: it reads back the same without the overrides.
    assert reparse(text, ENV, tmp_path) == config


def test_cli_show_then_check_with_the_shown_file(files: Path, tmp_path: Path) -> None:
    source = files / "sidecar.yaml"
    source.write_text(yaml.safe_dump(full_config()), encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SIDECAR_NO_UVLOOP": "1",
           **ENV, "SIDECAR_EDGE_PORT": "8282"}
    show = subprocess.run([sys.executable, "-m", "sidecar", "config", "show", "-c", str(source)],
                          capture_output=True, text=True, env=env, check=True, cwd=tmp_path)
    for value in [*SECRETS.values(), REDIS_PASSWORD, "redis-q7"]:
        assert value not in show.stdout + show.stderr
    assert "port: 8282  # from SIDECAR_EDGE_PORT" in show.stdout
    shown = tmp_path / "shown.yaml"
    shown.write_text(show.stdout, encoding="utf-8")
    check = subprocess.run([sys.executable, "-m", "sidecar", "config", "check", "-c", str(shown)],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout == "configuration OK: 7 integration(s), 3 route(s)\n"
    assert load_config(shown, env) == load_config(source, env)

"""Configuration: validation names the field and the reason; secrets never leak."""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigError, dump_redacted, load_config, parse_config
from sidecar.logs import MAX_FIELD_CHARS, JsonFormatter, SecretScrubber, TextFormatter
from tests.fuzzing import examples

SECRET = "sk_live_51Hc0nfigSECRETvalue"
GOOD = {
    "integrations": {
        "payments": {
            "base_url": "https://api.payments.example/v1",
            "auth": {"type": "bearer", "token_env": "PAYMENTS_TOKEN"},
            "timeouts": {"connect": "1s", "attempt": "3s", "total": "10s"},
        },
        "email": {
            "base_url": "https://mail.example",
            "auth": {"type": "api_key", "header": "X-Api-Key", "value_env": "EMAIL_KEY"},
        },
    },
    "routes": [
        {"integration": "payments", "name": "create_charge", "method": "POST",
         "path": "/charges"},
    ],
}
ENV = {"PAYMENTS_TOKEN": SECRET, "EMAIL_KEY": "email-key-value-123"}


def problems(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, ENV if env is None else env)
    return [str(p) for p in info.value.problems]


def with_integration(**fields: object) -> dict[str, Any]:
    body = {"base_url": "https://api.example.com", **fields}
    return {"integrations": {"svc": body}}


def test_good_config_parses_with_defaults() -> None:
    cfg = parse_config(GOOD, ENV)
    assert cfg.server.grpc.address == "127.0.0.1:50051"
    assert (cfg.server.edge.host, cfg.server.edge.port) == ("0.0.0.0", 8080)
    assert (cfg.server.admin.host, cfg.server.admin.port) == ("0.0.0.0", 9464)
    assert cfg.storage.backend == "sqlite"
    pay = cfg.integrations["payments"]
    assert pay.timeouts.attempt == 3.0 and pay.timeouts.total == 10.0
    assert pay.auth.secret is not None and pay.auth.secret.value == SECRET
    assert cfg.routes[0].integration == "payments" and cfg.routes[0].method == "POST"


def test_empty_file_means_defaults() -> None:
    cfg = parse_config(None, {})
    assert cfg.integrations == {} and cfg.server.shutdown_grace == 15.0


def test_unknown_integration_in_route_names_route_and_known_names() -> None:
    raw = {**GOOD, "routes": [{"integration": "paymnts", "name": "x"}]}
    assert problems(raw) == [
        "routes[0].integration: unknown integration 'paymnts' (known: email, payments)"
    ]


@pytest.mark.parametrize("value", ["-1s", -2, "-500ms"])
def test_negative_timeout(value: object) -> None:
    (msg,) = problems(with_integration(timeouts={"attempt": value}))
    assert msg.startswith("integrations.svc.timeouts.attempt: must be greater than zero")


def test_garbage_duration() -> None:
    (msg,) = problems(with_integration(timeouts={"total": "soon"}))
    assert msg == ("integrations.svc.timeouts.total: must be a duration like 250ms, 5s, 2m "
                   "or a number of seconds; got 'soon'")


def test_attempt_longer_than_total() -> None:
    (msg,) = problems(with_integration(timeouts={"attempt": "20s", "total": "10s"}))
    assert msg == "integrations.svc.timeouts.attempt: (20s) must not exceed total (10s)"


def test_missing_secret_variable() -> None:
    env = {"EMAIL_KEY": "x" * 10}
    assert problems(GOOD, env) == [
        "integrations.payments.auth.token_env: environment variable PAYMENTS_TOKEN is not set "
        "or empty"
    ]


def test_secret_literal_in_file_is_refused_and_not_echoed() -> None:
    msgs = problems(with_integration(auth={"type": "bearer", "token": SECRET,
                                           "token_env": "PAYMENTS_TOKEN"}))
    assert msgs == ["integrations.svc.auth.token: unknown field; secrets come from the "
                    "environment: use token_env"]
    assert all(SECRET not in m for m in msgs)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://files.example.com", "must be an http:// or https:// URL"),
        ("https://", "has no host"),
        ("not-a-url", "must be an http:// or https:// URL"),
        ("not a url", "must not contain spaces or control characters"),
        ("https://api.example.com /v1", "must not contain spaces or control characters"),
        ("https://api.example.com\t", "must not contain spaces or control characters"),
        ("https://user:pw@api.example.com", "must not contain credentials"),
        ("https://api.example.com/v1?key=1", "must not contain a query or fragment"),
        ("https://api.example.com:99999", "is not a valid URL (Port out of range"),
        ("https://api.example.com:x", "is not a valid URL (Port could not be cast"),
        ("https://[::1/v1", "is not a valid URL (Invalid IPv6 URL)"),
        ("http://api.example.com", "plain http:// is refused"),
    ],
)
def test_malformed_base_url(url: str, reason: str) -> None:
    (msg,) = problems(with_integration(base_url=url))
    assert msg.startswith(f"integrations.svc.base_url: {reason}")


@pytest.mark.parametrize(("section", "reason"), [
    ({"server": {"shutdown_grace": float("inf")}}, "server.shutdown_grace: must be at most"),
    ({"server": {"shutdown_grace": float("nan")}}, "server.shutdown_grace: must be a dur"),
    ({"server": {"shutdown_grace": 1e308}}, "server.shutdown_grace: must be at most"),
    ({"realtime": {"queue_size": float("inf")}}, "realtime.queue_size: must be an integer"),
])
def test_non_finite_and_overflowing_numbers_are_refused(section: dict[str, Any],
                                                        reason: str) -> None:
    """YAML has .inf and .nan; a grace of inf overflowed the shutdown timer."""
    (msg,) = problems(section)
    assert msg.startswith(reason), msg


def test_a_non_finite_rate_is_refused() -> None:
    (msg,) = problems(with_integration(rate_limit={"rate": float("inf")}))
    assert msg.startswith("integrations.svc.rate_limit.rate: must be a finite number"), msg


def test_plain_http_allowed_when_opted_in() -> None:
    cfg = parse_config(with_integration(base_url="http://127.0.0.1:8000/api/",
                                        allow_insecure_http=True), {})
    assert cfg.integrations["svc"].base_url == "http://127.0.0.1:8000/api"


def test_unknown_field_suggests_the_close_one() -> None:
    assert problems({"storag": {}}) == ["storag: unknown field; did you mean 'storage'?"]


def test_every_problem_reported_at_once() -> None:
    raw = {
        "server": {"grpc": {"address": "nonsense"}, "admin": {"port": -1}},
        "storage": {"backend": "mongodb"},
        "integrations": {"Bad Name": {"base_url": "https://x.example"}},
        "routes": [{"integration": "nope", "name": "r", "method": "FETCH"}],
    }
    msgs = problems(raw)
    assert len(msgs) == 6, msgs
    fields = [m.split(":")[0] for m in msgs]
    assert fields == ["server.grpc.address", "server.admin.port", "storage.backend",
                      "integrations.Bad Name", "routes[0].integration", "routes[0].method"]


def test_env_override_applies_and_is_named_in_errors() -> None:
    cfg = parse_config({}, {"SIDECAR_GRPC_ADDRESS": "unix:///tmp/s.sock",
                            "SIDECAR_DATA_DIR": "/var/lib/sidecar"})
    assert cfg.server.grpc.address == "unix:///tmp/s.sock"
    assert cfg.storage.data_dir == "/var/lib/sidecar"
    assert problems({}, {"SIDECAR_EDGE_PORT": "http"}) == [
        "server.edge.port (from SIDECAR_EDGE_PORT): must be an integer, got a string 'http'"
    ]


def test_api_token_from_environment() -> None:
    cfg = parse_config({"server": {"grpc": {"api_token_env": "SIDECAR_API_TOKEN"}}},
                       {"SIDECAR_API_TOKEN": "t0ken-value"})
    assert cfg.server.grpc.api_token is not None
    assert cfg.server.grpc.api_token.value == "t0ken-value"
    assert problems({"server": {"grpc": {"api_token_env": "SIDECAR_API_TOKEN"}}}, {}) == [
        "server.grpc.api_token_env: environment variable SIDECAR_API_TOKEN is not set or empty"
    ]


def test_unsupported_version() -> None:
    assert problems({"version": 2}) == [
        "version: unsupported config version 2; this sidecar reads 1"
    ]


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  grpc:\n    address: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value.problems[0]).startswith("line ")
    assert "not valid YAML" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", {})


def test_tls_files_must_exist(tmp_path: Path) -> None:
    (msg,) = problems(with_integration(tls={"ca_file": "ca.pem"}))
    assert msg == "integrations.svc.tls.ca_file: file not found: ca.pem"


def test_redacted_dump_has_no_secret_values() -> None:
    cfg = parse_config(GOOD, ENV)
    text = dump_redacted(cfg)
    for value in ENV.values():
        assert value not in text
        assert value not in repr(cfg)
    dumped = yaml.safe_load(text)
    assert dumped["integrations"]["payments"]["auth"] == {"type": "bearer",
                                                          "token_env": "PAYMENTS_TOKEN"}


def test_cli_config_show_and_check(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    env = {"PATH": "/usr/bin:/bin", **ENV}
    show = subprocess.run([sys.executable, "-m", "sidecar", "config", "show", "-c", str(path)],
                          capture_output=True, text=True, env=env, check=True)
    assert "payments:" in show.stdout and "token_env: PAYMENTS_TOKEN" in show.stdout
    assert SECRET not in show.stdout + show.stderr
    bad = subprocess.run([sys.executable, "-m", "sidecar", "config", "check", "-c", str(path)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2
    assert "integrations.payments.auth.token_env: environment variable PAYMENTS_TOKEN" in (
        bad.stderr)


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "deploy" / "config" / "sidecar.example.yaml"
    cfg = load_config(example, {"PAYMENTS_API_TOKEN": "x" * 12})
    assert cfg.integrations


def test_log_scrubber_masks_secrets_in_messages_extras_and_tracebacks() -> None:
    scrubber = SecretScrubber([SECRET])
    try:
        raise RuntimeError(f"upstream said bad token {SECRET}")
    except RuntimeError:
        import sys as _sys
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "token=%s", (SECRET,),
                                   _sys.exc_info())
    record.header = f"Bearer {SECRET}"
    assert scrubber.filter(record)
    line = JsonFormatter().format(record)
    assert SECRET not in line
    assert line.count("<redacted>") == 3


@settings(max_examples=examples(200), deadline=None)
@given(secret=st.text(min_size=4, max_size=40).filter(lambda s: s.strip() == s and s))
def test_a_secret_is_scrubbed_in_every_usual_encoding(secret: str) -> None:
    """Raw, percent-encoded (either hex case, '+' for space), base64 (standard and
    URL-safe, padded or not): whichever way a secret reaches a log line, it is masked."""
    scrubber = SecretScrubber([secret])
    raw = secret.encode()
    encoded = quote(secret, safe="")
    forms = {secret, encoded, quote_plus(secret),
             re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded),
             base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="),
             base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    for form in forms:
        text = scrubber.scrub(f"GET https://api.example/x?key={form}&y=1 failed")
        assert form not in text, (secret, form, text)
        assert "<redacted>" in text


@settings(max_examples=examples(200), deadline=None)
@given(text=st.text(max_size=50) | st.text(min_size=5000, max_size=6000))
def test_hostile_text_stays_one_capped_log_line(text: str) -> None:
    """Whatever a client or an upstream sent: one line in either format, fields capped."""
    record = logging.LogRecord("sidecar.edge", logging.WARNING, __file__, 1,
                               "rejected %s", (text,), None)
    record.header = text
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert "\n" not in line and "\r" not in line
        assert len(line) < 3 * MAX_FIELD_CHARS + 500
    assert json.loads(JsonFormatter().format(record))["header"].startswith(text[:100])


def test_each_problem_in_a_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("server:\n  edge:\n    port: http\n    prot: 3\n"
                    "integrations:\n  svc:\n    retry:\n      max_attempts: 99\n"
                    "routes:\n  - integration: svc\n    name: r\n    methd: GET\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"SIDECAR_ADMIN_PORT": "x"})
    assert [str(p) for p in info.value.problems] == [
        "server.edge.port: must be an integer, got a string 'http' (sidecar.yaml, line 3)",
        "server.edge.prot: unknown field; did you mean 'port'? (sidecar.yaml, line 4)",
        "server.admin.port (from SIDECAR_ADMIN_PORT): must be an integer, got a string 'x'",
        # A missing key: the line of its section.
        "integrations.svc.base_url: is required (sidecar.yaml, line 6)",
        "integrations.svc.retry.max_attempts: must be at most 20; got 99 (sidecar.yaml, line 8)",
        "routes[0].methd: unknown field; did you mean 'method'? (sidecar.yaml, line 12)",
    ]

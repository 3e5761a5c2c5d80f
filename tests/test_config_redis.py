"""Configuration of the Redis backend: URL from the environment, prefix, timeouts, redaction."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, dump_redacted, parse_config
from sidecar.logs import SecretScrubber
from sidecar.storage import RedisStorage, SqliteStorage, make_storage

PASSWORD = "r3dis-Pa55word-value"
URL = f"redis://:{PASSWORD}@127.0.0.1:6379/2"


def problems(raw: object, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env)
    return [str(p) for p in info.value.problems]


def test_redis_backend_with_defaults() -> None:
    cfg = parse_config({"storage": {"backend": "redis"}}, {"REDIS_URL": URL})
    redis = cfg.storage.redis
    assert cfg.storage.backend == "redis"
    assert redis.url is not None and (redis.url.env, redis.url.value) == ("REDIS_URL", URL)
    assert (redis.key_prefix, redis.socket_timeout) == ("sidecar:", 2.0)
    store = make_storage(cfg.storage)
    assert isinstance(store, RedisStorage) and store.backend == "redis"
    assert store.key_prefix == "sidecar:"
    assert store.where == "redis://127.0.0.1:6379/2"


def test_redis_settings_and_tls_url() -> None:
    raw = {"storage": {"backend": "redis", "redis": {
        "url_env": "APP_REDIS", "key_prefix": "{shop}:", "socket_timeout": "500ms"}}}
    cfg = parse_config(raw, {"APP_REDIS": f"rediss://user:{PASSWORD}@cache.internal:6380/0"})
    redis = cfg.storage.redis
    assert (redis.url_env, redis.key_prefix, redis.socket_timeout) == ("APP_REDIS", "{shop}:", 0.5)
    store = make_storage(cfg.storage)
    assert isinstance(store, RedisStorage)
    assert store.where == "rediss://cache.internal:6380/0"


def test_backend_from_the_environment_override() -> None:
    cfg = parse_config({}, {"SIDECAR_STORAGE_BACKEND": "redis", "REDIS_URL": URL})
    assert cfg.storage.backend == "redis"


def test_sqlite_stays_the_default_and_needs_no_redis_url() -> None:
    cfg = parse_config({"storage": {"redis": {"key_prefix": "x:"}}}, {})
    assert cfg.storage.backend == "sqlite" and cfg.storage.redis.url is None
    assert isinstance(make_storage(cfg.storage), SqliteStorage)


def test_missing_url_is_reported() -> None:
    assert problems({"storage": {"backend": "redis"}}, {}) == [
        "storage.redis.url_env: environment variable REDIS_URL is not set or empty; it must "
        "hold the Redis URL, e.g. redis://:password@host:6379/0"]


def test_bad_settings_are_reported_without_echoing_the_url() -> None:
    raw = {"storage": {"backend": "redis", "redis": {
        "key_prefix": "", "socket_timeout": "0s", "url": URL}}}
    msgs = problems(raw, {"REDIS_URL": f"http://:{PASSWORD}@127.0.0.1/0"})
    assert [m.split(":")[0] for m in msgs] == [
        "storage.redis.url_env", "storage.redis.key_prefix", "storage.redis.socket_timeout",
        "storage.redis.url"]
    assert "environment variable" in msgs[-1]
    assert not any(PASSWORD in m for m in msgs)
    assert problems({"storage": {"backend": "redis", "redis": {"url_env": "not a name"}}},
                    {})[0].startswith("storage.redis.url_env: must name an environment variable")
    for bad in (f"redis://:{PASSWORD}@127.0.0.1:port/0", "redis:///0", "unix://"):
        (msg,) = problems({"storage": {"backend": "redis"}}, {"REDIS_URL": bad})
        assert "must hold a URL like" in msg and PASSWORD not in msg


def test_url_and_password_are_secrets() -> None:
    cfg = parse_config({"storage": {"backend": "redis"}}, {"REDIS_URL": URL})
    assert PASSWORD not in dump_redacted(cfg) and URL not in dump_redacted(cfg)
    assert PASSWORD not in repr(cfg)
    values = [s.value for s in cfg.secrets()]
    assert URL in values and PASSWORD in values
    scrubber = SecretScrubber(values)
    assert PASSWORD not in scrubber.scrub(f"connecting with {PASSWORD} to {URL}")


def test_password_in_a_unix_socket_query_is_a_secret_too() -> None:
    url = f"unix:///run/redis.sock?db=1&password={PASSWORD}"
    cfg = parse_config({"storage": {"backend": "redis"}}, {"REDIS_URL": url})
    assert PASSWORD in [s.value for s in cfg.secrets()]
    store = make_storage(cfg.storage)
    assert isinstance(store, RedisStorage) and PASSWORD not in store.where

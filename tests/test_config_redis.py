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


# ---------------------------------------------------------------------- cluster and sentinel

CLUSTER_URLS = f"redis://:{PASSWORD}@10.0.0.1:7000, redis://10.0.0.2:7001,redis://10.0.0.3"
SENTINEL_PASSWORD = "sentinel-Pa55word-value"


def test_cluster_mode_takes_a_seed_list_and_tags_the_prefix() -> None:
    raw = {"storage": {"backend": "redis", "redis": {"mode": "cluster"}}}
    cfg = parse_config(raw, {"REDIS_URL": CLUSTER_URLS})
    assert cfg.storage.redis.mode == "cluster"
    store = make_storage(cfg.storage)
    assert isinstance(store, RedisStorage) and store.mode == "cluster"
    assert store.key_prefix == "{sidecar}:"  # one hash slot for every key
    assert store.where == ("cluster redis://10.0.0.1:7000, redis://10.0.0.2:7001, "
                           "redis://10.0.0.3")
    assert PASSWORD in [s.value for s in cfg.secrets()]


def test_a_prefix_with_a_hash_tag_is_kept_in_cluster_mode() -> None:
    raw = {"storage": {"backend": "redis", "redis": {"mode": "cluster", "key_prefix": "{shop}:"}}}
    store = make_storage(parse_config(raw, {"REDIS_URL": CLUSTER_URLS}).storage)
    assert isinstance(store, RedisStorage) and store.key_prefix == "{shop}:"
    for prefix, tagged in (("app", "{app}"), ("a{b:", "{a{b}:"), ("{}x:", "{{}x}:"),
                           ("x{y}z:", "x{y}z:")):
        cfg = parse_config({"storage": {"backend": "redis", "redis": {
            "mode": "cluster", "key_prefix": prefix}}}, {"REDIS_URL": CLUSTER_URLS})
        store = make_storage(cfg.storage)
        assert isinstance(store, RedisStorage) and store.key_prefix == tagged


def test_sentinel_mode_with_master_name_and_its_own_password() -> None:
    raw = {"storage": {"backend": "redis", "redis": {
        "mode": "sentinel", "sentinel": {"master_name": "mymaster",
                                         "password_env": "SENTINEL_PW"}}}}
    env = {"REDIS_URL": f"redis://:{PASSWORD}@s1:26379,redis://s2/1",
           "SENTINEL_PW": SENTINEL_PASSWORD}
    cfg = parse_config(raw, env)
    sentinel = cfg.storage.redis.sentinel
    assert (sentinel.master_name, sentinel.password_env) == ("mymaster", "SENTINEL_PW")
    assert sentinel.password is not None and sentinel.password.value == SENTINEL_PASSWORD
    values = [s.value for s in cfg.secrets()]
    assert PASSWORD in values and SENTINEL_PASSWORD in values
    assert SENTINEL_PASSWORD not in dump_redacted(cfg) and PASSWORD not in dump_redacted(cfg)
    store = make_storage(cfg.storage)
    assert isinstance(store, RedisStorage) and store.key_prefix == "sidecar:"
    assert store.where == "sentinel master 'mymaster' via redis://s1:26379, redis://s2/1"
    assert PASSWORD not in store.where and SENTINEL_PASSWORD not in store.where


def test_bad_mode_and_sentinel_without_master_name() -> None:
    (msg,) = problems({"storage": {"backend": "redis", "redis": {"mode": "replicated"}}},
                      {"REDIS_URL": URL})
    assert msg == ("storage.redis.mode: must be one of standalone, cluster, sentinel; "
                   "got 'replicated'")
    (msg,) = problems({"storage": {"backend": "redis", "redis": {"mode": "sentinel"}}},
                      {"REDIS_URL": URL})
    assert msg.startswith("storage.redis.sentinel.master_name: is required when "
                          "storage.redis.mode is sentinel")
    (msg,) = problems({"storage": {"backend": "redis", "redis": {
        "mode": "sentinel", "sentinel": {"master_name": "m", "password_env": "NOPE"}}}},
        {"REDIS_URL": URL})
    assert msg == ("storage.redis.sentinel.password_env: environment variable NOPE is not set "
                   "or empty")
    (msg,) = problems({"storage": {"backend": "redis", "redis": {
        "mode": "sentinel", "sentinel": {"master_name": "m", "password": "x"}}}},
        {"REDIS_URL": URL})
    assert msg.startswith("storage.redis.sentinel.password: unknown field; secrets come from "
                          "the environment")


def test_sentinel_settings_are_not_needed_outside_sentinel_mode() -> None:
    raw = {"storage": {"redis": {"sentinel": {"password_env": "UNSET_VARIABLE"}}}}
    assert parse_config(raw, {}).storage.redis.sentinel.password is None


@pytest.mark.parametrize(("mode", "value", "why"), [
    ("cluster", "", "is not set or empty"),
    ("cluster", " , ,", "holds no URL"),
    ("cluster", f"redis://:{PASSWORD}@h1:7000,h2:7001", "has a URL (2 of 2) that is not a redis://"),
    ("cluster", f"redis://:{PASSWORD}@h1:port", "has a URL (1 of 1) that is not a redis://"),
    ("cluster", f"unix:///run/redis.sock?password={PASSWORD}",
     "has a URL (1 of 1) that is not a redis://"),
    ("cluster", f"redis://:{PASSWORD}@h1:7000/3",
     "has a URL (1 of 1) naming database 3; a Redis Cluster has only 0"),
    ("cluster", f"redis://:{PASSWORD}@h1:7000,rediss://h2:7000", "mixes redis:// and rediss://"),
    ("cluster", f"redis://:{PASSWORD}@h1:7000,redis://:other-{PASSWORD}@h2:7000",
     "gives different credentials in different URLs"),
    ("sentinel", f"redis://:{PASSWORD}@s1:26379/1,redis://s2:26379/2",
     "gives different database in different URLs"),
    ("sentinel", f"redis://:{PASSWORD}@s1:26379/zero",
     "has a URL (1 of 1) with no database number"),
])
def test_malformed_url_lists_are_reported_without_echoing_them(mode: str, value: str,
                                                                why: str) -> None:
    raw = {"storage": {"backend": "redis", "redis": {
        "mode": mode, "sentinel": {"master_name": "m"}}}}
    (msg,) = problems(raw, {"REDIS_URL": value})
    assert msg.startswith(f"storage.redis.url_env: environment variable REDIS_URL {why}"), msg
    assert f"in {mode} mode it must hold the" in msg
    assert PASSWORD not in msg and "h1" not in msg and "s1" not in msg


def test_storage_refuses_bad_modes_and_urls_without_echoing_them() -> None:
    with pytest.raises(ValueError) as info:
        RedisStorage(URL, mode="replicated")
    assert "standalone, cluster, sentinel" in str(info.value)
    with pytest.raises(ValueError) as info:
        RedisStorage(f"redis://:{PASSWORD}@h:1,unix:///x?password={PASSWORD}", mode="cluster")
    assert "got a unix URL" in str(info.value) and PASSWORD not in str(info.value)
    with pytest.raises(ValueError) as info:
        RedisStorage(URL, mode="sentinel")
    assert "master" in str(info.value) and PASSWORD not in str(info.value)

"""Storage backends behind one interface; ``make_storage`` picks one from config."""

import os
from typing import Any

from sidecar.config import StorageConfig
from sidecar.storage.base import ClaimStatus, IdempotencyClaim, Storage
from sidecar.storage.sqlite import SqliteStorage


def make_storage(config: StorageConfig) -> Storage:
    if config.backend == "sqlite":
        return SqliteStorage(config.data_dir)
    if config.backend == "redis":
        # Imported only when used: redis-py costs memory a SQLite sidecar need not pay.
        from sidecar.storage.redis import RedisStorage

        redis = config.redis
        # Config validation already read the URL; a bare StorageConfig reads it here.
        url = redis.url.value if redis.url is not None else os.environ.get(redis.url_env, "")
        if not url:
            raise ValueError(f"storage.redis: environment variable {redis.url_env} is not set")
        sentinel = redis.sentinel
        password = (sentinel.password.value if sentinel.password is not None
                    else os.environ.get(sentinel.password_env, "") if sentinel.password_env
                    else "")
        return RedisStorage(url, key_prefix=redis.key_prefix,
                            socket_timeout=redis.socket_timeout, mode=redis.mode,
                            master_name=sentinel.master_name, sentinel_password=password)
    raise ValueError(f"unknown storage backend {config.backend!r}")  # config validation stops it


def __getattr__(name: str) -> Any:
    if name == "RedisStorage":
        from sidecar.storage.redis import RedisStorage

        return RedisStorage
    raise AttributeError(name)


__all__ = ["ClaimStatus", "IdempotencyClaim", "RedisStorage", "SqliteStorage", "Storage",
           "make_storage"]

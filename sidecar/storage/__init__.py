"""Storage backends behind one interface; ``open_storage`` picks one from config."""

from sidecar.config import StorageConfig
from sidecar.storage.base import ClaimStatus, IdempotencyClaim, Storage
from sidecar.storage.sqlite import SqliteStorage


def make_storage(config: StorageConfig) -> Storage:
    if config.backend == "sqlite":
        return SqliteStorage(config.data_dir)
    raise ValueError(f"unknown storage backend {config.backend!r}")  # config validation stops it


__all__ = ["ClaimStatus", "IdempotencyClaim", "SqliteStorage", "Storage", "make_storage"]

"""Shared fixtures: real sidecars on ephemeral ports, real SQLite files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.app import Sidecar
from sidecar.config import Config, parse_config
from sidecar.storage import SqliteStorage

# Every test is bounded, and no process the suite starts outlives it, however it ends.
pytest_plugins = ["tests.process_reaper", "tests.async_timeouts"]


def make_config(tmp_path: Path, extra: dict[str, Any] | None = None,
                env: dict[str, str] | None = None) -> Config:
    """A config with every listener on an ephemeral loopback port."""
    raw: dict[str, Any] = {
        "server": {
            "grpc": {"address": "127.0.0.1:0"},
            "edge": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "shutdown_grace": "2s",
        },
        "storage": {"data_dir": str(tmp_path / "data")},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            merged = dict(raw[key])
            for k2, v2 in value.items():
                if isinstance(v2, dict) and isinstance(merged.get(k2), dict):
                    merged[k2] = {**merged[k2], **v2}
                else:
                    merged[k2] = v2
            raw[key] = merged
        else:
            raw[key] = value
    return parse_config(raw, env or {})


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    sc = Sidecar(make_config(tmp_path))
    await sc.start()
    try:
        yield sc
    finally:
        await sc.stop()


@pytest.fixture
async def channel(sidecar: Sidecar) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(sidecar.grpc.address) as ch:
        yield ch


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    """An open SQLite store in a fresh data directory."""
    s = SqliteStorage(tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()

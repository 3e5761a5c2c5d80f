"""Which admin endpoints need the API token: operator data does, probes and scrapes don't."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.app import Sidecar
from tests.conftest import make_config

TOKEN = "adm1n-t0ken-value"
OPERATOR = [("GET", "/presence"), ("GET", "/presence?topic=user:alice"),
            ("GET", "/webhooks/events"), ("POST", "/webhooks/replay"),
            ("GET", "/status.json"), ("GET", "/status")]
OPEN = ["/metrics", "/healthz", "/readyz"]

#: A client session and the admin listener's base URL.
Admin = tuple[aiohttp.ClientSession, str]


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    config = make_config(
        tmp_path,
        {"server": {"grpc": {"api_token_env": "API_TOKEN"}},
         "realtime": {"websocket": {"jwt": {"algorithms": ["HS256"],
                                            "hs256_secret_env": "WS_SECRET"}}}},
        env={"API_TOKEN": TOKEN, "WS_SECRET": "w" * 32})
    sc = Sidecar(config)
    await sc.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield session, f"http://{sc.admin.address}"
    finally:
        await sc.stop()


@pytest.mark.parametrize(("method", "path"), OPERATOR)
async def test_operator_endpoints_refuse_without_the_token(admin: Admin, method: str,
                                                           path: str) -> None:
    session, base = admin
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": "Basic " + base64.b64encode(b"op:wrong").decode()}):
        async with session.request(method, base + path, headers=headers, json={}) as resp:
            assert resp.status == 401, (path, headers)
            assert TOKEN not in await resp.text()


@pytest.mark.parametrize(("method", "path"), OPERATOR)
async def test_operator_endpoints_accept_the_token(admin: Admin, method: str, path: str) -> None:
    session, base = admin
    body = {"group": "orders", "statuses": ["dead"]}
    basic = base64.b64encode(f"op:{TOKEN}".encode()).decode()
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"Basic {basic}"}):
        async with session.request(method, base + path, headers=headers, json=body) as resp:
            assert resp.status == 200, (path, resp.status, await resp.text())


@pytest.mark.parametrize("path", OPEN)
async def test_probes_and_metrics_need_no_token(admin: Admin, path: str) -> None:
    session, base = admin
    async with session.get(base + path) as resp:
        assert resp.status == 200

"""Hot reload in process: integrations swap for new calls, unchanged ones keep their
state, in-flight calls finish on the old policy, bad configs change nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
import yaml
from aiohttp import web
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.config import Config, ConfigError
from sidecar.reload import Reloader, effective_config, restart_required
from tests.call_support import call, integration
from tests.conftest import make_config
from tests.upstream import Upstream, reply
from tests.webhook_support import stripe_event, stripe_headers

FAILING = {"retry": {"max_attempts": 1, "backoff": {"initial": "1ms", "max": "2ms"}}}


def metric(sc: Sidecar, name: str, **labels: str) -> float:
    value = sc.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def raw_config(tmp_path: Path, integrations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "server": {"grpc": {"address": "127.0.0.1:0"}, "edge": {"host": "127.0.0.1", "port": 0},
                   "admin": {"host": "127.0.0.1", "port": 0}, "shutdown_grace": "2s"},
        "storage": {"data_dir": str(tmp_path / "data")},
        "integrations": integrations,
        **extra,
    }


def cfg(tmp_path: Path, integrations: dict[str, Any], env: dict[str, str] | None = None,
        **extra: Any) -> Config:
    return make_config(tmp_path, {"integrations": integrations, **extra}, env)


async def running(config: Config, **kw: Any) -> tuple[Sidecar, grpc.aio.Channel]:
    sc = Sidecar(config, **kw)
    await sc.start()
    return sc, grpc.aio.insecure_channel(sc.grpc.address)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(default=reply(503, b"down")).start()
    yield up
    await up.stop()


async def test_retry_policy_change_applies_to_the_next_call(tmp_path: Path,
                                                            upstream: Upstream) -> None:
    sc, ch = await running(cfg(tmp_path, {"svc": integration(upstream.url, **FAILING)}))
    try:
        stub = pb_grpc.SidecarServiceStub(ch)
        first = await stub.Call(call(), timeout=5)
        assert (first.status, first.attempts, len(upstream.seen)) == (503, 1, 1)
        outcome = await sc.reload(cfg(tmp_path, {"svc": integration(upstream.url)}))
        assert outcome.ok and outcome.integrations_changed == ("svc",)
        assert outcome.restart_required == ()
        second = await stub.Call(call(), timeout=5)
        assert (second.status, second.attempts, len(upstream.seen)) == (503, 3, 4)
        assert metric(sc, "sidecar_config_reloads_total", result="success") == 1
        assert metric(sc, "sidecar_config_last_reload_success_timestamp_seconds") > 0
    finally:
        await ch.close()
        await sc.stop()


async def test_unchanged_integration_keeps_its_open_breaker(tmp_path: Path,
                                                           upstream: Upstream) -> None:
    tripping = {**FAILING, "circuit_breaker": {"consecutive_failures": 2,
                                               "open_duration": "1h"}}
    ints = {"flaky": integration(upstream.url, **tripping), "svc": integration(upstream.url)}
    sc, ch = await running(cfg(tmp_path, ints))
    try:
        stub = pb_grpc.SidecarServiceStub(ch)
        for _ in range(2):
            await stub.Call(call("flaky"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call("flaky"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        seen = len(upstream.seen)
        changed = {**ints, "svc": integration(upstream.url, headers={"X-New": "1"})}
        outcome = await sc.reload(cfg(tmp_path, changed))
        assert outcome.integrations_changed == ("svc",)
        with pytest.raises(grpc.aio.AioRpcError) as info:  # still open: state kept
            await stub.Call(call("flaky"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(upstream.seen) == seen
        # A changed breaker policy means a new breaker: closed, calls go out again.
        reset = {**changed, "flaky": integration(upstream.url, **{
            **FAILING, "circuit_breaker": {"consecutive_failures": 3, "open_duration": "1h"}})}
        await sc.reload(cfg(tmp_path, reset))
        assert (await stub.Call(call("flaky"), timeout=5)).status == 503
        assert len(upstream.seen) == seen + 1
        assert upstream.seen[-1].headers.get("X-New") is None
        await stub.Call(call("svc"), timeout=5)
        assert upstream.seen[-1].headers.get("X-New") == "1"
    finally:
        await ch.close()
        await sc.stop()


async def test_added_integration_is_callable_removed_one_is_not_found(
        tmp_path: Path, upstream: Upstream) -> None:
    sc, ch = await running(cfg(tmp_path, {"svc": integration(upstream.url, **FAILING)}))
    try:
        stub = pb_grpc.SidecarServiceStub(ch)
        ok = await Upstream().start()
        state = {"integration": "svc", "scope": "", "state": "closed"}
        assert sc.metrics.registry.get_sample_value("sidecar_circuit_breaker_state", state) == 1
        try:
            outcome = await sc.reload(cfg(tmp_path, {"fresh": integration(ok.url)}))
            # No stale breaker gauge left to keep an alert firing.
            assert sc.metrics.registry.get_sample_value("sidecar_circuit_breaker_state",
                                                        state) is None
            assert (outcome.integrations_added, outcome.integrations_removed) == (
                ("fresh",), ("svc",))
            assert (await stub.Call(call("fresh"), timeout=5)).status == 200
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Call(call("svc"), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await ok.stop()
    finally:
        await ch.close()
        await sc.stop()


async def test_in_flight_call_finishes_on_a_removed_integration(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late but fine")

    up = await Upstream(default=held).start()
    sc, ch = await running(cfg(tmp_path, {"svc": integration(up.url)}))
    try:
        stub = pb_grpc.SidecarServiceStub(ch)
        pending = asyncio.ensure_future(stub.Call(call(), timeout=10))
        await asyncio.wait_for(up.arrived.wait(), 5)
        outcome = await sc.reload(cfg(tmp_path, {}))
        assert outcome.integrations_removed == ("svc",)
        release.set()
        done = await pending
        assert (done.status, done.body) == (200, b"late but fine")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await ch.close()
        await sc.stop()
        await up.stop()


async def test_invalid_config_changes_nothing_and_names_the_field(
        tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-token-value-never-logged"
    env = {"SVC_TOKEN": secret}
    good = {"svc": integration(upstream.url, auth={"type": "bearer", "token_env": "SVC_TOKEN"},
                               **FAILING)}
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump(raw_config(tmp_path, good)))
    sc, ch = await running(cfg(tmp_path, good, env), config_path=config_file)
    try:
        stub = pb_grpc.SidecarServiceStub(ch)
        bad = {"svc": {**good["svc"], "retry": {"max_attempts": 0}},
               "other": {"base_url": "ftp://nowhere"}}
        config_file.write_text(yaml.safe_dump(raw_config(tmp_path, bad)))
        with caplog.at_level(logging.ERROR, logger="sidecar"):
            outcome = await sc.reload()
        assert not outcome.ok
        assert any(p.startswith("integrations.svc.retry.max_attempts:")
                   for p in outcome.problems)
        assert any(p.startswith("integrations.other.base_url:") for p in outcome.problems)
        record = next(r for r in caplog.records if r.getMessage().startswith(
            "config reload failed"))
        assert record.levelno == logging.ERROR
        # The problems ride on the record as an `extra` field.
        assert "integrations.svc.retry.max_attempts" in str(record.__dict__["problems"])
        assert secret not in caplog.text
        assert metric(sc, "sidecar_config_reloads_total", result="failure") == 1
        assert metric(sc, "sidecar_config_reloads_total", result="success") == 0
        resp = await stub.Call(call(), timeout=5)  # the old policy: one attempt, auth sent
        assert resp.attempts == 1
        assert upstream.seen[-1].headers["Authorization"] == f"Bearer {secret}"
    finally:
        await ch.close()
        await sc.stop()


async def test_restart_only_settings_are_reported_and_ignored(tmp_path: Path,
                                                              upstream: Upstream) -> None:
    sc, ch = await running(cfg(tmp_path, {"svc": integration(upstream.url)}))
    try:
        edge = sc.edge.address
        moved = make_config(tmp_path / "elsewhere", {
            "integrations": {"svc": integration(upstream.url, **FAILING)},
            "server": {"edge": {"port": 1}, "shutdown_grace": "9s"},
            "logging": {"format": "text", "level": "debug"},
            "realtime": {"queue_size": 5}})
        outcome = await sc.reload(moved)
        assert outcome.ok
        assert set(outcome.restart_required) == {
            "server.edge.port", "server.shutdown_grace", "storage.data_dir", "logging.format",
            "realtime.queue_size"}
        assert outcome.integrations_changed == ("svc",)
        assert sc.edge.address == edge
        assert sc.config.storage.data_dir == str(tmp_path / "data")
        assert sc.config.logging.level == "debug"
        assert metric(sc, "sidecar_config_restart_required") == 1
        stub = pb_grpc.SidecarServiceStub(ch)
        assert (await stub.Call(call(), timeout=5)).attempts == 1
    finally:
        await ch.close()
        await sc.stop()


async def test_webhook_secret_rotates_by_reload(tmp_path: Path) -> None:
    env = {"OLD_WHSEC": "whsec_old_secret_value", "NEW_WHSEC": "whsec_new_secret_value"}

    def sources(var: str) -> dict[str, Any]:
        return {"sources": {"stripe": {"scheme": "stripe", "secrets_env": [var]}}}

    sc = Sidecar(make_config(tmp_path, {"webhooks": sources("OLD_WHSEC")}, env))
    await sc.start()
    try:
        url = f"http://{sc.edge.address}/webhooks/stripe"
        async with aiohttp.ClientSession() as http:
            body = stripe_event("evt_1")
            async with http.post(url, data=body, headers=stripe_headers(
                    body, env["OLD_WHSEC"])) as resp:
                assert resp.status == 200
            outcome = await sc.reload(make_config(tmp_path, {"webhooks": sources("NEW_WHSEC")},
                                                  env))
            assert outcome.ok and outcome.restart_required == ()
            body = stripe_event("evt_2")
            async with http.post(url, data=body, headers=stripe_headers(
                    body, env["OLD_WHSEC"])) as resp:
                assert resp.status == 401
            async with http.post(url, data=body, headers=stripe_headers(
                    body, env["NEW_WHSEC"])) as resp:
                assert resp.status == 200
            outcome = await sc.reload(make_config(tmp_path, {}, env))
            async with http.post(url, data=body, headers=stripe_headers(
                    body, env["NEW_WHSEC"])) as resp:
                assert resp.status == 404
    finally:
        await sc.stop()


async def test_requests_during_a_reload_queue_exactly_one_more() -> None:
    runs: list[asyncio.Event] = []
    started = asyncio.Event()

    async def slow_reload() -> None:
        release = asyncio.Event()
        runs.append(release)
        started.set()
        await release.wait()

    reloader = Reloader(slow_reload)
    reloader.request()
    await asyncio.wait_for(started.wait(), 5)
    for _ in range(3):  # SIGHUPs while the first reload runs
        reloader.request()
    started.clear()
    runs[0].set()
    await asyncio.wait_for(started.wait(), 5)
    runs[1].set()
    await asyncio.wait_for(reloader.wait(), 5)
    assert len(runs) == 2


async def test_sighup_before_start_up_finished_reloads_after_it(tmp_path: Path,
                                                               upstream: Upstream) -> None:
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump(raw_config(tmp_path, {
        "svc": integration(upstream.url)})))
    sc = Sidecar(cfg(tmp_path, {"svc": integration(upstream.url, **FAILING)}),
                 config_path=config_file)
    sc.request_reload()
    await sc.start()
    try:
        await asyncio.wait_for(sc.reloader.wait(), 5)
        assert metric(sc, "sidecar_config_reloads_total", result="success") == 1
        assert sc.config.integrations["svc"].retry.max_attempts == 3
    finally:
        await sc.stop()


async def test_file_watch_reloads_when_the_file_changes(tmp_path: Path,
                                                       upstream: Upstream) -> None:
    config_file = tmp_path / "sidecar.yaml"
    watch = {"watch": True, "watch_interval": "50ms"}
    config_file.write_text(yaml.safe_dump(raw_config(
        tmp_path, {"svc": integration(upstream.url, **FAILING)}, reload=watch)))
    sc = Sidecar(cfg(tmp_path, {"svc": integration(upstream.url, **FAILING)}, reload=watch),
                 config_path=config_file)
    await sc.start()
    try:
        reloaded = sc.reloader.next_reload()
        config_file.write_text(yaml.safe_dump(raw_config(
            tmp_path, {"svc": integration(upstream.url)}, reload=watch)))
        await asyncio.wait_for(reloaded, 5)
        assert metric(sc, "sidecar_config_reloads_total", result="success") == 1
        assert sc.config.integrations["svc"].retry.max_attempts == 3
    finally:
        await sc.stop()


async def test_websocket_jwt_key_rotates_and_open_connections_stay(tmp_path: Path) -> None:
    env = {"OLD_KEY": "old-hmac-key-0123456789abcdef0123",
           "NEW_KEY": "new-hmac-key-0123456789abcdef0123"}

    def realtime(var: str) -> dict[str, Any]:
        return {"realtime": {"websocket": {"jwt": {"hs256_secret_env": var}}}}

    def token(key: str) -> str:
        return jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, env[key],
                          algorithm="HS256")

    sc, ch = await running(make_config(tmp_path, realtime("OLD_KEY"), env))
    try:
        stub = pb_grpc.SidecarServiceStub(ch)
        url = f"http://{sc.edge.address}/ws"
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url, headers={
                "Authorization": f"Bearer {token('OLD_KEY')}"})
            outcome = await sc.reload(make_config(tmp_path, realtime("NEW_KEY"), env))
            assert outcome.ok and outcome.restart_required == ()
            async with http.get(url, headers={"Authorization": f"Bearer {token('OLD_KEY')}"}
                                ) as resp:
                assert resp.status == 401
            fresh = await http.ws_connect(url, headers={
                "Authorization": f"Bearer {token('NEW_KEY')}"})
            sent = await stub.Publish(pb.PublishRequest(topic="user:alice", data=b"{}"),
                                      timeout=5)
            for conn in (ws, fresh):  # opened before and after the reload
                while True:
                    frame = await asyncio.wait_for(conn.receive_json(), 5)
                    if "control" not in frame:
                        break
                assert frame["id"] == sent.event_id
            await ws.close()
            await fresh.close()
    finally:
        await ch.close()
        await sc.stop()


def test_reload_settings_are_validated_with_field_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, {"reload": {"wach": True, "watch_interval": "1ms"}})
    assert [str(p) for p in info.value.problems] == [
        "reload.watch_interval: must be at least 50ms; got 0.001s",
        "reload.wach: unknown field; did you mean 'watch'?"]


def test_a_new_api_token_value_is_restart_only_and_never_shown(tmp_path: Path) -> None:
    def with_token(value: str) -> Config:
        return make_config(tmp_path, {"server": {"grpc": {"api_token_env": "API_TOKEN"}}},
                           {"API_TOKEN": value})

    running_config, new = with_token("first-token-value"), with_token("second-token-value")
    effective = effective_config(running_config, new)
    assert effective.server.grpc.api_token == running_config.server.grpc.api_token
    assert restart_required(effective, new) == ["server.grpc.api_token_env"]

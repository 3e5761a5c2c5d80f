"""OAuth2 client credentials over real sockets: a real token endpoint and a real upstream
on 127.0.0.1. One token per integration, fetched once (also for concurrent calls),
renewed ahead of expiry, replaced after a 401; token endpoint failures are
UPSTREAM_AUTH_FAILED without the endpoint's body or the secret.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus

import grpc
import pytest
from aiohttp import web

from sidecar.clock import FakeClock
from sidecar.config import ConfigError, parse_config
from sidecar.upstream.oauth2 import OAuth2TokenSource
from tests import test_call_security
from tests.call_support import call, integration, running
from tests.certs import Pki
from tests.clocks import SkippingClock
from tests.conftest import make_config
from tests.rpc_support import rich_error
from tests.upstream import Action, Upstream, hang, reply

CLIENT_SECRET = "cs_" + secrets.token_hex(16)
CLIENT_ID = "client id:7/+"  # characters RFC 6749 §2.3.1 form-encodes before Basic
ENV = {"SVC_CLIENT_SECRET": CLIENT_SECRET, "SVC_CLIENT_ID": CLIENT_ID}


def issue(expires_in: object = 3600, **fields: object) -> Action:
    """Answers each token request with the next of ``tok-1``, ``tok-2``, ..."""
    issued = itertools.count(1)

    async def act(request: web.Request) -> web.StreamResponse:
        body = {"access_token": f"tok-{next(issued)}", "token_type": "Bearer",
                "expires_in": expires_in, **fields}
        return web.json_response({k: v for k, v in body.items() if v is not None})

    return act


# The same fixtures as the Call security tests: an upstream and the test PKI.
upstream = test_call_security.upstream
pki = test_call_security.pki


class TokenEndpoint(Upstream):
    """An ``Upstream`` standing for a token endpoint."""


@pytest.fixture
async def token() -> AsyncIterator[TokenEndpoint]:
    up = TokenEndpoint(default=issue())
    await up.start()
    yield up
    await up.stop()


def oauth2(token_url: str, **overrides: object) -> dict[str, object]:
    return {"type": "oauth2_client_credentials", "token_url": token_url + "/oauth/token",
            "client_id_env": "SVC_CLIENT_ID", "client_secret_env": "SVC_CLIENT_SECRET",
            **overrides}


def svc(upstream: Upstream, token: Upstream, **auth: object) -> dict[str, Any]:
    return {"svc": integration(upstream.url, auth=oauth2(token.url, **auth))}


def sent_tokens(upstream: Upstream) -> list[str]:
    return [s.headers.get("Authorization", "") for s in upstream.seen]


def form(seen_body: bytes) -> dict[str, list[str]]:
    return parse_qs(seen_body.decode(), keep_blank_values=True, strict_parsing=True)


# --------------------------------------------------------------------------- caching


async def test_one_token_serves_many_calls_and_callers_cannot_override_it(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    async with running(tmp_path, svc(upstream, token), env=ENV) as (sc, stub):
        for _ in range(5):
            resp = await stub.Call(call(headers={"Authorization": "Bearer mine"}), timeout=5)
            assert resp.status == 200
        requests = sc.metrics.registry.get_sample_value(
            "sidecar_upstream_token_requests_total", {"integration": "svc", "result": "ok"})
    assert len(token.seen) == 1 and requests == 1
    assert sent_tokens(upstream) == ["Bearer tok-1"] * 5


async def test_concurrent_first_calls_wait_for_one_token_request(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        return await issue()(request)

    token.then(held)
    config = make_config(tmp_path, {"integrations": svc(upstream, token)}, ENV)
    source = OAuth2TokenSource(config.integrations["svc"], SkippingClock())
    try:
        deadline = SkippingClock().monotonic() + 5
        waiting = [asyncio.ensure_future(source.authorization(deadline)) for _ in range(20)]
        await asyncio.sleep(0)  # each one runs up to its wait for the token
        await token.arrived.wait()
        gate.set()
        values = await asyncio.gather(*waiting)
    finally:
        await source.close()
    assert values == ["Bearer tok-1"] * 20
    assert len(token.seen) == 1


async def test_a_token_is_renewed_ahead_of_expiry_and_replaced_after_it(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    clock = SkippingClock()
    token.default = issue(expires_in=300)
    async with running(tmp_path, svc(upstream, token, refresh_before="60s"), env=ENV,
                       clock=clock) as (sc, stub):
        source = sc.calls._integrations["svc"].credentials
        assert isinstance(source, OAuth2TokenSource)
        await stub.Call(call(), timeout=5)
        clock.offset += 200  # before the refresh point (240 s): the same token
        await stub.Call(call(), timeout=5)
        assert len(token.seen) == 1
        clock.offset += 60  # in the last minute: sent once more, renewed meanwhile
        await stub.Call(call(), timeout=5)
        await source.wait_idle()
        await stub.Call(call(), timeout=5)
        assert len(token.seen) == 2
        clock.offset += 1000  # long expired: the call waits for a new one
        await stub.Call(call(), timeout=5)
    assert len(token.seen) == 3
    assert sent_tokens(upstream) == ["Bearer tok-1"] * 3 + ["Bearer tok-2", "Bearer tok-3"]


@pytest.mark.parametrize("expires_in", [None, "junk", 0, -5])
async def test_without_a_usable_expires_in_the_default_lifetime_applies(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint, expires_in: object) -> None:
    clock = SkippingClock()
    token.default = issue(expires_in=expires_in)
    async with running(tmp_path, svc(upstream, token, default_lifetime="10m"), env=ENV,
                       clock=clock) as (_, stub):
        await stub.Call(call(), timeout=5)
        clock.offset += 500
        await stub.Call(call(), timeout=5)
        assert len(token.seen) == 1
        clock.offset += 200
        await stub.Call(call(), timeout=5)
    assert len(token.seen) == 2


# --------------------------------------------------------------------------- the request


async def test_client_auth_basic_sends_form_encoded_credentials_in_the_header(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    auth = {"scopes": ["read:mail", "send"], "audience": "https://api.example/",
            "params": {"resource": "https://graph.example"}}
    async with running(tmp_path, svc(upstream, token, **auth), env=ENV) as (_, stub):
        await stub.Call(call(), timeout=5)
    seen = token.seen[0]
    assert (seen.method, seen.path) == ("POST", "/oauth/token")
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    pair = f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}".encode()
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(pair).decode()
    assert form(seen.body) == {"grant_type": ["client_credentials"],
                               "scope": ["read:mail send"],
                               "audience": ["https://api.example/"],
                               "resource": ["https://graph.example"]}


async def test_client_auth_body_sends_the_credentials_as_form_fields(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    async with running(tmp_path, svc(upstream, token, client_auth="body"), env=ENV) as (_, stub):
        await stub.Call(call(), timeout=5)
    seen = token.seen[0]
    assert "Authorization" not in seen.headers
    assert form(seen.body) == {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID],
                               "client_secret": [CLIENT_SECRET]}


# --------------------------------------------------------------------------- 401


async def test_a_401_fetches_one_new_token_and_retries_once(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    upstream.then(reply(401), reply(200))
    body = integration(upstream.url, auth=oauth2(token.url), retry={"max_attempts": 1})
    async with running(tmp_path, {"svc": body}, env=ENV) as (_, stub):
        resp = await stub.Call(call(method="POST", body=b"{}"), timeout=5)
    assert (resp.status, resp.attempts) == (200, 2)
    assert len(token.seen) == 2
    assert sent_tokens(upstream) == ["Bearer tok-1", "Bearer tok-2"]


async def test_a_persistent_401_is_the_answer_after_one_new_token(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    upstream.default = reply(401, b"token rejected")
    async with running(tmp_path, svc(upstream, token), env=ENV) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
        assert (resp.status, resp.attempts, resp.body) == (401, 2, b"token rejected")
        assert len(token.seen) == 2
        upstream.default = reply(200)
        assert (await stub.Call(call(), timeout=5)).status == 200
    assert len(token.seen) == 2  # the second token was kept: nothing refused it
    assert sent_tokens(upstream) == ["Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]


async def test_fresh_tokens_refused_again_are_not_fetched_anew_for_every_call(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    """Wrong scopes, an unknown client: every new token gets a 401 too. Then 401s are the
    answer as they are, without a token request per call, until the token in hand has
    served long enough that a refusal may again mean it was revoked."""
    clock = FakeClock()
    upstream.default = reply(401, b"insufficient scope")
    async with running(tmp_path, svc(upstream, token), env=ENV, clock=clock) as (_, stub):
        first = await stub.Call(call(), timeout=5)
        assert (first.status, first.attempts) == (401, 2)  # one new token, one resend
        for _ in range(10):
            resp = await stub.Call(call(), timeout=5)
            assert (resp.status, resp.attempts) == (401, 1)
        assert len(token.seen) == 2
        clock.advance(11.0)
        assert (await stub.Call(call(), timeout=5)).attempts == 2
        assert len(token.seen) == 3


async def test_a_stale_401_does_not_throw_away_a_newer_token(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    config = make_config(tmp_path, {"integrations": svc(upstream, token)}, ENV)
    clock = SkippingClock()
    source = OAuth2TokenSource(config.integrations["svc"], clock)
    try:
        first = await source.authorization(clock.monotonic() + 5)
        source.invalidate(first)
        second = await source.authorization(clock.monotonic() + 5)
        source.invalidate(first)  # a slow call that still had the first one
        third = await source.authorization(clock.monotonic() + 5)
    finally:
        await source.close()
    assert (first, second, third) == ("Bearer tok-1", "Bearer tok-2", "Bearer tok-2")


# --------------------------------------------------------------------------- failures

ECHO = "echo-of-the-request-Zq81"


def echoing(status: int, extra: str = "") -> Action:
    """A body that echoes the secret, as some servers' error pages do."""

    async def act(request: web.Request) -> web.StreamResponse:
        text = f"{ECHO} {(await request.read()).decode()} {request.headers} {extra}"
        return web.Response(status=status, text=text, content_type="application/json")

    return act


@pytest.mark.parametrize(("action", "cause"), [
    (echoing(500), "status"),
    (echoing(401, '{"error": "invalid_client"}'), "status"),
    (echoing(200), "invalid_response"),
    (reply(200, json.dumps({"token_type": "Bearer", "note": ECHO}).encode()),
     "invalid_response"),
    (reply(200, json.dumps({"access_token": f"{ECHO} x", "token_type": "bearer"}).encode()),
     "invalid_response"),
    (reply(200, json.dumps({"access_token": ECHO, "token_type": "mac"}).encode()),
     "token_type"),
    (reply(200, b"[]"), "invalid_response"),
    (reply(302, headers={"Location": "/elsewhere"}), "status"),
    (hang(), "timeout"),
], ids=["500", "401", "not-json", "no-token", "bad-characters", "mac", "not-object",
        "redirect", "timeout"])
async def test_token_endpoint_failures_are_upstream_auth_failed_without_body_or_secret(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint, action: Action, cause: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token.default = action
    async with running(tmp_path, svc(upstream, token, client_auth="body", timeout="200ms"),
                       env=ENV) as (sc, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5)
        errors = sc.metrics.registry.get_sample_value(
            "sidecar_upstream_token_requests_total", {"integration": "svc", "result": "error"})
    err = rich_error(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_AUTH_FAILED")
    assert (err.metadata["integration"], err.metadata["cause"]) == ("svc", cause)
    assert upstream.seen == [] and errors == 1
    assert "access token request failed" in caplog.text
    for text in (err.message, str(err.metadata), caplog.text, info.value.debug_error_string()):
        assert CLIENT_SECRET not in text and ECHO not in text


async def test_token_failures_back_off_do_not_open_the_breaker_and_clear_when_healed(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    """While the token endpoint fails, calls fail at once with RetryInfo instead of each
    asking it again (1 s, then doubling); the breaker stays closed; a token fetched after
    the pause serves calls again."""
    clock = FakeClock()
    token.default = reply(503)
    body = integration(upstream.url, auth=oauth2(token.url),
                       circuit_breaker={"consecutive_failures": 2})
    async with running(tmp_path, {"svc": body}, env=ENV, clock=clock) as (_, stub):
        delays = []
        for _ in range(4):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Call(call(), timeout=5)
            err = rich_error(info.value)
            assert (err.reason, err.metadata["cause"]) == ("UPSTREAM_AUTH_FAILED", "status")
            delays.append(err.retry_delay)
        assert len(token.seen) == 1  # the other three did not ask again
        assert delays == [pytest.approx(1.0)] * 4
        clock.advance(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=5)  # the second failure: two seconds now
        assert rich_error(info.value).retry_delay == pytest.approx(2.0)
        assert len(token.seen) == 2
        token.default = issue()
        clock.advance(2.0)
        resp = await stub.Call(call(), timeout=5)
        assert (await stub.Call(call(), timeout=5)).status == 200
    assert resp.status == 200 and len(token.seen) == 3


async def test_a_slow_token_endpoint_is_bounded_by_the_call_deadline(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    token.default = hang()
    async with running(tmp_path, svc(upstream, token), env=ENV) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert upstream.seen == []


async def test_a_retry_that_cannot_get_a_token_returns_the_earlier_answer(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    upstream.then(reply(401, b"first"))
    token.then(issue(), reply(500))
    async with running(tmp_path, svc(upstream, token), env=ENV) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert (resp.status, resp.body, resp.attempts) == (401, b"first", 1)


# --------------------------------------------------------------------------- TLS


@pytest.fixture
async def https_token(pki: Pki) -> AsyncIterator[TokenEndpoint]:
    up = TokenEndpoint(default=issue())
    await up.start(ssl_context=pki.server_context())
    yield up
    await up.stop()


async def test_the_token_endpoint_is_verified_with_the_integrations_ca(
        tmp_path: Path, upstream: Upstream, https_token: TokenEndpoint, pki: Pki) -> None:
    trusting = integration(upstream.url, auth=oauth2(https_token.url),
                           tls={"ca_file": str(pki.ca_cert)})
    default = integration(upstream.url, auth=oauth2(https_token.url))
    async with running(tmp_path, {"svc": trusting, "other": default}, env=ENV) as (_, stub):
        assert (await stub.Call(call(), timeout=5)).status == 200
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(integration="other"), timeout=5)
    err = rich_error(info.value)
    assert (err.reason, err.metadata["cause"]) == ("UPSTREAM_AUTH_FAILED", "tls")
    assert len(https_token.seen) == 1


# --------------------------------------------------------------------------- config and reload


def test_token_url_over_plain_http_is_refused_unless_the_integration_allows_it() -> None:
    def config(allow: bool) -> dict[str, Any]:
        return {"integrations": {"svc": {
            "base_url": "https://api.example", "allow_insecure_http": allow,
            "auth": {"type": "oauth2_client_credentials", "token_url": "http://idp.example/t",
                     "client_id": "c", "client_secret_env": "SVC_CLIENT_SECRET"}}}}

    with pytest.raises(ConfigError) as info:
        parse_config(config(False), ENV)
    assert [p.field for p in info.value.problems] == ["integrations.svc.auth.token_url"]
    assert "allow_insecure_http" in info.value.problems[0].message
    assert parse_config(config(True), ENV).integrations["svc"].auth.oauth2 is not None


@pytest.mark.parametrize(("auth", "field", "words"), [
    ({"type": "basic", "password_env": "SVC_CLIENT_SECRET"}, "username", "required"),
    ({"type": "basic", "username": "u", "username_env": "SVC_CLIENT_SECRET",
      "password_env": "SVC_CLIENT_SECRET"}, "username", "not both"),
    ({"type": "basic", "username": "u"}, "password_env", "required"),
    ({"type": "basic", "username": "u", "password": "hunter2"}, "password", "password_env"),
    ({"type": "basic", "username": "a:b", "password_env": "SVC_CLIENT_SECRET"}, "username",
     "colon"),
    ({"type": "oauth2_client_credentials", "token_url": "https://idp.example/t",
      "client_id": "c"}, "client_secret_env", "required"),
    ({"type": "oauth2_client_credentials", "token_url": "https://idp.example/t",
      "client_id": "c", "client_secret_env": "UNSET_VARIABLE"}, "client_secret_env", "not set"),
    ({"type": "oauth2_client_credentials", "client_id": "c",
      "client_secret_env": "SVC_CLIENT_SECRET"}, "token_url", "required"),
    ({"type": "oauth2_client_credentials", "token_url": "https://idp.example/t",
      "client_secret_env": "SVC_CLIENT_SECRET"}, "client_id", "required"),
    ({"type": "oauth2_client_credentials", "token_url": "https://idp.example/t",
      "client_id": "c", "client_secret_env": "SVC_CLIENT_SECRET", "client_auth": "jwt"},
     "client_auth", "basic, body"),
    ({"type": "oauth2_client_credentials", "token_url": "https://idp.example/t",
      "client_id": "c", "client_secret_env": "SVC_CLIENT_SECRET", "scopes": ["a b"]},
     "scopes[0]", "scope token"),
    ({"type": "oauth2_client_credentials", "token_url": "https://idp.example/t",
      "client_id": "c", "client_secret_env": "SVC_CLIENT_SECRET",
      "params": {"client_secret": "x"}}, "params.client_secret", "set by the sidecar"),
    ({"type": "oauth2_client_credentials", "token_url": "https://idp.example/t",
      "client_id": "c", "client_secret_env": "SVC_CLIENT_SECRET", "refresh_before": "2h"},
     "refresh_before", "default_lifetime"),
    ({"type": "oauth2_client_credentials", "token_url": "https://u:p@idp.example/t",
      "client_id": "c", "client_secret_env": "SVC_CLIENT_SECRET"}, "token_url", "credentials"),
])
def test_auth_problems_name_the_field_and_never_the_secret(auth: dict[str, Any], field: str,
                                                           words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"integrations": {"svc": {"base_url": "https://api.example",
                                               "auth": auth}}}, ENV)
    problems = {p.field: p.message for p in info.value.problems}
    assert words in problems[f"integrations.svc.auth.{field}"]
    # Only the missing secret besides: nothing else is reported.
    assert set(problems) <= {f"integrations.svc.auth.{field}",
                             "integrations.svc.auth.password_env"}
    assert CLIENT_SECRET not in str(info.value)


async def test_a_reloaded_client_secret_is_used_for_the_next_token(
        tmp_path: Path, upstream: Upstream, token: TokenEndpoint) -> None:
    async with running(tmp_path, svc(upstream, token, client_auth="body"),
                       env=ENV) as (sc, stub):
        await stub.Call(call(), timeout=5)
        new_secret = "cs_" + secrets.token_hex(16)
        outcome = await sc.reload(make_config(
            tmp_path, {"integrations": svc(upstream, token, client_auth="body")},
            {**ENV, "SVC_CLIENT_SECRET": new_secret}))
        assert outcome.ok and outcome.integrations_changed == ("svc",)
        await stub.Call(call(), timeout=5)
    assert [form(s.body)["client_secret"] for s in token.seen] == [[CLIENT_SECRET],
                                                                    [new_secret]]
    assert sent_tokens(upstream) == ["Bearer tok-1", "Bearer tok-2"]

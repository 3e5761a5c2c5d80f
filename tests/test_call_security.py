"""Call's security and transport guarantees over real sockets: only the configured
base URL is reachable, redirects are answers, credentials come from the
environment and never leak, TLS is verified, and limits hold.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.clock import FakeClock
from sidecar.config import ConfigError, parse_config
from tests.call_support import call, integration, running
from tests.certs import CLIENT_CN, Pki, make_pki, openssl_available
from tests.fuzzing import examples
from tests.rpc_support import rich_error
from tests.upstream import Action, Upstream, reply

#: Looks like a real credential and occurs nowhere by accident.
TOKEN = "sk_live_" + secrets.token_hex(16)
API_KEY = "ak_" + secrets.token_hex(16)
PASSWORD = "pw_" + secrets.token_hex(16)
#: What an HTTP Basic header carries: the password is not in it as such.
BASIC = base64.b64encode(f"AC-account-7:{PASSWORD}".encode()).decode()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def other() -> AsyncIterator[Upstream]:
    """A second upstream on another port: nothing meant for ``upstream`` may reach it."""
    up = await Upstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def closed_url() -> str:
    """The URL of a port nobody listens on any more."""
    up = await Upstream().start()
    await up.stop()
    return up.url


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not openssl_available():
        pytest.skip("the openssl CLI is not on PATH; the TLS tests make their certificates "
                    "with it")
    return make_pki(tmp_path_factory.mktemp("pki"))


def bearer(**overrides: object) -> dict[str, object]:
    return {"type": "bearer", "token_env": "SVC_TOKEN", **overrides}


def basic() -> dict[str, object]:
    return {"type": "basic", "username_env": "SVC_USER", "password_env": "SVC_PASSWORD"}


ENV = {"SVC_TOKEN": TOKEN, "SVC_API_KEY": API_KEY, "SVC_USER": "AC-account-7",
       "SVC_PASSWORD": PASSWORD}


async def fails(stub: pb_grpc.SidecarServiceStub, request: pb.CallRequest
                ) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Call(request, timeout=5)
    return info.value


def capture(into: list[list[str]], header: str, then: Action) -> Action:
    """Records every value of ``header`` the upstream received, then answers with ``then``."""

    async def act(request: web.Request) -> web.StreamResponse:
        into.append(request.headers.getall(header, []))
        return await then(request)

    return act


# --------------------------------------------------------------------------- paths

ESCAPES = [
    "../secret",
    "/../secret",
    "a/../../x",
    "%2e%2e/x",
    "%2E%2E/x",
    ".%2e/x",
    "a/%2e%2e/%2e%2e/x",
    "..%2fx",
    "a%2Fb",
    "a%2fb",
    "a\\..\\..\\x",
    "a?x=1",
    "a#frag",
    "a\r\nX-Injected: 1",
    "a\x00b",
    "a\tb",
    "a%0d%0aX-Injected: 1",
    "a%00b",
]


async def test_path_escapes_are_refused_before_anything_is_sent(
        tmp_path: Path, upstream: Upstream, other: Upstream) -> None:
    host = other.url.removeprefix("http://")
    escapes = [*ESCAPES, f"{other.url}/x", f"//{host}/x", f"HTTP://{host}/x",
               f"http:{host}/x", f"http:/{host}/x", f"https://{host}/x"]
    outcomes = {}
    async with running(tmp_path, {"svc": integration(upstream.url + "/api")}) as (_, stub):
        for path in escapes:
            err = rich_error(await fails(stub, call(path=path)))
            outcomes[path] = (err.code, err.reason, [f for f, _ in err.violations])
    refused = (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["path"])
    assert {p: o for p, o in outcomes.items() if o != refused} == {}
    assert upstream.seen == [] and other.seen == []


@pytest.mark.parametrize(("path", "expected"), [
    ("users:search", "/api/users:search"),
    ("a/./b", "/api/a/b"),
    ("v1/items/", "/api/v1/items/"),
    ("/leading/slash", "/api/leading/slash"),
    ("a/b/../c", "/api/a/c"),
    ("", "/api"),
    ("caf%C3%A9/x y", "/api/café/x y"),
])
async def test_legit_paths_reach_the_upstream_under_the_base_path(
        tmp_path: Path, upstream: Upstream, path: str, expected: str) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url + "/api")}) as (_, stub):
        resp = await stub.Call(call(path=path), timeout=5)
    assert resp.status == 200
    assert [s.path for s in upstream.seen] == [expected]


def record_raw_paths(upstream: Upstream) -> list[str]:
    """The request targets the upstream receives from now on, as sent (not decoded)."""
    raw: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        raw.append(request.raw_path)
        return web.Response(text="ok")

    upstream.default = record
    return raw


async def test_double_encoded_dots_stay_a_literal_segment(tmp_path: Path,
                                                          upstream: Upstream) -> None:
    raw = record_raw_paths(upstream)
    async with running(tmp_path, {"svc": integration(upstream.url + "/api")}) as (_, stub):
        resp = await stub.Call(call(path="%252e%252e/x"), timeout=5)
    assert resp.status == 200
    # One decode gives "%2e%2e", a name, not "..": it is re-encoded, not resolved.
    assert raw == ["/api/%252e%252e/x"]


VERSION_ESCAPES = ["../../x", "..", "%2e%2e", "v1/../..", "v1/..;/x", "..;", ".", "v1%2f..",
                   "v1\\..", "v1?x=1", "v1#f", "v1 x", "v1\r\nX-Injected: 1", "v1\x00"]


async def test_an_api_version_path_prefix_never_leaves_the_base_path(
        tmp_path: Path, upstream: Upstream) -> None:
    """The version prefix goes through the same builder and the same final check as the
    path: with credentials injected, nothing is sent anywhere for any of these."""
    svc = integration(upstream.url + "/api", auth=bearer(),
                      api_version={"version": "v1", "location": "path"})
    outcomes = {}
    async with running(tmp_path, {"svc": svc}, env=ENV) as (_, stub):
        for version in VERSION_ESCAPES:
            err = rich_error(await fails(stub, call(path="charges", api_version=version)))
            outcomes[version] = (err.code, [f for f, _ in err.violations])
        resp = await stub.Call(call(path="charges", api_version="2024-06-01"), timeout=5)
    refused = (grpc.StatusCode.INVALID_ARGUMENT, ["api_version"])
    assert {v: o for v, o in outcomes.items() if o != refused} == {}
    assert resp.status == 200
    assert [s.path for s in upstream.seen] == ["/api/2024-06-01/charges"]


async def test_an_api_version_header_with_control_characters_is_refused(
        tmp_path: Path, upstream: Upstream) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url, api_version={
            "version": "v1", "location": "header"})}) as (_, stub):
        err = rich_error(await fails(stub, call(api_version="v2\r\nX-Injected: 1")))
    assert (err.code, [f for f, _ in err.violations]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                          ["api_version"])
    assert upstream.seen == []


async def test_percent_escapes_reach_the_upstream_byte_for_byte(tmp_path: Path,
                                                                upstream: Upstream) -> None:
    raw = record_raw_paths(upstream)
    async with running(tmp_path, {"svc": integration(upstream.url + "/api")}) as (_, stub):
        for path in ("a/%ff/b", "caf%c3%a9;v=%2e/x y", "a/%2E%2Ex"):
            assert (await stub.Call(call(path=path), timeout=5)).status == 200
    # Not re-encoded, not upper-cased, not decoded: what the caller wrote (a raw space
    # encoded); "%2E%2Ex" is a name, not a dot segment.
    assert raw == ["/api/a/%ff/b", "/api/caf%c3%a9;v=%2e/x%20y", "/api/a/%2E%2Ex"]


#: Header value text: anything a protobuf string holds, controls and odd spaces likely.
HEADER_TEXT = st.text(st.one_of(st.characters(codec="utf-8"),
                                st.sampled_from("\x00\x01\t\n\r\x0b\x7f\x85\u2028 ")),
                      max_size=12)


@settings(max_examples=examples(8), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(HEADER_TEXT, min_size=25, max_size=25))
async def test_any_header_value_is_sent_or_refused_naming_it(
        tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
        values: list[str]) -> None:
    """Never INTERNAL: a value is sent as it is, or refused (INVALID_ARGUMENT naming
    ``headers[0].value``) when it holds a control character other than tab."""
    seen = len(upstream.seen)
    async with running(tmp_path_factory.mktemp("hdr"),
                       {"svc": integration(upstream.url)}) as (_, stub):
        for value in values:
            try:
                resp = await stub.Call(call(headers={"X-Value": value}), timeout=5)
            except grpc.aio.AioRpcError as err:
                rich = rich_error(err)
                assert (rich.code, [f for f, _ in rich.violations]) == (
                    grpc.StatusCode.INVALID_ARGUMENT, ["headers[0].value"]), (value, rich)
                assert any(c in value for c in "\x00\x01\n\r\x0b\x7f") or any(
                    ord(c) < 32 and c != "\t" for c in value), value
                continue
            assert resp.status == 200, value
            seen += 1
            # HTTP strips a value's surrounding spaces and tabs; the rest arrives as sent.
            assert upstream.seen[seen - 1].headers.get("X-Value", "") == value.strip(" \t")


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_off_host_redirect_is_the_answer_and_is_not_followed(
        tmp_path: Path, upstream: Upstream, other: Upstream, status: int) -> None:
    location = other.url + "/steal"
    upstream.default = reply(status, b"moved", {"Location": location})
    svc = integration(upstream.url, auth=bearer())
    async with running(tmp_path, {"svc": svc}, env=ENV) as (_, stub):
        resp = await stub.Call(call(method="POST", path="pay", body=b"{}"), timeout=5)
    assert (resp.status, resp.body, resp.attempts) == (status, b"moved", 1)
    assert ("Location", location) in [(h.name, h.value) for h in resp.headers]
    assert len(upstream.seen) == 1
    assert other.seen == []  # the token went nowhere but the configured host


async def test_same_host_redirect_is_returned_to_the_caller(tmp_path: Path,
                                                            upstream: Upstream) -> None:
    upstream.then(reply(302, b"", {"Location": "/api/elsewhere"}))
    async with running(tmp_path, {"svc": integration(upstream.url + "/api")}) as (_, stub):
        resp = await stub.Call(call(path="here"), timeout=5)
    assert resp.status == 302
    assert ("Location", "/api/elsewhere") in [(h.name, h.value) for h in resp.headers]
    assert [s.path for s in upstream.seen] == ["/api/here"]


# --------------------------------------------------------------------------- auth


async def test_bearer_token_is_sent_on_every_attempt_and_callers_cannot_override_it(
        tmp_path: Path, upstream: Upstream) -> None:
    got: list[list[str]] = []
    upstream.then(capture(got, "Authorization", reply(503)),
                  capture(got, "Authorization", reply(200)))
    async with running(tmp_path, {"svc": integration(upstream.url, auth=bearer())},
                       env=ENV) as (_, stub):
        resp = await stub.Call(call(headers={"Authorization": "Bearer attacker",
                                             "authorization": "Basic YTpi"}), timeout=5)
    assert (resp.status, resp.attempts) == (200, 2)
    assert got == [[f"Bearer {TOKEN}"], [f"Bearer {TOKEN}"]]


async def test_api_key_header_is_sent_on_every_attempt_and_callers_cannot_override_it(
        tmp_path: Path, upstream: Upstream) -> None:
    got: list[list[str]] = []
    upstream.then(capture(got, "X-Api-Key", reply(502)),
                  capture(got, "X-Api-Key", reply(503)),
                  capture(got, "X-Api-Key", reply(200)))
    auth = {"type": "api_key", "header": "X-Api-Key", "value_env": "SVC_API_KEY"}
    async with running(tmp_path, {"svc": integration(upstream.url, auth=auth)},
                       env=ENV) as (_, stub):
        resp = await stub.Call(call(headers={"x-api-key": "attacker"}), timeout=5)
    assert (resp.status, resp.attempts) == (200, 3)
    assert got == [[API_KEY]] * 3


async def test_basic_auth_is_sent_on_every_attempt_and_callers_cannot_override_it(
        tmp_path: Path, upstream: Upstream) -> None:
    got: list[list[str]] = []
    upstream.then(capture(got, "Authorization", reply(503)),
                  capture(got, "Authorization", reply(200)))
    svc = integration(upstream.url, auth=basic(), headers={"Authorization": "Bearer default"})
    async with running(tmp_path, {"svc": svc}, env=ENV) as (_, stub):
        resp = await stub.Call(call(headers={"Authorization": "Basic YTpi"}), timeout=5)
    assert (resp.status, resp.attempts) == (200, 2)
    assert got == [[f"Basic {BASIC}"], [f"Basic {BASIC}"]]


def _leaks(err: grpc.aio.AioRpcError, secret: str) -> list[str]:
    places = {"details": err.details() or "", "debug": err.debug_error_string() or "",
              "str": str(err)}
    for kind, md in (("initial", err.initial_metadata()), ("trailing", err.trailing_metadata())):
        for key, value in md or ():
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            places[f"{kind}:{key}"] = text
    return [where for where, text in places.items() if secret in text]


async def test_secrets_never_appear_in_grpc_errors(tmp_path: Path, upstream: Upstream,
                                                   closed_url: str) -> None:
    auth_key = {"type": "api_key", "header": "X-Api-Key", "value_env": "SVC_API_KEY"}
    integrations = {
        "svc": integration(upstream.url, auth=bearer()),
        "down": integration(closed_url, auth=bearer()),
        "keyed": integration(closed_url, auth=auth_key),
        "basic": integration(closed_url, auth=basic()),
    }
    async with running(tmp_path, integrations, env=ENV) as (_, stub):
        errors = {
            "unreachable": await fails(stub, call(integration="down")),
            "unreachable-key": await fails(stub, call(integration="keyed")),
            "unreachable-basic": await fails(stub, call(integration="basic")),
            "path": await fails(stub, call(path="../x")),
            "header": await fails(stub, call(headers={"Authorization": "x\r\ny"})),
        }
    codes = {name: rich_error(err).reason for name, err in errors.items()}
    assert codes == {"unreachable": "UPSTREAM_UNREACHABLE",
                     "unreachable-key": "UPSTREAM_UNREACHABLE",
                     "unreachable-basic": "UPSTREAM_UNREACHABLE",
                     "path": "INVALID_ARGUMENT", "header": "INVALID_ARGUMENT"}
    leaks = {name: _leaks(err, secret) for name, err in errors.items()
             for secret in (TOKEN, API_KEY, PASSWORD, BASIC) if _leaks(err, secret)}
    assert leaks == {}


def _record_text(records: Iterable[logging.LogRecord]) -> str:
    """Everything a log handler could print, extra fields and tracebacks included."""
    out = []
    for r in records:
        out.append(r.getMessage())
        out.append(repr(vars(r)))
        if r.exc_info:
            out.append(logging.Formatter().formatException(r.exc_info))
    return "\n".join(out)


async def test_secrets_never_appear_in_logs(tmp_path: Path, upstream: Upstream,
                                            closed_url: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth_key = {"type": "api_key", "header": "X-Api-Key", "value_env": "SVC_API_KEY"}
    integrations = {
        "svc": integration(upstream.url, auth=bearer(), retry={
            "on_status": [500], "backoff": {"initial": "1ms", "max": "5ms"}}),
        "keyed": integration(upstream.url, auth=auth_key),
        "basic": integration(upstream.url, auth=basic()),
        "down": integration(closed_url, auth=bearer()),
    }
    upstream.then(reply(200), reply(500), reply(500), reply(500), reply(200), reply(401))
    async with running(tmp_path, integrations, env=ENV) as (_, stub):
        ok = await stub.Call(call(), timeout=5)
        retried = await stub.Call(call(), timeout=5)
        keyed = await stub.Call(call(integration="keyed"), timeout=5)
        refused = await stub.Call(call(integration="basic"), timeout=5)
        down = rich_error(await fails(stub, call(integration="down")))
        bad = rich_error(await fails(stub, call(path="%2e%2e/x")))
    assert (ok.status, retried.status, retried.attempts, keyed.status) == (200, 500, 3, 200)
    assert refused.status == 401
    assert (down.reason, bad.reason) == ("UPSTREAM_UNREACHABLE", "INVALID_ARGUMENT")
    # The capture works: the pipeline's own records are there.
    assert sum(r.getMessage() == "call finished" for r in caplog.records) >= 4
    everything = _record_text(caplog.records)
    for secret in (TOKEN, API_KEY, PASSWORD, BASIC):
        assert secret not in caplog.text and secret not in everything


# --------------------------------------------------------------------------- config


def test_plain_http_base_url_is_refused_unless_explicitly_allowed() -> None:
    def svc(**body: object) -> dict[str, object]:
        return {"integrations": {"svc": body}}

    for url in ("http://api.example.com", "HTTP://api.example.com/v1"):
        with pytest.raises(ConfigError) as info:
            parse_config(svc(base_url=url), {})
        assert [p.field for p in info.value.problems] == ["integrations.svc.base_url"]
        assert "allow_insecure_http" in info.value.problems[0].message
    allowed = parse_config(svc(base_url="http://localhost:8080/v1", allow_insecure_http=True), {})
    assert allowed.integrations["svc"].base_url == "http://localhost:8080/v1"
    assert parse_config(svc(base_url="https://api.example.com"), {}).integrations["svc"]


# --------------------------------------------------------------------------- TLS


@pytest.fixture
async def https_upstream(pki: Pki) -> AsyncIterator[Upstream]:
    up = await Upstream().start(ssl_context=pki.server_context())
    yield up
    await up.stop()


@pytest.fixture
async def mtls_upstream(pki: Pki) -> AsyncIterator[Upstream]:
    up = await Upstream().start(ssl_context=pki.server_context(require_client_cert=True))
    yield up
    await up.stop()


async def test_tls_from_an_unknown_ca_is_refused(tmp_path: Path,
                                                 https_upstream: Upstream) -> None:
    svc = integration(https_upstream.url, auth=bearer())
    async with running(tmp_path, {"svc": svc}, env=ENV) as (_, stub):
        raw = await fails(stub, call())
    err = rich_error(raw)
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TLS_ERROR")
    assert err.metadata["cause"] == "tls" and err.metadata["attempts"] == "1"
    assert "certificate" in err.message
    assert _leaks(raw, TOKEN) == []
    assert https_upstream.seen == []


async def test_tls_with_the_configured_ca_file_succeeds(tmp_path: Path, pki: Pki,
                                                        https_upstream: Upstream) -> None:
    svc = integration(https_upstream.url + "/api", tls={"ca_file": str(pki.ca_cert)})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        resp = await stub.Call(call(path="x"), timeout=5)
    assert resp.status == 200
    assert [s.path for s in https_upstream.seen] == ["/api/x"]


async def test_tls_is_verified_whatever_the_case_of_the_scheme(
        tmp_path: Path, https_upstream: Upstream) -> None:
    url = "HTTPS://" + https_upstream.url.removeprefix("https://") + "/api"
    async with running(tmp_path, {"svc": integration(url)}) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(path="x"), timeout=5)
    assert rich_error(info.value).reason == "UPSTREAM_TLS_ERROR"
    assert https_upstream.seen == []


async def test_tls_verification_can_be_turned_off_explicitly(
        tmp_path: Path, https_upstream: Upstream) -> None:
    svc = integration(https_upstream.url, tls={"verify": False})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert resp.status == 200


async def test_mtls_without_a_client_certificate_fails(tmp_path: Path, pki: Pki,
                                                       mtls_upstream: Upstream) -> None:
    svc = integration(mtls_upstream.url, tls={"ca_file": str(pki.ca_cert)})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        err = rich_error(await fails(stub, call()))
    # With TLS 1.3 the client's side of the handshake is done before the server
    # looks for a certificate; its refusal is an alert on the first read, which
    # aiohttp reports as a plain disconnect. So this is UNREACHABLE with cause
    # "reset" (retried like any reset), not UPSTREAM_TLS_ERROR.
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNREACHABLE")
    assert (err.metadata["cause"], err.metadata["attempts"]) == ("reset", "3")
    assert mtls_upstream.seen == []


async def test_mtls_with_a_client_certificate_succeeds(tmp_path: Path, pki: Pki,
                                                       mtls_upstream: Upstream) -> None:
    peers: list[object] = []

    async def who(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peercert"))
        return web.Response(text="hello")

    mtls_upstream.default = who
    svc = integration(mtls_upstream.url, tls={
        "ca_file": str(pki.ca_cert), "client_cert_file": str(pki.client_cert),
        "client_key_file": str(pki.client_key)})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    assert (resp.status, resp.body) == (200, b"hello")
    assert len(peers) == 1 and isinstance(peers[0], dict)
    assert (("commonName", CLIENT_CN),) in peers[0]["subject"]


# --------------------------------------------------------------------------- bulkhead


class Gate:
    """An upstream action holding every request until the test lets it through."""

    def __init__(self) -> None:
        self.held: list[asyncio.Event] = []
        self.open = False
        self._arrived = asyncio.Condition()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if not self.open:
            release = asyncio.Event()
            async with self._arrived:
                self.held.append(release)
                self._arrived.notify_all()
            await release.wait()
        return web.Response(text="through")

    async def holding(self, count: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.held) >= count)

    def release_all(self) -> None:
        self.open = True
        for release in self.held:
            release.set()


class WatchedClock(FakeClock):
    """A fake clock that tells when someone starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.slept = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.slept.set()
        await super().sleep(seconds)


async def test_full_bulkhead_fails_fast_and_sends_nothing(tmp_path: Path,
                                                          upstream: Upstream) -> None:
    gate = Gate()
    upstream.default = gate
    svc = integration(upstream.url, bulkhead={"max_concurrent": 2, "max_wait": "50ms"})
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        held = [asyncio.ensure_future(stub.Call(call(path=f"held/{i}"), timeout=5))
                for i in range(2)]
        async with asyncio.timeout(5):
            await gate.holding(2)
        started = time.monotonic()
        err = rich_error(await fails(stub, call(path="third")))
        waited = time.monotonic() - started
        assert len(upstream.seen) == 2
        gate.release_all()
        answers = await asyncio.gather(*held)
        after = await stub.Call(call(path="after"), timeout=5)
    assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BULKHEAD_FULL")
    assert err.metadata == {"integration": "svc", "limit": "2", "attempts": "0",
                            "upstream_reached": "no"}
    assert waited < 1.0
    assert [a.status for a in answers] == [200, 200] and after.status == 200
    assert sorted(s.path for s in upstream.seen) == ["/after", "/held/0", "/held/1"]


async def test_bulkhead_waiter_gets_the_first_freed_slot(tmp_path: Path,
                                                         upstream: Upstream) -> None:
    gate = Gate()
    upstream.default = gate
    clock = WatchedClock()
    svc = integration(upstream.url, bulkhead={"max_concurrent": 2, "max_wait": "5s"})
    async with running(tmp_path, {"svc": svc}, clock=clock) as (_, stub):
        held = [asyncio.ensure_future(stub.Call(call(path=f"held/{i}"), timeout=5))
                for i in range(2)]
        async with asyncio.timeout(5):
            await gate.holding(2)
        waiter = asyncio.ensure_future(stub.Call(call(path="waiter"), timeout=5))
        async with asyncio.timeout(5):
            await clock.slept.wait()  # the waiter's max_wait timer: it is queued
        assert len(upstream.seen) == 2 and not waiter.done()
        gate.held[0].set()  # whichever arrived first; the other stays held
        async with asyncio.timeout(5):
            done, still_held = await asyncio.wait(held, return_when=asyncio.FIRST_COMPLETED)
            await gate.holding(3)
        assert len(done) == 1 and upstream.seen[-1].path == "/waiter"
        gate.release_all()
        rest = await asyncio.gather(*still_held, waiter)
    assert [t.result().status for t in done] == [200] and [r.status for r in rest] == [200, 200]


# --------------------------------------------------------------------------- size limits


def chunked(size: int, chunk: int = 1024) -> Action:
    """Streams ``size`` bytes with no Content-Length, so only counting can stop it."""

    async def act(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        while sent < size:
            n = min(chunk, size - sent)
            await resp.write(b"x" * n)
            sent += n
        await resp.write_eof()
        return resp

    return act


async def test_response_over_the_limit_is_resource_exhausted(tmp_path: Path,
                                                             upstream: Upstream) -> None:
    upstream.then(reply(200, b"x" * 1024), reply(200, b"x" * 1025), chunked(1024),
                  chunked(8 * 1024))
    svc = integration(upstream.url, max_response_bytes=1024)
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        at_limit = await stub.Call(call(), timeout=5)
        declared = rich_error(await fails(stub, call()))
        streamed_at_limit = await stub.Call(call(), timeout=5)
        streamed = rich_error(await fails(stub, call()))
    assert len(at_limit.body) == 1024 and len(streamed_at_limit.body) == 1024
    for err in (declared, streamed):
        assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          "RESPONSE_TOO_LARGE")
    assert len(upstream.seen) == 4  # too large is not retried


async def test_request_body_over_the_limit_is_refused_before_sending(
        tmp_path: Path, upstream: Upstream) -> None:
    svc = integration(upstream.url, max_request_bytes=16)
    async with running(tmp_path, {"svc": svc}) as (_, stub):
        err = rich_error(await fails(stub, call(method="POST", body=b"y" * 17)))
        assert upstream.seen == []
        ok = await stub.Call(call(method="POST", body=b"y" * 16), timeout=5)
    assert (err.code, [f for f, _ in err.violations]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                          ["body"])
    assert ok.status == 200 and [s.body for s in upstream.seen] == [b"y" * 16]


# --------------------------------------------------------------------------- hop-by-hop


def hop_by_hop(connection: str) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "application/json", "Connection": connection,
            "Keep-Alive": "timeout=5, max=100", "Proxy-Connection": "keep-alive",
            "X-Hop": "named-in-connection", "X-End": "end-to-end"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"ok": true}')
        await resp.write_eof()
        return resp

    return act


async def test_hop_by_hop_response_headers_are_not_returned(tmp_path: Path,
                                                            upstream: Upstream) -> None:
    upstream.default = hop_by_hop("keep-alive")
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    names = {h.name.lower(): h.value for h in resp.headers}
    assert resp.body == b'{"ok": true}'
    assert {"connection", "keep-alive", "transfer-encoding", "proxy-connection"} & set(names) \
        == set()
    assert names["content-type"] == "application/json" and names["x-end"] == "end-to-end"


async def test_headers_named_in_connection_are_not_returned(tmp_path: Path,
                                                            upstream: Upstream) -> None:
    upstream.default = hop_by_hop("keep-alive, X-Hop")
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        resp = await stub.Call(call(), timeout=5)
    names = {h.name.lower() for h in resp.headers}
    assert "x-end" in names and "x-hop" not in names


@pytest.mark.parametrize("name", ["Connection", "Transfer-Encoding", "Keep-Alive", "TE",
                                  "Upgrade", "Host", "Content-Length"])
async def test_callers_cannot_send_connection_level_headers(tmp_path: Path,
                                                            upstream: Upstream,
                                                            name: str) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        err = rich_error(await fails(stub, call(method="POST", body=b"x",
                                                headers={name: "chunked"})))
    assert (err.code, [f for f, _ in err.violations]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                          ["headers[0].name"])
    assert upstream.seen == []

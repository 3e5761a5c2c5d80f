"""Every token a WebSocket client can send gets an identity with the right types or a
documented refusal (#14): never an exception (an HTTP 500 with a traceback before),
never a claim of the wrong JSON type accepted and mis-handled later."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.app import Sidecar
from sidecar.config import JwtConfig, Secret
from sidecar.edge import jwt_auth
from sidecar.edge.jwt_auth import REASONS, AuthError, Identity, TokenVerifier
from tests.conftest import make_config
from tests.fuzzing import examples

ROOT = Path(__file__).resolve().parent.parent
SECRET = "jwt-test-hmac-secret-0123456789abcdef"
VERIFIER = TokenVerifier(JwtConfig(algorithms=("HS256",), hs256_secret=Secret("WS", SECRET)))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=6)
CLAIMS = st.fixed_dictionaries({}, optional={
    "sub": JSON | st.text(max_size=300), "exp": JSON, "nbf": JSON, "iat": JSON,
    "roles": JSON, "topics": JSON, "aud": JSON, "iss": JSON})
HEADERS = st.fixed_dictionaries({}, optional={
    "kid": JSON, "crit": JSON, "typ": JSON, "cty": JSON, "x5u": JSON, "jku": JSON,
    "b64": JSON, "zip": JSON})


def check(token: str) -> None:
    try:
        identity = VERIFIER.verify(token, time.time())
    except AuthError as exc:
        assert exc.reason in REASONS, exc.reason
        return
    assert isinstance(identity, Identity)
    assert isinstance(identity.user, str) and 0 < len(identity.user) <= 256
    assert all(isinstance(r, str) and r for r in identity.roles + identity.topics)
    assert identity.expires_at is None or 0 <= identity.expires_at <= jwt_auth.MAX_TIME


@settings(max_examples=examples(400), deadline=None)
@given(claims=CLAIMS, headers=HEADERS)
@example(claims={"sub": "a", "exp": 1e300}, headers={})
@example(claims={"sub": ""}, headers={})
@example(claims={"sub": "a", "roles": [1, {"x": 2}]}, headers={})
@example(claims={"sub": "a"}, headers={"crit": ["foo"], "foo": 1})
def test_any_validly_signed_token_is_an_identity_or_a_documented_refusal(
        claims: dict[str, Any], headers: dict[str, Any]) -> None:
    try:
        token = jwt.encode(claims, SECRET, algorithm="HS256", headers=headers)
    except (TypeError, ValueError, jwt.InvalidTokenError):
        return  # PyJWT will not even write it (NaN, non-string keys...)
    check(token)


@settings(max_examples=examples(300), deadline=None)
@given(token=st.text(max_size=200) | st.lists(st.text(max_size=40), min_size=3,
                                               max_size=3).map(".".join))
def test_any_string_is_an_identity_or_a_documented_refusal(token: str) -> None:
    check(token)


@pytest.mark.parametrize(("claims", "reason"), [
    ({"sub": ""}, "invalid_claims"),
    ({"sub": "a", "exp": 1e300}, "invalid_claims"),
    ({"sub": "a", "nbf": True}, "invalid_claims"),
    ({"sub": "a", "roles": [1, 2]}, "invalid_claims"),
    ({"sub": "a", "topics": {"x": 1}}, "invalid_claims"),
    ({"sub": "a", "nbf": int(time.time()) + 3600}, "not_yet_valid"),
    ({"sub": "a\nb"}, "invalid_claims"),
])
def test_claims_of_the_wrong_type_or_value_are_refused(claims: dict[str, Any],
                                                       reason: str) -> None:
    with pytest.raises(AuthError) as info:
        VERIFIER.verify(jwt.encode(claims, SECRET, algorithm="HS256"), time.time())
    assert info.value.reason == reason


def test_every_refusal_reason_is_in_the_code_list_and_documented() -> None:
    sources = (ROOT / "sidecar" / "edge" / "jwt_auth.py").read_text() + \
        (ROOT / "sidecar" / "edge" / "websocket.py").read_text()
    raised = set(re.findall(r'AuthError\(\s*"([a-z_]+)"', sources))
    refused = set(re.findall(r'_refuse\(40[13], "([a-z_]+)"', sources))
    assert raised <= set(REASONS) and refused - {"origin"} <= set(REASONS)
    docs = (ROOT / "docs" / "errors.md").read_text()
    assert [r for r in REASONS if f"`{r.upper()}`" not in docs] == []


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claims=CLAIMS, headers=HEADERS)
async def test_the_upgrade_answers_a_documented_status_for_any_token(
        tmp_path: Path, claims: dict[str, Any], headers: dict[str, Any]) -> None:
    try:
        token = jwt.encode(claims, SECRET, algorithm="HS256", headers=headers)
    except (TypeError, ValueError, jwt.InvalidTokenError):
        return
    global _SIDECAR
    if _SIDECAR is None:
        _SIDECAR = await _start(tmp_path)
    url = f"http://{_SIDECAR.edge.address}/ws"
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, params={"token": token})
        except aiohttp.WSServerHandshakeError as err:
            assert err.status == 401, err
            async with session.get(url, params={"token": token}, headers={
                    "Connection": "Upgrade", "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
                assert resp.status == 401
                body = json.loads(await resp.text())
            assert body["error"]["reason"].lower() in REASONS
        else:
            await ws.close()


_SIDECAR: Sidecar | None = None


async def _start(tmp_path: Path) -> Sidecar:
    config = make_config(tmp_path, {"realtime": {"websocket": {"jwt": {
        "algorithms": ["HS256"], "hs256_secret_env": "WS"}}}}, env={"WS": SECRET})
    sc = Sidecar(config)
    await sc.start()
    return sc


@pytest.fixture(autouse=True)
async def _stop_the_sidecar() -> Any:
    yield
    global _SIDECAR
    if _SIDECAR is not None:
        await _SIDECAR.stop()
        _SIDECAR = None

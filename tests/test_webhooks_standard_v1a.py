"""Standard Webhooks v1a (Ed25519) through the real paths: the edge's HTTP ingest and
VerifyWebhook over a real gRPC server, a source holding a whsec_ secret and a whpk_ key
(rotation between HMAC and Ed25519), and config-time refusal of unusable keys."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.config import ConfigError
from tests.conftest import make_config
from tests.webhook_support import WHSEC, standard_headers

SIGNING_KEY = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()


def whpk(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "whpk_" + base64.b64encode(raw).decode()


def v1a_headers(body: bytes, private: Ed25519PrivateKey = SIGNING_KEY, msg_id: str = "msg_1",
                ts: int | None = None) -> dict[str, str]:
    """Headers as an Ed25519 Standard Webhooks sender makes them."""
    ts = int(time.time()) if ts is None else ts
    signature = private.sign(f"{msg_id}.{ts}.".encode() + body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": "v1a," + base64.b64encode(signature).decode(),
            "Content-Type": "application/json"}


def mixed_headers(body: bytes, msg_id: str, *, hmac_secret: str,
                  private: Ed25519PrivateKey) -> dict[str, str]:
    """One request signed both ways, ``v1,... v1a,...``, as during a migration."""
    ts = int(time.time())
    v1 = standard_headers(body, secret=hmac_secret, msg_id=msg_id, ts=ts)
    v1a = v1a_headers(body, private, msg_id=msg_id, ts=ts)
    return {**v1, "webhook-signature": f"{v1['webhook-signature']} {v1a['webhook-signature']}"}


def sources_config(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    return {"webhooks": {
        "sources": {"sw": {"scheme": "standard_webhooks", "secrets_env": sorted(env)}},
        "per_ip_rate_limit": {"rate": 1000, "burst": 1000},
    }}


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    env = {"SW_HMAC": WHSEC, "SW_PUBLIC": whpk(SIGNING_KEY)}  # secrets[0], secrets[1]
    sc = Sidecar(make_config(tmp_path, sources_config(tmp_path, env), env=env))
    await sc.start()
    try:
        yield sc
    finally:
        await sc.stop()


async def post(sc: Sidecar, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://{sc.edge.address}/webhooks/sw", data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def event(n: int) -> bytes:
    return json.dumps({"type": "user.created", "data": {"n": n}}).encode()


async def test_edge_accepts_v1a_and_v1_from_one_source(sidecar: Sidecar) -> None:
    status, payload = await post(sidecar, event(1), v1a_headers(event(1), msg_id="msg_ed"))
    assert (status, payload["status"]) == (200, "accepted")
    status, payload = await post(sidecar, event(2), standard_headers(event(2), msg_id="msg_h"))
    assert (status, payload["status"]) == (200, "accepted")
    # Either half of a mixed header is enough.
    for n, (secret, private) in enumerate([(WHSEC, STRANGER), ("whsec_" + "QUFB" * 8,
                                                                SIGNING_KEY)], start=3):
        headers = mixed_headers(event(n), f"msg_mixed{n}", hmac_secret=secret, private=private)
        status, payload = await post(sidecar, event(n), headers)
        assert (status, payload["status"]) == (200, "accepted")
    stored = await sidecar.storage.read_events("webhooks.sw", after=0, limit=10)
    assert [e.attributes["provider_event_id"] for e in stored] == [
        "msg_ed", "msg_h", "msg_mixed3", "msg_mixed4"]
    # The v1a retry of the same id is a duplicate, as for v1.
    status, payload = await post(sidecar, event(1), v1a_headers(event(1), msg_id="msg_ed"))
    assert (status, payload["status"]) == (200, "duplicate")


@pytest.mark.parametrize("tamper", ["stranger", "body", "stale"])
async def test_edge_rejects_bad_v1a_with_401(sidecar: Sidecar, tamper: str) -> None:
    body = event(9)
    # The verdict logged and counted says why, where the sender is told nothing.
    rejected = {"stranger": "invalid_signature", "body": "invalid_signature",
                "stale": "stale_timestamp"}[tamper]
    headers = {
        "stranger": v1a_headers(body, STRANGER),
        "body": v1a_headers(body),
        "stale": v1a_headers(body, ts=int(time.time()) - 301),
    }[tamper]
    sent = body + b" " if tamper == "body" else body
    status, payload = await post(sidecar, sent, headers)
    assert status == 401
    assert payload == {"error": {"reason": "UNAUTHORIZED",
                                 "message": "webhook could not be verified"}}
    assert await sidecar.storage.read_events("webhooks.sw", after=0, limit=10) == []
    assert sidecar.metrics.registry.get_sample_value(
        "sidecar_webhooks_received_total", {"source": "sw", "result": rejected}) == 1


async def test_edge_answers_400_to_a_v1a_that_is_not_base64(sidecar: Sidecar) -> None:
    headers = {**v1a_headers(event(1)), "webhook-signature": "v1a,not*base64"}
    status, _ = await post(sidecar, event(1), headers)
    assert status == 400
    assert sidecar.metrics.registry.get_sample_value(
        "sidecar_webhooks_received_total", {"source": "sw", "result": "malformed"}) == 1


async def test_verify_webhook_rpc_checks_v1a(sidecar: Sidecar) -> None:
    body = event(5)

    async def verify(stub: pb_grpc.SidecarServiceStub, headers: dict[str, str],
                     sent: bytes = body) -> pb.VerifyWebhookResponse:
        verdict: pb.VerifyWebhookResponse = await stub.VerifyWebhook(pb.VerifyWebhookRequest(
            source="sw", headers=[pb.Header(name=k, value=v) for k, v in headers.items()],
            body=sent), timeout=5)
        return verdict

    async with grpc.aio.insecure_channel(sidecar.grpc.address) as channel:
        stub = pb_grpc.SidecarServiceStub(channel)
        ts = int(time.time())
        ok = await verify(stub, v1a_headers(body, msg_id="msg_rpc", ts=ts))
        assert ok.result == pb.VERIFY_RESULT_VALID
        assert (ok.reason, ok.event_id, ok.event_type) == (
            "signature matches secrets[1]", "msg_rpc", "user.created")
        assert ok.timestamp.seconds == ts
        hmac_ok = await verify(stub, standard_headers(body, msg_id="msg_rpc"))
        assert (hmac_ok.result, hmac_ok.reason) == (
            pb.VERIFY_RESULT_VALID, "signature matches secrets[0]")
        mixed = await verify(stub, mixed_headers(body, "msg_rpc", hmac_secret=WHSEC,
                                                 private=STRANGER))
        assert (mixed.result, mixed.reason) == (
            pb.VERIFY_RESULT_VALID, "signature matches secrets[0]")
        stranger = await verify(stub, v1a_headers(body, STRANGER))
        assert (stranger.result, stranger.reason) == (
            pb.VERIFY_RESULT_INVALID_SIGNATURE, "no v1a signature matches any secret")
        tampered = await verify(stub, v1a_headers(body), sent=body + b"x")
        assert tampered.result == pb.VERIFY_RESULT_INVALID_SIGNATURE
        assert (tampered.event_id, tampered.event_type) == ("", "")


@pytest.mark.parametrize(("value", "message"), [
    ("whsk_" + base64.b64encode(b"s" * 32).decode(),
     "secrets[1]: whsk_ is the sender's Ed25519 signing key; "
     "configure the matching whpk_ public key instead"),
    ("whpk_" + base64.b64encode(b"p" * 31).decode(),
     "secrets[1]: whpk_ public key is not base64 of a 32-byte Ed25519 key"),
    ("whpk_not*base64", "secrets[1]: whpk_ public key is not base64 of a 32-byte Ed25519 key"),
])
def test_unusable_keys_are_refused_when_the_config_loads(tmp_path: Path, value: str,
                                                         message: str) -> None:
    env = {"SW_HMAC": WHSEC, "SW_KEY": value}
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, sources_config(tmp_path, env), env=env)
    assert [(p.field, p.message) for p in info.value.problems] == [
        ("webhooks.sources.sw", message)]
    assert value.removeprefix("whsk_").removeprefix("whpk_") not in str(info.value)


def test_cryptography_is_imported_only_to_check_a_v1a_signature() -> None:
    """A sidecar whose webhooks are all HMAC never loads cryptography (see
    test_lazy_loading); the first Ed25519 check does."""
    probe = """
import base64, json, sys
from sidecar.core.webhooks import SchemeConfig, WebhookRequest, validate_scheme_config, verify
from tests.webhook_support import WHSEC, standard_headers
whpk = sys.argv[1]
body = b'{"type": "a"}'
headers = standard_headers(body, ts=100)
request = WebhookRequest(tuple(headers.items()), body)
config = SchemeConfig("standard_webhooks", (WHSEC, whpk))
seen = {"validated": (validate_scheme_config(config), "cryptography" in sys.modules)}
seen["v1"] = (verify(config, request, 100).valid, "cryptography" in sys.modules)
v1a = dict(headers, **{"webhook-signature": "v1a," + base64.b64encode(b"s" * 64).decode()})
verify(config, WebhookRequest(tuple(v1a.items()), body), 100)
seen["v1a"] = "cryptography" in sys.modules
print(json.dumps(seen))
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", probe, whpk(SIGNING_KEY)], cwd=root,
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == {"validated": [[], False], "v1": [True, False],
                                      "v1a": True}

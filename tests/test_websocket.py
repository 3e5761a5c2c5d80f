"""The WebSocket edge over real sockets: JWT auth, rooms, resume, slow consumers,
heartbeats, token expiry, presence; one bus feeding WebSocket and gRPC alike."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from tests.conftest import make_config

HS_SECRET = "ws-test-hmac-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


class Env:
    def __init__(self, sc: Sidecar, stub: pb_grpc.SidecarServiceStub,
                 session: aiohttp.ClientSession, private_key: bytes) -> None:
        self.sc, self.stub, self.session, self.private_key = sc, stub, session, private_key

    def token(self, sub: str = "alice", alg: str = "HS256", **claims: Any) -> str:
        payload = {"sub": sub, "exp": int(time.time()) + 600, **claims}
        key: Any = HS_SECRET if alg.startswith("HS") else self.private_key
        return jwt.encode(payload, key, algorithm=alg)

    def url(self, **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://{self.sc.edge.address}/ws" + (f"?{q}" if q else "")

    async def connect(self, token: str | None = None, **kw: Any) -> aiohttp.ClientWebSocketResponse:
        headers = {"Authorization": f"Bearer {token or self.token()}", **kw.pop("headers", {})}
        ws: aiohttp.ClientWebSocketResponse = await self.session.ws_connect(
            self.url(**kw.pop("query", {})), headers=headers, **kw)
        return ws

    async def refused(self, headers: dict[str, str], url: str | None = None) -> tuple[int, str]:
        async with self.session.get(url or self.url(), headers={
                **headers, "Connection": "Upgrade", "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
            body = await resp.json()
            return resp.status, body["error"]["reason"]

    async def publish(self, topic: str, data: bytes = b'{"x": 1}',
                      content_type: str = "application/json") -> pb.PublishResponse:
        published: pb.PublishResponse = await self.stub.Publish(pb.PublishRequest(
            topic=topic, data=data, content_type=content_type), timeout=5)
        return published


async def frames(ws: aiohttp.ClientWebSocketResponse, n: int, *,
                 events_only: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if events_only and "control" in frame:
            continue
        out.append(frame)
    return out


async def subscribed(ws: aiohttp.ClientWebSocketResponse, count: int) -> set[str]:
    got: set[str] = set()
    while len(got) < count:
        msg = await asyncio.wait_for(ws.receive(), 5)
        frame = json.loads(msg.data)
        if frame.get("control") == "subscribed":
            got.add(frame["topic"])
    return got


@pytest.fixture
async def env(tmp_path: Path, rsa_keys: tuple[bytes, bytes]) -> AsyncIterator[Env]:
    async with started(tmp_path, rsa_keys) as e:
        yield e


class started:
    def __init__(self, tmp_path: Path, keys: tuple[bytes, bytes], **realtime: Any) -> None:
        pub = tmp_path / "jwt.pub.pem"
        pub.write_bytes(keys[1])
        ws = {"jwt": {"algorithms": ["HS256", "RS256"], "hs256_secret_env": "WS_SECRET",
                      "rs256_public_key_file": str(pub), "topics_claim": "topics"},
              "allowed_origins": ["https://app.example"], **realtime.pop("websocket", {})}
        self.config = make_config(tmp_path, {"realtime": {"websocket": ws, **realtime}},
                                  env={"WS_SECRET": HS_SECRET})
        self.private = keys[0]

    async def __aenter__(self) -> Env:
        self.sc = Sidecar(self.config)
        await self.sc.start()
        self.channel = grpc.aio.insecure_channel(self.sc.grpc.address)
        self.session = aiohttp.ClientSession()
        return Env(self.sc, pb_grpc.SidecarServiceStub(self.channel), self.session,
                   self.private)

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.channel.close()
        await self.sc.stop()


# --------------------------------------------------------------------------- auth


async def test_missing_expired_wrong_and_none_tokens_are_refused(env: Env) -> None:
    expired = jwt.encode({"sub": "a", "exp": int(time.time()) - 60}, HS_SECRET,
                         algorithm="HS256")
    wrong = jwt.encode({"sub": "a", "exp": int(time.time()) + 60},
                       "not-the-secret-at-all-but-long-enough-32", algorithm="HS256")
    # PyJWT's hints want a key, but alg "none" takes None (and refuses any real key).
    unsigned = jwt.encode({"sub": "a"}, None, algorithm="none")  # type: ignore[arg-type]
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, HS_SECRET, algorithm="HS256")
    cases = [({}, "MISSING"), ({"Authorization": f"Bearer {expired}"}, "EXPIRED"),
             ({"Authorization": f"Bearer {wrong}"}, "INVALID_SIGNATURE"),
             ({"Authorization": f"Bearer {unsigned}"}, "ALGORITHM"),
             ({"Authorization": f"Bearer {no_sub}"}, "INVALID_CLAIMS"),
             ({"Authorization": "Bearer garbage"}, "MALFORMED")]
    for headers, reason in cases:
        assert await env.refused(headers) == (401, reason)
    text = env.sc.metrics.exposition().decode()
    assert 'sidecar_websocket_auth_failures_total{reason="expired"} 1.0' in text


async def test_hs_rs_algorithm_confusion_is_refused(env: Env,
                                                     rsa_keys: tuple[bytes, bytes]) -> None:
    # The classic attack: sign HS256 with the server's *public* key as the HMAC secret.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": "mallory", "exp": int(time.time()) + 60}).encode())
    sig = hmac.new(rsa_keys[1], f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{b64(sig)}"
    assert await env.refused({"Authorization": f"Bearer {forged}"}) == (401,
                                                                        "INVALID_SIGNATURE")


async def test_rs256_token_and_query_parameter_work(env: Env) -> None:
    ws = await env.session.ws_connect(env.url(token=env.token("carol", alg="RS256")))
    assert "user:carol" in await subscribed(ws, 2)
    await ws.close()


async def test_origin_check(env: Env) -> None:
    token = env.token()
    assert await env.refused({"Authorization": f"Bearer {token}",
                              "Origin": "https://evil.example"}) == (403, "ORIGIN")
    ws = await env.connect(token, headers={"Origin": "https://app.example"})
    await ws.close()


# --------------------------------------------------------------------------- rooms


async def test_rooms_isolate_users_roles_and_broadcast(env: Env) -> None:
    alice = await env.connect(env.token("alice", roles=["admin"]))
    bob = await env.connect(env.token("bob"))
    assert await subscribed(alice, 3) == {"user:alice", "role:admin", "broadcast"}
    assert await subscribed(bob, 2) == {"user:bob", "broadcast"}
    await env.publish("user:alice", b'{"to": "alice"}')
    await env.publish("user:bob", b'{"to": "bob"}')
    await env.publish("role:admin", b'{"to": "admins"}')
    await env.publish("broadcast", b'{"to": "all"}')
    got_alice = [f["data"]["to"] for f in await frames(alice, 3)]
    got_bob = [f["data"]["to"] for f in await frames(bob, 2)]
    assert got_alice == ["alice", "admins", "all"] and got_bob == ["bob", "all"]
    binary = env.publish("user:bob", b"\x00\x01", "application/octet-stream")
    frame = (await asyncio.gather(binary, frames(bob, 1)))[1][0]
    assert frame["data_base64"] == "AAE=" and frame["topic"] == "user:bob"
    await alice.close()
    await bob.close()


async def test_rooms_from_any_claim_value_can_be_addressed(env: Env) -> None:
    # What identity providers really put in tokens: Auth0 subjects, e-mail subjects,
    # roles with spaces and non-ASCII letters.
    sub, roles = "auth0|5f3a9c", ["Org Admin", "Équipe/Ops"]
    ws = await env.connect(env.token(sub, roles=roles))
    assert await subscribed(ws, 4) == {f"user:{sub}", "role:Org Admin", "role:Équipe/Ops",
                                       "broadcast"}
    for topic in (f"user:{sub}", "role:Org Admin", "role:Équipe/Ops"):
        await env.publish(topic, json.dumps({"to": topic}).encode())
    assert [f["data"]["to"] for f in await frames(ws, 3)] == [
        f"user:{sub}", "role:Org Admin", "role:Équipe/Ops"]
    presence = await env.stub.GetPresence(pb.GetPresenceRequest(topic="role:Org Admin"),
                                          timeout=5)
    assert (presence.connections, presence.users) == (1, 1)
    await ws.close()
    mail = await env.connect(env.token("alice@example.com"))
    await subscribed(mail, 2)
    await env.publish("user:alice@example.com", b'{"to": "mail"}')
    assert (await frames(mail, 1))[0]["data"] == {"to": "mail"}
    await mail.close()


async def test_a_claim_value_that_cannot_name_a_room_is_refused(env: Env) -> None:
    for token in (env.token("a\nb"), env.token("alice", roles=["ok", "x" * 257]),
                  env.token("alice", roles=["bad\x00"])):
        status, reason = await env.refused({"Authorization": f"Bearer {token}"})
        assert (status, reason) == (401, "INVALID_CLAIMS"), jwt.decode(
            token, options={"verify_signature": False})


@pytest.mark.parametrize("content_type", [
    "Application/JSON", "application/json; charset=UTF-8",
    "application/cloudevents+json; charset=UTF-8", "APPLICATION/VND.API+JSON"])
async def test_json_is_recognised_as_rfc_9110_compares_media_types(
        env: Env, content_type: str) -> None:
    ws = await env.connect(env.token("alice"))
    await subscribed(ws, 2)
    await env.publish("user:alice", b'{"n": 1}', content_type)
    frame = (await frames(ws, 1))[0]
    assert frame["data"] == {"n": 1} and "data_base64" not in frame
    await ws.close()


async def test_text_in_another_charset_is_sent_whole_not_mangled(env: Env) -> None:
    ws = await env.connect(env.token("alice"))
    await subscribed(ws, 2)
    await env.publish("user:alice", "café".encode("latin-1"), "text/plain; charset=latin-1")
    await env.publish("user:alice", "café".encode(), "TEXT/plain")
    latin, utf8 = await frames(ws, 2)
    assert latin["data_base64"] == "Y2Fm6Q==" and "data" not in latin
    assert utf8["data"] == "café"
    await ws.close()


async def test_subscribe_only_to_topics_the_token_lists(env: Env) -> None:
    ws = await env.connect(env.token("dave", topics=["orders:*"]))
    await subscribed(ws, 2)
    await ws.send_json({"type": "subscribe", "topic": "orders:42"})
    assert await subscribed(ws, 1) == {"orders:42"}
    await ws.send_json({"type": "subscribe", "topic": "user:alice"})
    (err,) = await frames(ws, 1, events_only=False)
    assert err == {"control": "error", "reason": "PERMISSION_DENIED", "topic": "user:alice",
                   "message": "the token does not allow topic 'user:alice'"}
    await env.publish("orders:42", b'{"id": 42}')
    await env.publish("user:alice", b'{"secret": true}')
    await env.publish("orders:42", b'{"id": 43}')
    assert [f["data"]["id"] for f in await frames(ws, 2)] == [42, 43]
    await ws.close()


async def test_one_bus_feeds_grpc_and_websocket(env: Env) -> None:
    ws = await env.connect(env.token("erin"))
    await subscribed(ws, 2)
    stream = env.stub.Subscribe(pb.SubscribeRequest(topics=["user:erin"]))
    # The first message (Subscribed) comes once the stream is on the live bus.
    assert (await asyncio.wait_for(stream.read(), 5)).HasField("subscribed")
    published = await env.publish("user:erin")
    (frame,) = await frames(ws, 1)
    msg = await asyncio.wait_for(stream.read(), 5)
    assert frame["id"] == msg.event.id == published.event_id
    stream.cancel()
    await ws.close()


# --------------------------------------------------------------------------- resume


async def test_resume_delivers_exactly_the_missed_events(env: Env) -> None:
    token = env.token("frank")
    ws = await env.connect(token)
    await subscribed(ws, 2)
    await env.publish("user:frank", b'{"n": 1}')
    (first,) = await frames(ws, 1)
    await ws.close()
    for n in (2, 3, 4):
        await env.publish("user:frank", json.dumps({"n": n}).encode())
    offsets = json.dumps({"user:frank": first["offset"]})
    again = await env.connect(token, query={"offsets": offsets})
    assert [f["data"]["n"] for f in await frames(again, 3)] == [2, 3, 4]
    await env.publish("user:frank", b'{"n": 5}')
    assert [f["data"]["n"] for f in await frames(again, 1)] == [5]
    await again.close()


# --------------------------------------------------------------------------- liveness


async def test_slow_client_is_disconnected_fast_one_keeps_receiving(
        tmp_path: Path, rsa_keys: tuple[bytes, bytes]) -> None:
    async with started(tmp_path, rsa_keys, queue_size=4) as env:
        slow = await env.connect(env.token("slow"), max_msg_size=0)
        fast = await env.connect(env.token("fast"), max_msg_size=0)
        await subscribed(fast, 2)
        big = json.dumps({"pad": "x" * 500_000}).encode()
        received: list[int] = []

        async def drain() -> None:
            while len(received) < 60:
                msg = await asyncio.wait_for(fast.receive(), 10)
                frame = json.loads(msg.data)
                if "control" not in frame:
                    received.append(frame["offset"])

        reader = asyncio.ensure_future(drain())
        for _ in range(60):
            await env.publish("broadcast", big)
        await reader
        assert received == list(range(1, 61))
        # the slow client never read: it is cut off with 4008, in a whole close handshake
        closed = None
        for _ in range(200):
            msg = await asyncio.wait_for(slow.receive(), 10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                closed = slow.close_code
                break
        assert closed == 4008
        text = env.sc.metrics.exposition().decode()
        assert 'sidecar_slow_consumer_events_total{policy="disconnect",transport="ws"}' in text
        await fast.close()


async def test_heartbeat_closes_a_silent_peer(tmp_path: Path,
                                              rsa_keys: tuple[bytes, bytes]) -> None:
    async with started(tmp_path, rsa_keys, websocket={"ping_interval": "200ms"}) as env:
        silent = await env.connect(env.token("ghost"), autoping=False)
        t0 = time.monotonic()
        while True:
            msg = await asyncio.wait_for(silent.receive(), 5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                break
        assert time.monotonic() - t0 < 3


async def test_expired_token_closes_the_connection(env: Env) -> None:
    ws = await env.connect(env.token("gina", exp=int(time.time()) + 1))
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            break
    assert ws.close_code == 4001


async def test_a_token_expiring_at_any_moment_of_the_connection_closes_it_with_4001(
        env: Env) -> None:
    # Expiries 0-38 ms after connecting: during the upgrade, while the rooms are being
    # joined, or while the connection waits for frames. The close is a whole handshake
    # each time; closing from another task cut the connection before the client's close
    # reply, and the client saw 1006 (an abnormal closure) about once in 90.
    codes = []
    for i in range(100):
        ws = await env.connect(env.token("gina", exp=time.time() + 0.002 * (i % 20)))
        while True:
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                break
        codes.append(ws.close_code)
    assert codes == [4001] * 100


async def test_presence_counts_connections_and_users(env: Env) -> None:
    a1 = await env.connect(env.token("alice"))
    a2 = await env.connect(env.token("alice"))
    b = await env.connect(env.token("bob"))
    for ws in (a1, a2, b):
        await subscribed(ws, 2)
    resp = await env.stub.GetPresence(pb.GetPresenceRequest(topic="user:alice"), timeout=5)
    assert (resp.connections, resp.users) == (2, 1)
    everyone = await env.stub.GetPresence(pb.GetPresenceRequest(topic="broadcast"), timeout=5)
    assert (everyone.connections, everyone.users) == (3, 2)
    async with env.session.get(f"http://{env.sc.admin.address}/presence",
                               params={"topic": "broadcast"}) as r:
        assert await r.json() == {"topic": "broadcast", "connections": 3, "users": 2}
    await a2.close()
    for _ in range(200):
        if env.sc.presence.stats("user:alice").connections == 1:
            break
        await asyncio.sleep(0.005)
    assert env.sc.presence.stats("user:alice").connections == 1
    await a1.close()
    await b.close()


async def test_drop_oldest_sends_a_gap_then_the_newest_and_the_client_catches_up(
        tmp_path: Path, rsa_keys: tuple[bytes, bytes]) -> None:
    async with started(tmp_path, rsa_keys, queue_size=4, slow_consumer="drop_oldest") as env:
        slow = await env.connect(env.token("slow"), max_msg_size=0)
        fast = await env.connect(env.token("fast"), max_msg_size=0)
        await subscribed(slow, 2)
        await subscribed(fast, 2)
        big = json.dumps({"pad": "x" * 500_000}).encode()
        reader = asyncio.ensure_future(frames(fast, 60))
        for _ in range(60):  # the slow client reads nothing meanwhile
            await env.publish("broadcast", big)
        assert [f["offset"] for f in await reader] == list(range(1, 61))
        # Now it reads: events in order, a gap marker for each run it lost, the newest last.
        covered: list[int] = []
        gaps = 0
        while not covered or covered[-1] < 60:
            (frame,) = await frames(slow, 1, events_only=False)
            if frame.get("control") == "gap":
                assert frame["reason"] == "slow_consumer" and frame["topic"] == "broadcast"
                covered += range(frame["from_offset"], frame["to_offset"] + 1)
                gaps += 1
            else:
                assert "control" not in frame
                covered.append(frame["offset"])
        assert covered == list(range(1, 61)) and gaps >= 1
        # Caught up: it is written to directly again, like any other client.
        await env.publish("broadcast", b'{"after": true}')
        for ws in (slow, fast):
            (frame,) = await frames(ws, 1)
            assert frame["offset"] == 61 and frame["data"] == {"after": True}
        text = env.sc.metrics.exposition().decode()
        assert f'sidecar_subscription_gaps_total{{reason="slow_consumer"}} {gaps}.0' in text
        await slow.close()
        await fast.close()


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "live_join"])
async def test_drop_oldest_gap_never_covers_what_the_join_already_accounts_for(
        tmp_path: Path, rsa_keys: tuple[bytes, bytes], resume: bool) -> None:
    """Events published while a member reads the log to join (resuming after an offset,
    or reading the head to join live) wait in its backlog, and with a queue of 2 the
    first is dropped; the log read then covers all of them (sent, or at or below the
    announced offset), so no gap may follow for it: a client would see it twice, or a
    gap going back below where it stands."""
    async with started(tmp_path, rsa_keys, queue_size=2, slow_consumer="drop_oldest") as env:
        store = env.sc.storage
        name = "read_events" if resume else "topic_bounds"
        reads = getattr(store, name)
        reading, release = asyncio.Event(), asyncio.Event()

        async def held(topic: str, **kw: int) -> object:
            if topic == "user:kim":
                reading.set()
                await release.wait()
            return await reads(topic, **kw)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store, name, held)
            query = {"offsets": json.dumps({"user:kim": 0})} if resume else {}
            ws = await env.connect(env.token("kim"), query=query)
            await asyncio.wait_for(reading.wait(), 5)
            for n in (1, 2, 3):
                await env.publish("user:kim", json.dumps({"n": n}).encode())
            release.set()
            got: list[dict[str, Any]] = []

            async def until(offset: int) -> None:
                while not got or got[-1].get("offset") != offset:
                    (frame,) = await frames(ws, 1, events_only=False)
                    if frame.get("topic") == "user:kim":
                        got.append(frame)

            await until(3)  # event 3 (resume), or the subscribed frame (live join)
            await env.publish("user:kim", b'{"n": 4}')  # a gap left for 1 comes before it
            await until(4)
        start = 0 if resume else 3
        assert got[0] == {"control": "subscribed", "topic": "user:kim", "offset": start}
        assert [f.get("offset", f) for f in got[1:]] == list(range(start + 1, 5))
        await ws.close()


async def test_resume_past_retention_gap_then_replay_then_live_without_duplicates(
        tmp_path: Path, rsa_keys: tuple[bytes, bytes]) -> None:
    async with started(tmp_path, rsa_keys, max_events_per_topic=5) as env:
        for n in range(1, 11):
            await env.publish("user:ivy", json.dumps({"n": n}).encode())
        await env.sc.prune_once()
        ws = await env.connect(env.token("ivy"), query={"offsets": '{"user:ivy": 1}'})
        # Live events race the replay: each arrives once, in order, after the replayed ones.
        live = asyncio.gather(*(env.publish("user:ivy", json.dumps({"n": n}).encode())
                                for n in range(11, 21)))
        got: list[dict[str, Any]] = []
        while len(got) < 16:  # a gap marker and 15 events, the "subscribed" frames aside
            got += [f for f in await frames(ws, 1, events_only=False)
                    if f.get("control") != "subscribed"]
        await live
        assert got[0] == {"control": "gap", "topic": "user:ivy", "from_offset": 2,
                          "to_offset": 5, "reason": "retention"}
        assert [f["offset"] for f in got[1:]] == list(range(6, 21))
        assert [f["data"]["n"] for f in got[1:]] == list(range(6, 21))
        await ws.close()


async def test_concurrent_publishes_reach_every_client_whole_and_in_order(env: Env) -> None:
    # Publishes committed together are fanned out in one turn of the event loop: each
    # socket gets their frames in one write (or, past 64 KiB, one write per frame).
    clients = [await env.connect(env.token(f"c{i}")) for i in range(3)]
    for ws in clients:
        await subscribed(ws, 2)
    bodies = [json.dumps({"n": n, "pad": "y" * (30_000 if n % 7 == 0 else 10)}).encode()
              for n in range(60)]
    published = await asyncio.gather(*(env.publish("broadcast", b) for b in bodies))
    by_offset = {p.offset: n for n, p in enumerate(published)}
    for ws in clients:
        got = await frames(ws, 60)
        assert [f["offset"] for f in got] == sorted(by_offset)
        assert [f["data"]["n"] for f in got] == [by_offset[f["offset"]] for f in got]
        await ws.close()


async def test_shutdown_closes_clients_with_1001(env: Env) -> None:
    ws = await env.connect(env.token("hal"))
    await subscribed(ws, 2)
    await env.publish("broadcast", b'{"before": true}')
    (frame,) = await frames(ws, 1)
    assert frame["data"] == {"before": True}
    await env.sc.stop()
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1001,
                                               "server shutting down")
    assert env.sc.live.subscriber_count("broadcast") == 0


# --------------------------------------------------------------------------- subscribed offsets


async def announced(ws: aiohttp.ClientWebSocketResponse, count: int,
                    early: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """``count`` subscribed frames: topic -> the offset the room continues after.

    Rooms are joined concurrently, so one room's events may arrive before another
    room's subscribed frame: those go to ``early`` (when given), and each must belong
    to a room already announced - nothing of a room comes before its subscribed frame."""
    got: dict[str, int] = {}
    while len(got) < count:
        frame = (await frames(ws, 1, events_only=False))[0]
        if "control" not in frame:
            assert early is not None and frame["topic"] in got, frame
            early.append(frame)
        elif frame["control"] == "subscribed":
            got[frame["topic"]] = frame["offset"]
    return got


async def test_subscribed_frames_carry_the_offset_each_room_continues_after(env: Env) -> None:
    for _ in range(2):
        await env.publish("user:fay")
    for _ in range(3):
        await env.publish("orders:7")
    first = await env.connect(env.token("fay", topics=["orders:*"]))
    assert await announced(first, 2) == {"user:fay": 2, "broadcast": 0}
    await first.send_json({"type": "subscribe", "topic": "orders:7"})
    assert await announced(first, 1) == {"orders:7": 3}
    await first.send_json({"type": "subscribe", "topic": "orders:8", "offset": 5})
    assert await announced(first, 1) == {"orders:8": 5}
    # A second connection joins rooms that already exist (and know their head).
    await env.publish("user:fay")
    second = await env.connect(env.token("fay"))
    assert await announced(second, 2) == {"user:fay": 3, "broadcast": 0}
    published = await env.publish("user:fay")
    assert [f["offset"] for f in await frames(first, 2)] == [3, published.offset]
    assert [f["offset"] for f in await frames(second, 1)] == [published.offset]
    await first.close()
    await second.close()


async def test_live_join_seam_is_exact_while_publishes_race_it(env: Env) -> None:
    """Events in flight while connections join: each gets every event after the offset
    its subscribed frame announced, once and in order, and none before it."""
    for _ in range(3):
        await env.publish("user:gus")
    racing = asyncio.gather(*(env.publish("user:gus") for _ in range(30)))
    sockets = [await env.connect(env.token("gus")) for _ in range(3)]
    early: list[list[dict[str, Any]]] = [[] for _ in sockets]
    starts = [(await announced(ws, 2, seen))["user:gus"]
              for ws, seen in zip(sockets, early, strict=True)]
    await racing
    last = (await env.publish("user:gus")).offset
    for ws, start, seen in zip(sockets, starts, early, strict=True):
        got = [f["offset"] for f in seen]
        got += [f["offset"] for f in await frames(ws, last - start - len(seen))]
        assert got == list(range(start + 1, last + 1))
        await ws.close()


async def test_reconnecting_with_the_announced_offset_gets_what_was_missed(
        tmp_path: Path, rsa_keys: tuple[bytes, bytes]) -> None:
    """Connected to a room with no event yet, the sidecar restarts, events are published
    before the client comes back: resuming after the announced offset delivers them."""
    async with started(tmp_path, rsa_keys) as env:
        ws = await env.connect(env.token("hal", topics=["orders:*"]))
        offsets = await announced(ws, 2)
        assert offsets == {"user:hal": 0, "broadcast": 0}
    async with started(tmp_path, rsa_keys) as env:
        missed = [await env.publish("user:hal", str(i).encode()) for i in range(3)]
        resume = json.dumps(offsets)
        ws = await env.connect(env.token("hal"), query={"offsets": resume})
        early: list[dict[str, Any]] = []
        assert await announced(ws, 2, early) == offsets
        got = early + await frames(ws, 3 - len(early))
        assert [f["id"] for f in got] == [p.event_id for p in missed]
        await ws.close()


# --------------------------------------------------------------------------- close races


async def close_codes(clients: list[aiohttp.ClientWebSocketResponse]) -> list[int | None]:
    """Each client reads until its connection ends: the close code it saw (1006, an
    abnormal closure, when the server cut the connection without a whole handshake)."""

    async def one(ws: aiohttp.ClientWebSocketResponse) -> int | None:
        while True:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                return ws.close_code

    return list(await asyncio.gather(*(one(ws) for ws in clients)))


async def test_shutdown_closes_every_connection_with_a_whole_1001_handshake(
        env: Env) -> None:
    # Closing from another task while the handler waits in receive() cut the connection
    # before the client's close reply: a client busy elsewhere while the sidecar stopped
    # (it reads afterwards) saw 1006. Half the clients read throughout, half after.
    clients = [await env.connect(env.token(f"u{i}")) for i in range(40)]
    for ws in clients:
        await subscribed(ws, 2)
    reading = asyncio.ensure_future(close_codes(clients[:20]))
    await env.sc.stop()
    codes = await reading + await close_codes(clients[20:])
    assert codes == [1001] * 40


async def test_slow_consumers_are_closed_with_a_whole_4008_handshake(
        tmp_path: Path, rsa_keys: tuple[bytes, bytes]) -> None:
    # Clients that read nothing until the sidecar gives up on them, then read: each
    # gets what was sent, then the 4008 close frame, in a whole close handshake.
    codes: list[int | None] = []
    big = json.dumps({"pad": "x" * 200_000}).encode()
    for round_ in range(3):
        (tmp_path / str(round_)).mkdir()
        async with started(tmp_path / str(round_), rsa_keys, queue_size=2) as env:
            clients = [await env.connect(env.token(f"s{i}"), max_msg_size=0)
                       for i in range(20)]
            for ws in clients:
                await subscribed(ws, 2)
            for _ in range(500):
                if env.sc.live.subscriber_count("broadcast") == 0:
                    break  # every one of them was found slow
                await env.publish("broadcast", big)
            assert env.sc.live.subscriber_count("broadcast") == 0
            codes += await close_codes(clients)
    assert codes == [4008] * len(codes)

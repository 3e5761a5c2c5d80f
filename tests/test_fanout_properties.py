"""The fan-out contract, one property suite for both transports: a real sidecar, a real
gRPC ``Subscribe`` stream or a real WebSocket connection, and generated sequences of
publishes, slow-reader pauses, reads and resubscriptions (resuming after an offset,
some racing publishes).

What a subscriber relies on, checked on every frame it receives:

* per topic, every event after the offset its subscription announced arrives in offset
  order with the data published at that offset, or lies in a Gap that names exactly
  the missing range (it starts right after the last offset received): nothing lost,
  nothing twice, also across the seam from the replay to live events;
* the slow-consumer policy is the one configured: ``drop_oldest`` reports what it
  dropped in ``slow_consumer`` gaps and never disconnects; ``disconnect`` never skips
  an event and ends the subscription (gRPC RESOURCE_EXHAUSTED ``SLOW_CONSUMER``,
  WebSocket close 4008), after which resuming from the last offset received gets the
  rest;
* each feed's backlog on the server never holds more than ``queue_size`` events;
* after a read, every published event is accounted for.

A pause publishes large events to a topic while the client reads nothing, until the
policy acted on the server's feed for it (events dropped, or it was disconnected), then
a few more: no sleeping, and every pause does make a slow consumer.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import grpc
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from tests.conftest import make_config
from tests.fuzzing import examples

SECRET = "fan-out-property-secret-0123456789abcdef"
QUEUE = 4
#: Data bytes of a pause's events: a few fill a gRPC stream's flow-control window, a few
#: dozen the loopback socket buffers under a WebSocket.
BIG = 64 * 1024
#: Frames one read may take before the suite calls the stream stuck.
READ_TIMEOUT = 10.0
#: At most this many events in one pause before its feed must have fallen behind.
PAUSE_BOUND = 400

_names = itertools.count()

# An item as a client sees it:
#   ("subscribed", {topic: offset}) | ("event", topic, offset, data)
#   | ("gap", topic, from, to, reason) | ("end", why)
Item = tuple[Any, ...]


class Subscription(Protocol):
    async def next(self) -> Item: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    name: str
    #: What the server's slow-consumer metric calls this transport.
    label: str

    async def open(self, topics: list[str], after: Mapping[str, int]) -> Subscription: ...


# --------------------------------------------------------------------------- gRPC


class _GrpcSubscription:
    def __init__(self, call: Any) -> None:
        self.call = call

    async def next(self) -> Item:
        while True:
            try:
                msg = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return ("end", "slow_consumer")
                raise
            if msg is grpc.aio.EOF:
                return ("end", "eof")
            kind = msg.WhichOneof("message")
            if kind == "subscribed":
                return ("subscribed", dict(msg.subscribed.offsets))
            if kind == "event":
                e = msg.event
                return ("event", e.topic, e.offset, e.data)
            if kind == "gap":
                g = msg.gap
                reason = ("retention" if g.reason == pb.GAP_REASON_RETENTION
                          else "slow_consumer")
                return ("gap", g.topic, g.from_offset, g.to_offset, reason)
            # a heartbeat: read on

    async def close(self) -> None:
        self.call.cancel()


class _Grpc:
    name = "grpc"
    label = "grpc"

    def __init__(self, stub: pb_grpc.SidecarServiceStub) -> None:
        self.stub = stub

    async def open(self, topics: list[str], after: Mapping[str, int]) -> Subscription:
        start = pb.START_POSITION_AFTER_OFFSET if after else pb.START_POSITION_LATEST
        return _GrpcSubscription(self.stub.Subscribe(pb.SubscribeRequest(
            topics=topics, start=start, after_offsets=dict(after))))


# --------------------------------------------------------------------------- WebSocket


class _WsSubscription:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, topics: list[str]) -> None:
        self.ws = ws
        self.topics = set(topics)

    async def next(self) -> Item:
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), READ_TIMEOUT)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                code = self.ws.close_code
                return ("end", "slow_consumer" if code == 4008 else f"closed {code}")
            frame = json.loads(msg.data)
            if frame.get("topic") not in self.topics:
                continue  # the connection's own rooms (user:..., broadcast)
            control = frame.get("control")
            if control == "subscribed":
                return ("subscribed", {frame["topic"]: frame["offset"]})
            if control == "gap":
                return ("gap", frame["topic"], frame["from_offset"], frame["to_offset"],
                        frame["reason"])
            assert control is None, frame  # an error frame has no place here
            return ("event", frame["topic"], frame["offset"],
                    base64.b64decode(frame["data_base64"]))

    async def close(self) -> None:
        await self.ws.close()


class _WebSocket:
    name = "websocket"
    label = "ws"

    def __init__(self, sc: Sidecar, session: aiohttp.ClientSession) -> None:
        self.sc = sc
        self.session = session

    async def open(self, topics: list[str], after: Mapping[str, int]) -> Subscription:
        token = jwt.encode({"sub": f"fan{next(_names)}", "exp": int(time.time()) + 600,
                            "topics": ["fx.*"]}, SECRET, algorithm="HS256")
        query = f"?offsets={json.dumps(dict(after))}" if after else ""
        ws = await self.session.ws_connect(f"http://{self.sc.edge.address}/ws{query}",
                                           headers={"Authorization": f"Bearer {token}"},
                                           max_msg_size=0)
        for topic in topics:
            if topic not in after:
                await ws.send_json({"type": "subscribe", "topic": topic})
        return _WsSubscription(ws, topics)


# --------------------------------------------------------------------------- the client


@dataclass
class _Client:
    """One subscriber and what it has received, checked item by item."""

    sc: Sidecar
    stub: pb_grpc.SidecarServiceStub
    transport: Transport
    policy: str
    topics: list[str]
    #: topic -> data published at offset i + 1.
    published: dict[str, list[bytes]] = field(default_factory=dict)
    #: topic -> the last offset received (an event, a gap or the subscribed offset);
    #: None until the subscription announced it.
    at: dict[str, int | None] = field(default_factory=dict)
    #: What the current subscription asked for: topic -> resume after this offset.
    after: dict[str, int] = field(default_factory=dict)
    sub: Subscription | None = None
    #: The server's feeds there before this subscription; then (once it announced every
    #: topic's start) its own.
    before: set[Any] = field(default_factory=set)
    mine: list[Any] | None = None
    gaps: int = 0
    ends: int = 0
    pauses: int = 0

    async def publish(self, topic: str, size: int) -> None:
        n = len(self.published.setdefault(topic, []))
        data = f"{topic}#{n + 1}:".encode().ljust(size, b".")
        resp = await self.stub.Publish(pb.PublishRequest(
            topic=topic, data=data, content_type="application/octet-stream"), timeout=10)
        # Offsets are assigned in the order of the appends: publishes to one topic here
        # are concurrent only within a race, and each is recorded at its own offset.
        events = self.published[topic]
        events.extend([b""] * (resp.offset - len(events)))
        events[resp.offset - 1] = data

    def head(self, topic: str) -> int:
        return len(self.published.get(topic, ()))

    async def open(self, after: Mapping[str, int]) -> None:
        self.after = dict(after)
        self.at = {t: None for t in self.topics}
        self.before = {f for t in self.topics for f in self.sc.live.feeds(t)}
        self.mine = None
        self.sub = await self.transport.open(self.topics, self.after)

    async def resume(self) -> None:
        """A new subscription after the last offset received (latest where none yet)."""
        await self.open({t: a for t, a in self.at.items() if a is not None})

    def take(self, item: Item) -> bool:
        """Check ``item``; False when the subscription ended."""
        kind = item[0]
        if kind == "end":
            assert item[1] == "slow_consumer" and self.policy == "disconnect", item
            self.ends += 1
            return False
        if kind == "subscribed":
            for topic, offset in item[1].items():
                assert topic in self.at and self.at[topic] is None, (item, self.at)
                if topic in self.after:
                    assert offset == self.after[topic], (item, self.after)
                else:
                    assert 0 <= offset <= self.head(topic), (item, self.head(topic))
                self.at[topic] = offset
            return True
        topic = item[1]
        last = self.at.get(topic)
        assert last is not None, f"{item} before its topic was announced ({self.at})"
        if kind == "event":
            offset, data = item[2], item[3]
            assert offset == last + 1, f"event {offset} of {topic} after {last}"
            assert data == self.published[topic][offset - 1], (topic, offset)
            self.at[topic] = offset
            return True
        lo, hi, reason = item[2], item[3], item[4]
        assert reason == "slow_consumer" and self.policy == "drop_oldest", item
        assert lo == last + 1 and lo <= hi <= self.head(topic), (item, last)
        self.at[topic] = hi
        self.gaps += 1
        return True

    async def read_announced(self) -> None:
        """Items until every topic's start is announced."""
        while any(a is None for a in self.at.values()):
            await self._next()
        if self.mine is None:  # registered before they announced anything
            self.mine = [f for t in self.topics for f in self.sc.live.feeds(t)
                         if f not in self.before]

    async def read_all(self) -> None:
        """Items until every published event is accounted for (resuming after an end)."""
        while any(self.at[t] != self.head(t) for t in self.topics):
            await self._next()

    async def _next(self) -> None:
        assert self.sub is not None
        if not self.take(await self.sub.next()):
            await self.sub.close()
            await self.resume()

    async def pause(self, topic: str, extra: int) -> None:
        """Publish large events to ``topic`` while reading nothing, until the policy acted
        on this subscription's feed for it (events dropped, or disconnected), then
        ``extra`` more."""
        while True:
            await self.read_announced()
            assert self.mine is not None
            live = self.sc.live.feeds(topic)
            feeds = [f for f in self.mine if topic in f.topics and f in live]
            if feeds:
                break
            # Already ended on the server (a resume's replay outran by live events):
            # read on to the end, and resume.
            assert self.policy == "disconnect", (topic, self.mine)
            sub = self.sub
            while self.sub is sub:
                await self._next()
        for _ in range(PAUSE_BOUND):
            dropped = any(f.backlog.dropped for f in feeds)
            ended = [f for f in feeds if f.closed is not None
                     or f not in self.sc.live.feeds(topic)]
            if dropped or ended:
                break
            await self.publish(topic, BIG)
        else:
            raise AssertionError(f"{topic}'s feed kept up with {PAUSE_BOUND} large events")
        # The policy as configured, on the server's side.
        if self.policy == "drop_oldest":
            assert dropped and not ended, (topic, [f.closed for f in ended])
        else:
            assert ended and not dropped, topic
            assert all(type(f.closed).__name__ == "SlowConsumer" for f in ended), ended
        self.pauses += 1
        for _ in range(extra):
            await self.publish(topic, BIG)

    def check_backlogs(self) -> None:
        for topic in self.topics:
            for feed in self.sc.live.feeds(topic):
                assert len(feed.backlog.queue) <= QUEUE, (topic, len(feed.backlog.queue))


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class _Scenario:
    history: tuple[int, ...]
    #: Per topic: None to start at the latest position, else resume after this offset.
    starts: tuple[int | None, ...]
    steps: tuple[tuple[Any, ...], ...]


_STEP = st.one_of(
    st.tuples(st.just("publish"), st.integers(0, 1), st.integers(1, 5)),
    st.tuples(st.just("pause"), st.integers(0, 1), st.integers(0, 3)),
    st.tuples(st.just("read")),
    st.tuples(st.just("resubscribe"), st.integers(0, 3)),
    st.tuples(st.just("race"), st.integers(0, 1), st.integers(1, 6), st.integers(0, 3)),
)


@st.composite
def _scenarios(draw: st.DrawFn) -> _Scenario:
    history = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=2)))
    starts = tuple(draw(st.one_of(st.none(), st.integers(0, h))) for h in history)
    steps = draw(st.lists(_STEP, max_size=6))
    # Every scenario makes at least one slow consumer.
    steps.insert(draw(st.integers(0, len(steps))), ("pause", 0, draw(st.integers(0, 3))))
    return _Scenario(history, starts, tuple(steps))


async def _run(client: _Client, scenario: _Scenario) -> None:
    topics = client.topics
    for topic, count in zip(topics, scenario.history, strict=True):
        for _ in range(count):
            await client.publish(topic, 16)
    await client.open({t: s for t, s in zip(topics, scenario.starts, strict=True)
                       if s is not None})
    await client.read_announced()
    for step in scenario.steps:
        what = step[0]
        if what == "publish":
            for _ in range(step[2]):
                await client.publish(topics[step[1] % len(topics)], 16)
        elif what == "pause":
            await client.pause(topics[step[1] % len(topics)], step[2])
        elif what == "read":
            await client.read_all()
        else:  # resubscribe after an offset up to 3 before the last received
            await client.read_announced()
            assert client.sub is not None
            await client.sub.close()
            back = step[-1]
            after = {t: max(0, a - back) for t, a in client.at.items() if a is not None}
            if what == "race":  # publishes racing the replay, the seam and the join
                topic = topics[step[1] % len(topics)]
                await asyncio.gather(client.open(after),
                                     *(client.publish(topic, 16) for _ in range(step[2])))
            else:
                await client.open(after)
            await client.read_announced()
        client.check_backlogs()
    await client.read_all()
    client.check_backlogs()
    assert client.sub is not None
    await client.sub.close()


# --------------------------------------------------------------------------- the tests


class _Env:
    def __init__(self, sc: Sidecar, stub: pb_grpc.SidecarServiceStub,
                 transport: Transport) -> None:
        self.sc, self.stub, self.transport = sc, stub, transport


@pytest.fixture(params=["grpc", "websocket"])
def transport_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["drop_oldest", "disconnect"])
def policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def env(tmp_path: Path, transport_name: str, policy: str) -> AsyncIterator[_Env]:
    config = make_config(tmp_path, {"realtime": {
        "queue_size": QUEUE, "slow_consumer": policy,
        "websocket": {"jwt": {"algorithms": ["HS256"], "hs256_secret_env": "FX_SECRET",
                              "topics_claim": "topics"}}}}, env={"FX_SECRET": SECRET})
    sc = Sidecar(config)
    await sc.start()
    channel = grpc.aio.insecure_channel(sc.grpc.address)
    session = aiohttp.ClientSession()
    stub = pb_grpc.SidecarServiceStub(channel)
    transport: Transport = _Grpc(stub) if transport_name == "grpc" else _WebSocket(sc, session)
    try:
        yield _Env(sc, stub, transport)
    finally:
        await session.close()
        await channel.close()
        await sc.stop()


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=_scenarios())
async def test_every_event_arrives_in_order_or_in_one_gap(env: _Env, policy: str,
                                                          scenario: _Scenario) -> None:
    n = next(_names)
    topics = [f"fx.{n}.{i}" for i in range(len(scenario.history))]
    client = _Client(env.sc, env.stub, env.transport, policy, topics)
    await _run(client, scenario)
    assert client.pauses >= 1  # every scenario has one: the policy acted, as configured
    text = env.sc.metrics.exposition().decode()
    if policy == "disconnect":
        assert ('sidecar_slow_consumer_events_total{policy="disconnect",'
                f'transport="{env.transport.label}"}}') in text
    elif client.gaps:
        assert 'sidecar_subscription_gaps_total{reason="slow_consumer"}' in text

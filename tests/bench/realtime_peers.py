"""The processes of the real-time benchmark (:mod:`tests.bench.realtime`), each on uvloop.

``python -m tests.bench.realtime_peers raw-grpc``
    the raw gRPC baseline: a bare grpc.aio ``SidecarService`` whose ``Publish``
    builds *one* ``SubscribeResponse`` from the request, serialises it once and
    puts the bytes on the queue of every open ``Subscribe`` stream, which
    writes them out (no log, validation, metrics, heartbeats or backpressure).
``python -m tests.bench.realtime_peers raw-ws``
    the raw WebSocket baseline: aiohttp ``GET /ws`` (no auth) plus a grpc.aio
    ``Publish`` that formats *one* event frame string and ``send_str``-s that
    same string to every connected socket.
``python -m tests.bench.realtime_peers load ...``
    the load process: opens N subscribers (gRPC ``Subscribe`` streams, each on
    its own channel and TCP connection, or WebSocket clients), then publishes
    with gRPC ``Publish`` and counts what the subscribers receive.
``python -m tests.bench.realtime_peers idle ...``
    opens M authenticated WebSocket connections and holds them (answering
    pings) until SIGTERM.

Every command takes ``--cpu N``: run on that CPU only (set before any thread starts,
so every thread inherits it). The benchmark puts servers on one CPU and the
processes that drive them on another, so that neither steals the other's.

Servers print one JSON line ``{"ready": true, ...}`` and run until SIGTERM.
The load process prints ``{"ready": true, "result": {...}}`` when done and
exits; ``idle`` prints ``{"ready": true, "connected": n, ...}`` once connected.

The WebSocket clients are a deliberately small asyncio protocol (HTTP/1.1
upgrade, then unmasked server frames are split and counted; pings answered
with masked pongs) so that the receiving side costs as little CPU as possible
on a small machine and the server under test is what gets measured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from tests.bench.loop import run_on_uvloop

#: Payload padding, so an event is about the size of a small real notification.
PAD = "x" * 48
TOPIC_GRPC = "bench.grpc"
TOPIC_WS = "broadcast"
SECRET_ENV = "BENCH_WS_SECRET"
EVENT_TAG = b"\n"  # SubscribeResponse field 1 (event), wire type 2
_TS = b'"ts":'
_CONTROL = b'{"control"'


def raise_nofile(want: int) -> int:
    """Raise this process's open-file soft limit towards ``want`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _announce(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"ready": True, **obj}) + "\n")
    sys.stdout.flush()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def others_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds used so far by each process (and kernel thread) not in ``exclude``."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            out[int(entry)] = _cpu(entry)
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return out


def others_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the other processes used in between (what exited meanwhile is not seen)."""
    return sum(max(0.0, v - before.get(pid, 0.0)) for pid, v in after.items())


def softirq_seconds() -> float:
    """CPU seconds all CPUs spent in interrupts so far (loopback TCP is mostly softirq,
    which no process is charged for)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def _cpu(pid: int | str = "self") -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- raw servers

def _raw_event_bytes(data: bytes, seq: int) -> bytes:
    """One SubscribeResponse with an event shaped like the sidecar's, serialised."""
    from integration_sidecar.v1 import sidecar_pb2 as pb

    msg = pb.SubscribeResponse(event=pb.Event(
        id=f"evt_0000000000000000000000{seq:010d}", topic=TOPIC_GRPC, type="bench",
        data=data, content_type="application/json", offset=seq))
    msg.event.time.FromNanoseconds(time.time_ns())
    return msg.SerializeToString()


async def _publish_server(publish: Callable[[Any], Awaitable[None]],
                          subscribe: Any = None) -> tuple[Any, str]:
    """A bare grpc.aio server with ``Publish`` (and optionally ``Subscribe``)."""
    import grpc
    from integration_sidecar.v1 import sidecar_pb2 as pb

    reply = pb.PublishResponse(event_id="evt_raw", offset=1).SerializeToString()

    async def on_publish(request: Any, context: Any) -> bytes:
        await publish(request)
        return reply

    handlers: dict[str, Any] = {
        "Publish": grpc.unary_unary_rpc_method_handler(
            on_publish, request_deserializer=pb.PublishRequest.FromString),
    }
    if subscribe is not None:
        handlers["Subscribe"] = grpc.unary_stream_rpc_method_handler(
            subscribe, request_deserializer=pb.SubscribeRequest.FromString)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "integration_sidecar.v1.SidecarService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def raw_grpc() -> None:
    queues: set[asyncio.Queue[bytes]] = set()
    seq = 0

    async def publish(request: Any) -> None:
        nonlocal seq
        seq += 1
        raw = _raw_event_bytes(request.data, seq)  # built and serialised once per event
        for q in queues:
            q.put_nowait(raw)

    async def subscribe(request: Any, context: Any) -> Any:
        q: asyncio.Queue[bytes] = asyncio.Queue()
        queues.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            queues.discard(q)

    server, address = await _publish_server(publish, subscribe)
    _announce({"address": address})
    try:
        await _until_signalled()
    finally:
        await server.stop(0.5)


def _frame_template() -> tuple[str, str]:
    """The sidecar's event frame layout, split around ``data``."""
    head = ('{"id":"evt_00000000000000000000000000000000","topic":"broadcast","type":"bench",'
            '"offset":%d,"time":%.6f,"attributes":{},"data":')
    return head, "}"


async def raw_ws() -> None:
    from aiohttp import WSMsgType, web

    raise_nofile(65536)
    sockets: set[web.WebSocketResponse] = set()
    head, tail = _frame_template()
    seq = 0

    async def publish(request: Any) -> None:
        nonlocal seq
        seq += 1
        frame = (head % (seq, time.time())) + request.data.decode() + tail  # once per event
        for ws in list(sockets):
            try:
                await ws.send_str(frame)
            except (ConnectionResetError, RuntimeError):
                sockets.discard(ws)

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str('{"control":"subscribed","topic":"broadcast"}')
        sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            sockets.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server, address = await _publish_server(publish)
    _announce({"address": address, "edge": f"{host}:{port}"})
    try:
        await _until_signalled()
    finally:
        await server.stop(0.5)
        await runner.cleanup()


# --------------------------------------------------------------------------- receivers

class Tally:
    """What every subscriber of this process received, and the publisher's credit."""

    def __init__(self, subscribers: int, latency: bool) -> None:
        self.subscribers = subscribers
        self.delivered = 0
        self.published = 0
        #: Deliveries still owed may not exceed this (credit for the closed loop).
        self.limit = 0
        self.progress = asyncio.Event()
        self.latency = latency
        #: Latencies (ms) are kept for events with a send time at or after this.
        self.latency_from = float("inf")
        self.latencies: list[float] = []
        self.closed: list[str] = []

    def got(self, payload: bytes | bytearray) -> None:
        self.delivered += 1
        if self.limit and self.published * self.subscribers - self.delivered < self.limit:
            self.progress.set()
        if self.latency:
            now = time.time()
            i = payload.find(_TS)
            if i >= 0:
                j = payload.find(b",", i)
                ts = float(payload[i + 5:j])
                if ts >= self.latency_from:
                    self.latencies.append((now - ts) * 1000)


class WsClient(asyncio.Protocol):
    """A minimal WebSocket client: upgrade, count text frames, answer pings."""

    def __init__(self, request: bytes, tally: Tally | None) -> None:
        self.request = request
        self.tally = tally
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.subscribed = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.count = 0
        self.close_code: int | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed before upgrade: {exc}"))
        elif self.tally is not None and self.close_code is None:
            self.tally.closed.append(f"connection lost: {exc}")

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self.upgraded.set_exception(ConnectionError(
                    f"upgrade refused: {status.decode(errors='replace')} "
                    f"{bytes(buf[end + 4:end + 200]).decode(errors='replace')}"))
                return
            del buf[:end + 4]
            self.upgraded.set_result(None)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length, start = int.from_bytes(buf[pos + 2:pos + 4], "big"), pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2:pos + 10], "big"), pos + 10
            if n < start + length:
                break
            op = b0 & 0x0F
            pos = start + length
            if op == 1:
                if buf.startswith(_CONTROL, start):
                    frame = bytes(buf[start:pos])
                    if b"subscribed" in frame and b'"broadcast"' in frame:
                        self.subscribed.set()
                    continue
                self.count += 1
                if self.tally is not None:
                    self.tally.got(buf[start:pos])
            elif op == 9:
                self._send(0xA, bytes(buf[start:pos]))
            elif op == 8:
                self.close_code = int.from_bytes(buf[start:start + 2], "big") if length else 1005
                if self.tally is not None:
                    self.tally.closed.append(f"closed by server with {self.close_code}")
                self._send(0x8, bytes(buf[start:start + 2]))
                if self.transport is not None:
                    self.transport.close()
        del buf[:pos]

    def _send(self, op: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | op, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()


def _tokens(count: int, prefix: str) -> list[str]:
    import jwt

    secret = os.environ[SECRET_ENV]
    exp = int(time.time()) + 3600
    return [jwt.encode({"sub": f"{prefix}{i}", "exp": exp}, secret, algorithm="HS256")
            for i in range(count)]


async def open_ws(edge: str, count: int, tally: Tally | None, *, prefix: str,
                  concurrency: int = 64, auth: bool = True,
                  errors: list[str] | None = None) -> list[WsClient]:
    """Open ``count`` WebSocket clients (``?token=`` JWTs) and wait until each is in
    the ``broadcast`` room. A failure raises, unless ``errors`` collects failures."""
    loop = asyncio.get_running_loop()
    host, port = edge.rsplit(":", 1)
    key = base64.b64encode(os.urandom(16)).decode()
    tokens = _tokens(count, prefix) if auth else [""] * count
    clients: list[WsClient] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(token: str) -> None:
        request = (f"GET /ws?token={token} HTTP/1.1\r\nHost: {edge}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        async with sem:
            try:
                _, client = await loop.create_connection(lambda: WsClient(request, tally),
                                                         host, int(port))
                await asyncio.wait_for(client.upgraded, 30)
                await asyncio.wait_for(client.subscribed.wait(), 30)
            except Exception as exc:
                if errors is None:
                    raise
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                return
            clients.append(client)

    await asyncio.gather(*(one(t) for t in tokens))
    return clients


class GrpcSub:
    count = 0


async def open_grpc(address: str, count: int, tally: Tally
                    ) -> tuple[list[Any], list[Any], list[GrpcSub]]:
    """``count`` live Subscribe streams on one topic, each on its own TCP connection."""
    import grpc
    from integration_sidecar.v1 import sidecar_pb2 as pb

    request = pb.SubscribeRequest(topics=[TOPIC_GRPC]).SerializeToString()
    channels = [grpc.aio.insecure_channel(address, options=[
        ("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]
    tasks = []
    subs = [GrpcSub() for _ in channels]

    async def read(channel: Any, sub: GrpcSub) -> None:
        call = channel.unary_stream("/integration_sidecar.v1.SidecarService/Subscribe")(request)
        try:
            async for raw in call:
                if raw[:1] == EVENT_TAG:
                    sub.count += 1
                    tally.got(raw)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                tally.closed.append(f"stream ended: {exc.code().name} {exc.details()}")

    for ch, sub in zip(channels, subs, strict=True):
        await ch.channel_ready()
        tasks.append(asyncio.ensure_future(read(ch, sub)))
    return channels, tasks, subs


# --------------------------------------------------------------------------- load

async def load(args: argparse.Namespace) -> None:
    import grpc
    from integration_sidecar.v1 import sidecar_pb2 as pb

    raise_nofile(args.subs * 2 + 1024)
    tally = Tally(args.subs, latency=args.latency)
    topic = TOPIC_GRPC if args.transport == "grpc" else TOPIC_WS
    channels: list[Any] = []
    tasks: list[Any] = []
    clients: list[WsClient] = []
    subs: list[Any] = []
    t0 = time.perf_counter()
    if args.transport == "grpc":
        channels, tasks, subs = await open_grpc(args.target, args.subs, tally)
    else:
        clients = await open_ws(args.edge, args.subs, tally, prefix="load-",
                                auth=not args.no_auth)
        subs = clients
    connect_s = time.perf_counter() - t0
    pub_channel = grpc.aio.insecure_channel(args.target)
    publish_rpc = pub_channel.unary_unary("/integration_sidecar.v1.SidecarService/Publish")
    seq = 0

    async def publish() -> None:
        nonlocal seq
        seq += 1
        data = f'{{"seq":{seq},"ts":{time.time():.6f},"pad":"{PAD}"}}'.encode()
        await publish_rpc(pb.PublishRequest(topic=topic, type="bench", data=data,
                                            content_type="application/json")
                          .SerializeToString(), timeout=30)

    # Every subscriber is registered once each has received one probe event.
    deadline = time.monotonic() + 20
    while min(s.count for s in subs) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {tally.delivered} of {args.subs} subscribers got the "
                               "probe event")
        await publish()
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.3)  # let stray probe events arrive before counting starts
    tally.delivered = 0
    for s in subs:
        s.count = 0
    result: dict[str, Any] = {"subscribers": args.subs, "connect_s": round(connect_s, 2)}
    stop = False
    publish_errors: list[str] = []

    def cpu() -> dict[str, Any]:
        out: dict[str, Any] = {"load": _cpu(), "irq": softirq_seconds(),
                               "others": others_cpu({os.getpid(), args.server_pid})}
        if args.server_pid:
            out["server"] = _cpu(args.server_pid)
        return out

    if args.rate:
        # Open loop at a fixed rate: event i is published at t0 + i/rate.
        interval = 1.0 / args.rate
        n_warm = round(args.warmup * args.rate)
        n_total = n_warm + round(args.duration * args.rate)
        pending: set[asyncio.Task[None]] = set()
        #: Publish round trips (ms) of the measured events: the storage's and gRPC's
        #: share of publish-to-delivery (the fan-out happens before the reply).
        round_trips: list[float] = []

        async def one(measured: bool) -> None:
            t = time.perf_counter()
            try:
                await publish()
            except Exception as exc:  # counted and reported
                publish_errors.append(f"after {time.perf_counter() - t:.3f} s: "
                                      f"{type(exc).__name__}: {exc}"[:300])
                return
            if measured:
                round_trips.append((time.perf_counter() - t) * 1000)

        start = time.perf_counter() + 0.01
        tally.published = 0
        i = 0
        mark: dict[str, Any] = {}
        lags: list[float] = []
        while i < n_total:
            now = time.perf_counter()
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            if i >= n_warm and not mark:
                tally.latency_from = time.time()
                mark = {"t": time.perf_counter(), "delivered": tally.delivered, "cpu": cpu()}
            while i < n_total and start + i * interval <= now:
                if i >= n_warm:
                    lags.append((now - (start + i * interval)) * 1000)
                task = asyncio.ensure_future(one(i >= n_warm))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
                tally.published += 1
        if pending:
            await asyncio.gather(*pending)
        lags.sort()
        result["publish_start_lag_p99_ms"] = _pct(lags, 99)
        round_trips.sort()
        result["publish_rtt_ms"] = {"p50": _pct(round_trips, 50), "p99": _pct(round_trips, 99)}
    else:
        # Closed loop with credit: publish as fast as the whole pipeline delivers,
        # keeping at most ``window`` events per subscriber not yet received.
        tally.limit = args.window * args.subs
        tally.published = 0

        async def worker() -> None:
            while not stop:
                while tally.published * tally.subscribers - tally.delivered >= tally.limit:
                    tally.progress.clear()
                    await tally.progress.wait()
                    if stop:
                        return
                tally.published += 1
                try:
                    await publish()
                except Exception as exc:  # counted and reported
                    publish_errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    await asyncio.sleep(0.05)

        workers = [asyncio.ensure_future(worker()) for _ in range(args.concurrency)]
        await asyncio.sleep(args.warmup)
        mark = {"t": time.perf_counter(), "delivered": tally.delivered, "cpu": cpu()}
        await asyncio.sleep(args.duration)
    end: dict[str, Any] = {"t": time.perf_counter(), "delivered": tally.delivered,
                           "cpu": cpu()}
    stop = True
    tally.progress.set()
    if not args.rate:
        await asyncio.gather(*workers)
    seconds = end["t"] - mark["t"]
    deliveries = end["delivered"] - mark["delivered"]
    others = others_used(mark["cpu"].pop("others"), end["cpu"].pop("others"))
    cpu_used = {k: end["cpu"][k] - mark["cpu"][k] for k in end["cpu"]}
    # CPU that other processes used meanwhile, in CPUs: the disturbance (kernel threads
    # included: some of their work, e.g. the journal's fsyncs, may be the server's).
    result["other_cores"] = round(others / seconds, 2)
    result["irq_cores"] = round(cpu_used.pop("irq") / seconds, 2)
    # Drain: every subscriber must get every event published (accepted) after the probe.
    expected = tally.published - len(publish_errors)
    deadline = time.monotonic() + (5 if args.rate else 10)
    while tally.delivered < expected * args.subs and time.monotonic() < deadline:
        if tally.closed:
            break
        await asyncio.sleep(0.05)
    counts = [s.count for s in subs]
    result.update({
        "seconds": round(seconds, 3),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / seconds, 1),
        "events_per_s": round(deliveries / seconds / args.subs, 1),
        "published": expected, "attempted": tally.published,
        "missing": expected * args.subs - tally.delivered,
        "per_subscriber_min_max": [min(counts), max(counts)],
        "cpu_seconds": {k: round(v, 3) for k, v in cpu_used.items()},
        "server_cpu_us_per_delivery": (round(cpu_used["server"] / deliveries * 1e6, 2)
                                       if deliveries and "server" in cpu_used else None),
        "closed": tally.closed[:3], "closed_count": len(tally.closed),
        "publish_errors": len(publish_errors), "first_publish_error": publish_errors[:1],
    })
    if args.latency:
        lat = sorted(tally.latencies)
        result["latency_ms"] = {"count": len(lat), "p50": _pct(lat, 50), "p90": _pct(lat, 90),
                                "p99": _pct(lat, 99), "p999": _pct(lat, 99.9),
                                "max": lat[-1] if lat else None}
    for c in clients:
        c.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    await pub_channel.close()
    await asyncio.sleep(0.1)
    _announce({"result": result})


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    rank = max(1, -(-len(values) * p // 100))
    return round(values[min(int(rank), len(values)) - 1], 3)


# --------------------------------------------------------------------------- idle

async def idle(args: argparse.Namespace) -> None:
    limit = raise_nofile(args.count + 1024)
    t0 = time.perf_counter()
    tally = Tally(args.count, latency=False)
    errors: list[str] = []
    clients = await open_ws(args.edge, args.count, tally, prefix=args.prefix,
                            concurrency=args.concurrency, errors=errors)
    _announce({"connected": len(clients), "seconds": round(time.perf_counter() - t0, 2),
               "failed": len(errors), "first_error": errors[:1], "nofile": limit})
    await _until_signalled()
    alive = sum(1 for c in clients if not c.lost)
    for c in clients:
        c.close()
    sys.stdout.write(json.dumps({"alive_at_end": alive, "closed": tally.closed[:3]}) + "\n")
    await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- stalls

#: A gap between two readings of the clock longer than this counts as a stall.
STALL_GAP = 0.0005


def stall_probe(seconds: float) -> None:
    """Spin on this CPU for ``seconds`` reading the clock; report the time lost in gaps
    (the process was not running although it never waited: the CPU went elsewhere,
    e.g. a virtual CPU descheduled by its host)."""
    gaps: list[float] = []
    end = time.perf_counter() + seconds
    last = time.perf_counter()
    while last < end:
        now = time.perf_counter()
        if now - last > STALL_GAP:
            gaps.append(now - last)
        last = now
    gaps.sort()
    _announce({"seconds": seconds, "lost_ms": round(sum(gaps) * 1e3, 1),
               "max_ms": round(gaps[-1] * 1e3, 2) if gaps else 0.0,
               "over_5ms": sum(1 for g in gaps if g > 0.005)})


# --------------------------------------------------------------------------- entry point

def pin_to_cpu(cpu: int) -> None:
    """Run this process (and the threads it starts from now on) on ``cpu`` only."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.realtime_peers")
    parser.add_argument("--cpu", type=int, default=-1, help="run on this CPU only")
    sub = parser.add_subparsers(dest="which", required=True)
    sub.add_parser("raw-grpc")
    sub.add_parser("raw-ws")
    ld = sub.add_parser("load")
    ld.add_argument("--transport", choices=["grpc", "ws"], required=True)
    ld.add_argument("--target", required=True, help="gRPC address for Publish (and Subscribe)")
    ld.add_argument("--edge", help="WebSocket host:port")
    ld.add_argument("--subs", type=int, required=True)
    ld.add_argument("--no-auth", action="store_true")
    ld.add_argument("--rate", type=float, default=0.0, help="fixed events/s (else closed loop)")
    ld.add_argument("--window", type=int, default=32)
    ld.add_argument("--concurrency", type=int, default=8)
    ld.add_argument("--warmup", type=float, default=1.0)
    ld.add_argument("--duration", type=float, default=4.0)
    ld.add_argument("--latency", action="store_true")
    ld.add_argument("--server-pid", type=int, default=0)
    sp = sub.add_parser("stall-probe")
    sp.add_argument("--seconds", type=float, default=2.0)
    il = sub.add_parser("idle")
    il.add_argument("--edge", required=True)
    il.add_argument("--count", type=int, required=True)
    il.add_argument("--prefix", default="idle-")
    il.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    pin_to_cpu(args.cpu)
    if args.which == "raw-grpc":
        run_on_uvloop(raw_grpc)
    elif args.which == "raw-ws":
        run_on_uvloop(raw_ws)
    elif args.which == "load":
        run_on_uvloop(lambda: load(args))
    elif args.which == "stall-probe":
        stall_probe(args.seconds)
    else:
        run_on_uvloop(lambda: idle(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli())

"""Queued calls benchmark: durable enqueue against webhook ingest, drain rate, and the
cost of 100,000 calls waiting for later.

Method. Everything runs on this machine and talks only to 127.0.0.1. Each phase has a
fresh sidecar (``python -m sidecar serve``, uvloop, SQLite in a temporary directory
with ``synchronous=FULL``, the default; ports 0, addresses read from its JSON
``sidecar started`` line). This process is the load generator (grpc.aio and aiohttp
clients on uvloop) and, for phase 2, the upstream: an aiohttp server answering 200 at
once and writing down when each request arrived and its ``Idempotency-Key``.

Every EnqueueCall is pre-serialised before its round: ``POST /v1/notify`` with the
same ~480-byte JSON body as the webhook benchmark's Stripe events, a unique
idempotency key, and ``not_before`` as the phase needs. An answer counts only when it
carries a new ``qc_`` id (``duplicate`` false); any other answer or RPC error fails the
run.

1. *Durable enqueue vs webhook ingest.* One sidecar with the ``stripe`` source of
   :mod:`tests.bench.webhooks` (its event shape, pre-signed pools and secret; rate
   limits 1e6/s, never limiting) and an integration ``later``. Closed loops of
   ``concurrency`` callers: signed webhooks on the edge (an answer counts when it is
   HTTP 200 ``accepted``), and EnqueueCall over one gRPC channel with ``not_before`` an
   hour ahead (no attempt runs during the phase). Both are one verified, de-duplicated,
   fsynced write. Rounds alternate (W E, E W, W E, E W) so that the machine's drift
   (its speed varies up to 2x hour to hour) falls on both; each round has a warm-up
   whose answers are not counted. Reported per round and as medians: answers/s, the
   sidecar's CPU per answer, and enqueue/webhook, the median ratio and each round
   pair's; and answers per sidecar CPU-second, enqueue/webhook: what the ratio would be
   if the sidecar's CPU bounded both (on a loaded machine neither may be CPU-bound, and
   the throughput ratio then says more about waiting than about work). Afterwards the
   store must hold exactly one ``queued`` row per enqueue answer and one event per
   accepted webhook, and the upstream must have seen nothing.
2. *Drain rate.* A sidecar with integration ``drain``: ``rate_limit: {rate: R, burst:
   1}``, ``queue.concurrency`` 8, on the in-process upstream. ``ceil(R * (T + 3 s))``
   calls are enqueued with ``not_before`` 3 s ahead (all due at once, after the enqueue
   has finished, so the queue cannot run dry within ``T``). The drain rate is the
   number of arrivals in the ``T`` seconds from the first, divided by ``T``; also the
   most arrivals in any one-second span. Every call must end SUCCEEDED: a ``Subscribe``
   from the start of ``calls.drain`` must deliver one ``call.succeeded`` per enqueued
   id (an outcome appended again is allowed, at least once, and counted), and the
   store's rows must all be ``succeeded``; each idempotency key must reach the upstream
   exactly once (no retry is due: the upstream answers 200 at once).
3. *Calls queued an hour ahead.* A fresh sidecar with integration ``later``, at rest:
   its idle CPU over a window (the baseline), its RSS (``VmRSS``); then ``parked``
   calls enqueued by ``park_concurrency`` callers with ``not_before`` an hour ahead
   (how long that took); at rest again, its idle CPU over ``idle_seconds`` from
   ``/proc/<pid>/stat`` (clock ticks, 10 ms; also second by second, to show when it
   was spent) and its RSS growth from before the enqueue (``VmHWM``, the peak during
   the enqueue, as context).

With each window the CPU of the sidecar and of this process is reported, and "other
load": CPU the rest of the machine used meanwhile (``/proc/stat`` minus ours), with
the part spent in interrupts and softirqs in brackets (loopback traffic is handled
there, so some of it is the benchmark's own). The machine has two cores shared with
others: above 0.15 CPU of other load a figure is marked disturbed.

Targets: enqueue/webhook >= 0.8; drain rate within 5% of R over ``T``; with the calls
queued, idle CPU < 2% of one core and RSS growth < 60 MB. Missing one is reported,
not fatal; the exit status is 1 only when something broke (a failed answer, a lost or
extra row, a call not SUCCEEDED, a crashed or hung process, the time budget
exceeded). The sidecars log at ``info`` (their ``sidecar started`` line is an info
line); the report says how many lines each wrote.

Usage: ``python -m tests.bench --only queue [--quick] [--json DIR]`` or ``python -m
tests.bench.queue [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from aiohttp import web
from google.protobuf import timestamp_pb2
from integration_sidecar.v1 import sidecar_pb2 as pb

from tests.bench.load import ClosedResult, Errors, closed_loop, percentile
from tests.bench.loop import run_on_uvloop
from tests.bench.procs import (
    Child,
    ChildError,
    child_env,
    machine_busy_seconds,
    self_cpu_seconds,
    until_at_rest,
)
from tests.bench.webhooks import (
    PRESIGN_PER_S,
    SECRET,
    SECRET_ENV,
    SOURCE,
    Pool,
    stripe_body,
    wait_started,
)

TARGET_RATIO = 0.8
TARGET_DRAIN_DEVIATION = 0.05
TARGET_IDLE_CORES = 0.02
TARGET_RSS_GROWTH_MB = 60.0
#: Other processes' CPU use (in CPUs) above which a figure is marked disturbed.
OTHER_LOAD_NOTE = 0.15
#: A round in which every process together used this share of all CPUs ran on a full
#: machine: its throughput says how the CPUs were shared, not what the sidecar can do.
SATURATED = 0.95

ENQUEUE_METHOD = "/integration_sidecar.v1.SidecarService/EnqueueCall"
LATER = "later"
DRAIN = "drain"
HOUR = 3600.0
#: Calls enqueued for the drain beyond ``R * T``: the queue must not run dry in ``T``.
DRAIN_SPARE_S = 3.0
#: The drain's calls are due this long after their enqueue starts (all at once).
DRAIN_LEAD_S = 3.0
CALL_TIMEOUT = 10.0
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Settings:
    mode: str
    warmup: float
    duration: float
    #: Rounds of each kind in phase 1, alternated.
    rounds: int
    concurrency: int
    drain_rate: float
    drain_concurrency: int
    drain_seconds: float
    parked: int
    park_concurrency: int
    idle_before: float
    idle_seconds: float
    #: The whole run (every start-up to the last stop) must end within this.
    budget: float


FULL = Settings("full", warmup=1.0, duration=5.0, rounds=4, concurrency=128,
                drain_rate=50.0, drain_concurrency=8, drain_seconds=30.0, parked=100_000,
                park_concurrency=256, idle_before=10.0, idle_seconds=20.0, budget=480.0)
QUICK = Settings("quick", warmup=0.3, duration=1.0, rounds=1, concurrency=128,
                 drain_rate=50.0, drain_concurrency=8, drain_seconds=5.0, parked=5_000,
                 park_concurrency=256, idle_before=2.0, idle_seconds=3.0, budget=120.0)


class BadAnswer(Exception):
    pass


# ====================================================================== requests

def _timestamp(unix: float) -> timestamp_pb2.Timestamp:
    seconds = math.floor(unix)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=int((unix - seconds) * 1e9))


class Enqueues:
    """EnqueueCall requests serialised ahead, each with a unique idempotency key."""

    def __init__(self, integration: str, prefix: str, count: int, *,
                 not_before: float) -> None:
        self._integration = integration
        self._prefix = prefix
        self._not_before = _timestamp(not_before)
        self._n = 0
        self.signed_on_the_fly = 0
        self.keys: list[str] = []
        self._items = [self._make() for _ in range(count)]
        self._next = 0

    def _make(self) -> bytes:
        self._n += 1
        key = f"{self._prefix}{self._n:08d}"
        self.keys.append(key)
        call = pb.CallRequest(
            integration=self._integration, method="POST", path="/v1/notify",
            headers=[pb.Header(name="Content-Type", value="application/json")],
            body=stripe_body(f"evt_{key}", 1_700_000_000), idempotency_key=key)
        return pb.EnqueueCallRequest(call=call, not_before=self._not_before
                                     ).SerializeToString()

    def __len__(self) -> int:
        return len(self._items)

    def next(self) -> bytes:
        if self._next < len(self._items):
            item = self._items[self._next]
            self._next += 1
            return item
        self.signed_on_the_fly += 1
        return self._make()


CallFn = Callable[[], Awaitable[None]]


def enqueue_fn(channel: grpc.aio.Channel, pool: Enqueues, ids: list[str]) -> CallFn:
    stub = channel.unary_unary(ENQUEUE_METHOD)

    async def call() -> None:
        raw = await stub(pool.next(), timeout=CALL_TIMEOUT)
        answer = pb.EnqueueCallResponse.FromString(raw)
        if answer.duplicate or not answer.id.startswith("qc_"):
            raise BadAnswer(f"EnqueueCall answered id={answer.id!r} "
                            f"duplicate={answer.duplicate}")
        ids.append(answer.id)

    return call


def webhook_fn(session: aiohttp.ClientSession, url: str, pool: Pool,
               totals: collections.Counter[str]) -> CallFn:
    async def call() -> None:
        item = pool.next()
        async with session.post(url, data=item.body, headers=item.headers) as resp:
            raw = await resp.read()
        if resp.status != 200:
            raise BadAnswer(f"{item.event_id}: HTTP {resp.status}: {raw[:200]!r}")
        status = json.loads(raw).get("status")
        if status != "accepted":
            raise BadAnswer(f"{item.event_id}: answered {status!r}, expected 'accepted'")
        totals["accepted"] += 1

    return call


async def fixed_count(call: CallFn, *, count: int, concurrency: int) -> Errors:
    """``count`` calls by ``concurrency`` callers, each sending its next once answered."""
    errors = Errors()
    tickets = iter(range(count))

    async def caller() -> None:
        for _ in tickets:
            try:
                await call()
            except (BadAnswer, grpc.aio.AioRpcError) as exc:
                errors.add(exc)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return errors


# ====================================================================== the upstream

class Upstream:
    """Answers every request 200 at once; remembers when each arrived, and its key."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.keys: list[str] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        self.keys.append(request.headers.get("Idempotency-Key", ""))
        await request.read()
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# ====================================================================== sidecars

def write_config(path: Path, data_dir: Path, integrations: dict[str, Any], *,
                 webhooks: bool) -> None:
    huge = {"rate": 1_000_000, "burst": 1_000_000}
    config: dict[str, Any] = {
        "version": 1,
        "server": {
            "grpc": {"address": "127.0.0.1:0"},
            "edge": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "shutdown_grace": "2s",
        },
        "storage": {"data_dir": str(data_dir)},
        # info: "sidecar started" (which names the addresses) is an info line.
        "logging": {"level": "info", "format": "json"},
        "integrations": integrations,
    }
    if webhooks:
        config["webhooks"] = {
            "per_ip_rate_limit": huge, "max_concurrent": 1024,
            "sources": {SOURCE: {"scheme": "stripe", "secrets_env": [SECRET_ENV],
                                 "rate_limit": huge}},
        }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class Run:
    s: Settings
    tmp: Path
    env: dict[str, str]
    upstream: Upstream
    upstream_url: str
    children: list[Child]
    results: dict[str, Any]
    prefix: str

    async def sidecar(self, name: str, integrations: dict[str, Any], *,
                      webhooks: bool = False) -> tuple[Child, dict[str, Any], Path]:
        workdir = self.tmp / name
        workdir.mkdir()
        data_dir = workdir / "data"
        config = workdir / "sidecar.yaml"
        write_config(config, data_dir, integrations, webhooks=webhooks)
        child = Child(name, [sys.executable, "-m", "sidecar", "serve", "--config",
                             str(config)], self.env)
        self.children.append(child)
        started = await wait_started(child, START_TIMEOUT)
        return child, started, data_dir / "sidecar.db"

    def stop(self, child: Child) -> None:
        code = child.stop()
        self.results.setdefault("exit_codes", {})[child.name] = code
        self.results.setdefault("log_lines", {})[child.name] = child.line_count
        if code != 0:
            self.results["problems"].append(
                f"{child.name} exited with {code} after SIGTERM (None: killed); its last "
                f"output:\n{child.tail()}")


def irq_seconds() -> float:
    """CPU time the machine spent in interrupts and softirqs (loopback networking's
    share lands here, not in any process)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def probe_of(sidecar: Child) -> Callable[[], dict[str, float]]:
    def probe() -> dict[str, float]:
        return {"sidecar": sidecar.cpu_seconds(), "loadgen": self_cpu_seconds(),
                "machine": machine_busy_seconds(), "irq": irq_seconds()}
    return probe


def cpu_fields(cpu: dict[str, float], seconds: float, ops: int) -> dict[str, Any]:
    ours = cpu["sidecar"] + cpu["loadgen"]
    return {
        "sidecar_cores": round(cpu["sidecar"] / seconds, 3),
        "loadgen_cores": round(cpu["loadgen"] / seconds, 2),
        # CPU the rest of the machine used meanwhile (other benchmarks, ...).
        "other_cores": round(max(0.0, cpu["machine"] - ours) / seconds, 2),
        # ... of which interrupts and softirqs: partly this benchmark's own loopback traffic.
        "irq_cores": round(cpu["irq"] / seconds, 2),
        "sidecar_cpu_us_per_op": round(cpu["sidecar"] / ops * 1e6, 1) if ops else None,
    }


def db_rows(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        states = dict(conn.execute(
            "SELECT state, COUNT(*) FROM queued_calls GROUP BY state").fetchall())
        events = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return {"queued_calls": {str(k): int(v) for k, v in states.items()},
                "events": events}
    finally:
        conn.close()


# ====================================================================== phase 1

def round_summary(kind: str, r: ClosedResult) -> dict[str, Any]:
    lat = r.latencies_ms
    return {"kind": kind, "answers": r.calls, "seconds": round(r.seconds, 3),
            "per_s": round(r.rate, 1), "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99), "errors": r.errors.count,
            "first_error": r.errors.first, **cpu_fields(r.cpu, r.seconds, r.calls)}


async def phase_enqueue_vs_webhooks(run: Run) -> dict[str, Any]:
    s = run.s
    sidecar, started, db = await run.sidecar(
        "sidecar-1-ingest", {LATER: {"base_url": run.upstream_url,
                                     "allow_insecure_http": True}}, webhooks=True)
    out: dict[str, Any] = {"rounds": []}
    probe = probe_of(sidecar)
    ids: list[str] = []
    totals: collections.Counter[str] = collections.Counter()
    per_round = math.ceil(PRESIGN_PER_S * (s.warmup + s.duration))
    upstream_before = len(run.upstream.arrivals)
    connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=0,
                                     keepalive_timeout=60)
    async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session, \
            grpc.aio.insecure_channel(started["grpc"]) as channel:
        url = f"http://{started['edge']}/webhooks/{SOURCE}"
        signed_on_the_fly = 0
        for i in range(s.rounds):
            order = ("webhook", "enqueue") if i % 2 == 0 else ("enqueue", "webhook")
            for kind in order:
                sidecar.check_alive()
                pool: Pool | Enqueues
                if kind == "webhook":
                    pool = Pool(f"{run.prefix}w{i}_", per_round, secret=SECRET)
                    call = webhook_fn(session, url, pool, totals)
                else:
                    pool = Enqueues(LATER, f"{run.prefix}e{i}_", per_round,
                                    not_before=time.time() + HOUR)
                    call = enqueue_fn(channel, pool, ids)
                r = await closed_loop(call, concurrency=s.concurrency, warmup=s.warmup,
                                      duration=s.duration, probe=probe)
                signed_on_the_fly += pool.signed_on_the_fly
                x = round_summary(kind, r)
                x["round"] = i + 1
                out["rounds"].append(x)
                if r.errors.count:
                    raise BadAnswer(f"{r.errors.count} {kind} answer(s) failed in round "
                                    f"{i + 1}; first: {r.errors.first}")
                await asyncio.sleep(0.3)
        out["signed_on_the_fly"] = signed_on_the_fly
    by_kind = {k: [x for x in out["rounds"] if x["kind"] == k] for k in ("webhook", "enqueue")}
    for kind, xs in by_kind.items():
        out[kind] = {
            "per_s": round(statistics.median(x["per_s"] for x in xs), 1),
            "sidecar_cpu_us_per_op": round(statistics.median(
                x["sidecar_cpu_us_per_op"] for x in xs), 1),
            "other_cores_max": max(x["other_cores"] for x in xs),
        }
    out["ratio"] = round(out["enqueue"]["per_s"] / out["webhook"]["per_s"], 3)
    # What the ratio would be if the sidecar's CPU were the bottleneck for both.
    out["cpu_bound_ratio"] = round(out["webhook"]["sidecar_cpu_us_per_op"]
                                   / out["enqueue"]["sidecar_cpu_us_per_op"], 3)
    out["pair_ratios"] = [round(e["per_s"] / w["per_s"], 3)
                          for w, e in zip(by_kind["webhook"], by_kind["enqueue"], strict=True)]
    out["other_cores_max"] = max(x["other_cores"] for x in out["rounds"])
    # Every answer is a row: one 'queued' call per enqueue, one event per webhook.
    rows = db_rows(db)
    queued = rows["queued_calls"]
    attempted = len(run.upstream.arrivals) - upstream_before
    ok = (queued == {"queued": len(ids)} and rows["events"] == totals["accepted"]
          and len(set(ids)) == len(ids) and attempted == 0)
    out["store"] = {"enqueue_answers": len(ids), "queued_calls": queued,
                    "accepted_webhooks": totals["accepted"], "events": rows["events"],
                    "upstream_requests": attempted, "ok": ok}
    if not ok:
        run.results["problems"].append(f"phase 1 store check failed: {out['store']}")
    out["sidecar_rss_mb"] = round(sidecar.rss_mb(), 1)
    run.stop(sidecar)
    return out


# ====================================================================== phase 2

def most_in_one_second(times: list[float]) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


async def outcome_events(channel: grpc.aio.Channel, topic: str, ids: set[str],
                         timeout: float) -> collections.Counter[str]:
    """Outcome events of ``topic`` from its start, by type, until one per id (or timeout)."""
    by_type: collections.Counter[str] = collections.Counter()
    seen: set[str] = set()
    stream = channel.unary_stream(
        "/integration_sidecar.v1.SidecarService/Subscribe",
        request_serializer=pb.SubscribeRequest.SerializeToString,
        response_deserializer=pb.SubscribeResponse.FromString,
    )(pb.SubscribeRequest(topics=[topic], start=pb.START_POSITION_EARLIEST))
    try:
        async with asyncio.timeout(timeout):
            while not ids <= seen:
                msg = await stream.read()
                if msg is grpc.aio.EOF:
                    break
                if msg.HasField("event"):
                    call_id = msg.event.attributes.get("queued_call_id", "")
                    if call_id in seen:
                        by_type["repeated"] += 1
                        continue
                    seen.add(call_id)
                    by_type[msg.event.type] += 1
    except TimeoutError:
        by_type["missing (timeout)"] = len(ids - seen)
    finally:
        stream.cancel()
    return by_type


async def phase_drain(run: Run) -> dict[str, Any]:
    s = run.s
    rate, window = s.drain_rate, s.drain_seconds
    sidecar, started, db = await run.sidecar("sidecar-2-drain", {DRAIN: {
        "base_url": run.upstream_url, "allow_insecure_http": True,
        "rate_limit": {"rate": rate, "burst": 1},
        "queue": {"concurrency": s.drain_concurrency}}})
    n = math.ceil(rate * (window + DRAIN_SPARE_S))
    arrivals, keys = run.upstream.arrivals, run.upstream.keys
    first = len(arrivals)
    out: dict[str, Any] = {"rate_limit": rate, "burst": 1,
                           "concurrency": s.drain_concurrency, "window_s": window,
                           "calls": n}
    async with grpc.aio.insecure_channel(started["grpc"]) as channel:
        t_enqueue = time.monotonic()
        pool = Enqueues(DRAIN, f"{run.prefix}d_", n, not_before=time.time() + DRAIN_LEAD_S)
        ids: list[str] = []
        errors = await fixed_count(enqueue_fn(channel, pool, ids), count=n,
                                   concurrency=min(s.concurrency, n))
        out["enqueue_s"] = round(time.monotonic() - t_enqueue, 2)
        if errors.count:
            raise BadAnswer(f"{errors.count} drain enqueue(s) failed; first: {errors.first}")
        probe = probe_of(sidecar)
        # The window opens at the first arrival; CPU from then to the last.
        deadline = time.monotonic() + DRAIN_LEAD_S + n / rate * 1.5 + 15
        while len(arrivals) == first:
            sidecar.check_alive()
            if time.monotonic() > deadline:
                raise BadAnswer("no queued call reached the upstream")
            await asyncio.sleep(0.005)
        cpu0 = probe()
        t0 = arrivals[first]
        out["first_arrival_after_enqueue_s"] = round(t0 - t_enqueue, 2)
        out["drain_began_before_enqueue_ended"] = t0 - t_enqueue < out["enqueue_s"]
        while len(arrivals) - first < n and time.monotonic() < deadline:
            sidecar.check_alive()
            await asyncio.sleep(0.05)
        cpu1 = probe()
        times = arrivals[first:]
        got = len(times)
        span = times[-1] - t0
        in_window = sum(1 for t in times if t < t0 + window)
        out.update({
            "received": got,
            "received_in_window": in_window,
            "rate_in_window": round(in_window / window, 2),
            "deviation": round(in_window / window / rate - 1, 4),
            "rate_overall": round((got - 1) / span, 2) if span > 0 else None,
            "most_in_one_second": most_in_one_second(times),
            "distinct_keys": len(set(keys[first:])),
            "repeated_keys": got - len(set(keys[first:])),
            **cpu_fields({k: cpu1[k] - cpu0[k] for k in cpu1}, max(span, 1e-9), got),
        })
        outcomes = await outcome_events(channel, f"calls.{DRAIN}", set(ids), timeout=20.0)
    # At least once: an outcome appended again is allowed (consumers key on the id),
    # and counted; one distinct call.succeeded per id is what must hold.
    repeated = outcomes.pop("repeated", 0)
    out["outcome_events"] = dict(outcomes)
    out["repeated_outcome_events"] = repeated
    out["store"] = db_rows(db)["queued_calls"]
    ok = (outcomes == collections.Counter({"call.succeeded": n})
          and out["store"] == {"succeeded": n} and got == n and out["repeated_keys"] == 0)
    out["all_succeeded"] = ok
    if not ok:
        run.results["problems"].append(
            f"drain: not every call SUCCEEDED once: {n} enqueued, {got} reached the "
            f"upstream, outcome events {dict(outcomes)}, store {out['store']}")
    run.stop(sidecar)
    return out


# ====================================================================== phase 3

async def idle_window(sidecar: Child, seconds: float) -> dict[str, Any]:
    """The sidecar's CPU over ``seconds``, and second by second (when it was spent)."""
    probe = probe_of(sidecar)
    cpu0, t0 = probe(), time.perf_counter()
    by_second: list[float] = []
    last = cpu0["sidecar"]
    for i in range(1, math.ceil(seconds) + 1):
        await asyncio.sleep(max(0.0, t0 + min(i, seconds) - time.perf_counter()))
        now = sidecar.cpu_seconds()
        by_second.append(round(now - last, 2))
        last = now
    cpu1, elapsed = probe(), time.perf_counter() - t0
    sidecar.check_alive()
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
    return {"seconds": round(elapsed, 2), "sidecar_cpu_s": round(cpu["sidecar"], 3),
            "busy_seconds": {i: x for i, x in enumerate(by_second, 1) if x > 0},
            **cpu_fields(cpu, elapsed, 0)}


async def phase_parked(run: Run) -> dict[str, Any]:
    s = run.s
    sidecar, started, db = await run.sidecar(
        "sidecar-3-parked", {LATER: {"base_url": run.upstream_url,
                                     "allow_insecure_http": True}})
    upstream_before = len(run.upstream.arrivals)
    out: dict[str, Any] = {"calls": s.parked, "callers": s.park_concurrency}
    await until_at_rest(sidecar, quiet=0.5, timeout=10.0)
    out["idle_before"] = await idle_window(sidecar, s.idle_before)
    out["rss_before_mb"] = round(sidecar.rss_mb(), 1)
    t = time.perf_counter()
    pool = Enqueues(LATER, f"{run.prefix}p_", s.parked, not_before=time.time() + HOUR)
    out["serialise_s"] = round(time.perf_counter() - t, 2)
    ids: list[str] = []
    async with grpc.aio.insecure_channel(started["grpc"]) as channel:
        probe = probe_of(sidecar)
        cpu0, t = probe(), time.perf_counter()
        errors = await fixed_count(enqueue_fn(channel, pool, ids), count=s.parked,
                                   concurrency=s.park_concurrency)
        elapsed = time.perf_counter() - t
        cpu1 = probe()
    if errors.count:
        raise BadAnswer(f"{errors.count} enqueue(s) failed; first: {errors.first}")
    del pool
    out["enqueue"] = {"seconds": round(elapsed, 2), "per_s": round(s.parked / elapsed, 1),
                      **cpu_fields({k: cpu1[k] - cpu0[k] for k in cpu1}, elapsed, s.parked)}
    out["peak_rss_mb"] = round(sidecar.peak_rss_mb(), 1)
    t = time.perf_counter()
    await until_at_rest(sidecar, quiet=1.0, timeout=15.0)
    out["settle_s"] = round(time.perf_counter() - t, 2)
    out["rss_after_enqueue_mb"] = round(sidecar.rss_mb(), 1)
    out["idle"] = await idle_window(sidecar, s.idle_seconds)
    out["rss_after_mb"] = round(sidecar.rss_mb(), 1)
    out["rss_growth_mb"] = round(out["rss_after_mb"] - out["rss_before_mb"], 1)
    rows = db_rows(db)["queued_calls"]
    attempted = len(run.upstream.arrivals) - upstream_before
    ok = rows == {"queued": s.parked} and attempted == 0 and len(set(ids)) == s.parked
    out["store"] = {"queued_calls": rows, "upstream_requests": attempted, "ok": ok}
    out["db_mb"] = round(sum(p.stat().st_size for p in db.parent.glob("sidecar.db*")) / 2**20, 1)
    if not ok:
        run.results["problems"].append(f"phase 3 store check failed: {out['store']}")
    run.stop(sidecar)
    return out


# ====================================================================== the run

async def run_all(s: Settings, results: dict[str, Any]) -> None:
    env = {**child_env(), SECRET_ENV: SECRET}
    problems: list[str] = results["problems"]
    children: list[Child] = []
    upstream = Upstream()
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-queue-") as tmp:
        try:
            async with asyncio.timeout(s.budget):
                run = Run(s, Path(tmp), env, upstream, await upstream.start(), children,
                          results, f"b{os.getpid():x}_{int(time.time()):x}_")
                results["ingest"] = await phase_enqueue_vs_webhooks(run)
                results["drain"] = await phase_drain(run)
                results["parked"] = await phase_parked(run)
        except TimeoutError:
            problems.append(f"the run did not finish within its {s.budget:g}s budget")
        except (ChildError, BadAnswer, grpc.aio.AioRpcError, aiohttp.ClientError, OSError,
                sqlite3.Error, ValueError) as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            for child in children:
                if child.name not in results.get("exit_codes", {}):
                    code = child.stop()
                    results.setdefault("exit_codes", {})[child.name] = code
                    results.setdefault("log_lines", {})[child.name] = child.line_count
            await upstream.stop()
    results["targets"] = targets(results)


def target(name: str, value: float | None, ok: bool, goal: str, *,
           disturbed: bool = False) -> dict[str, Any]:
    return {"name": name, "value": value, "goal": goal, "met": ok, "disturbed": disturbed}


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if "ingest" in res:
        x = res["ingest"]
        out.append(target("enqueue/webhook answers/s (medians)", x["ratio"],
                          x["ratio"] >= TARGET_RATIO, f">= {TARGET_RATIO}",
                          disturbed=x["other_cores_max"] > OTHER_LOAD_NOTE))
    if "drain" in res:
        d = res["drain"]
        out.append(target(f"drain rate over {d['window_s']:g} s vs limit {d['rate_limit']:g}/s",
                          d["deviation"], abs(d["deviation"]) <= TARGET_DRAIN_DEVIATION,
                          f"within +-{TARGET_DRAIN_DEVIATION:.0%}",
                          disturbed=d["other_cores"] > OTHER_LOAD_NOTE))
    if "parked" in res:
        p = res["parked"]
        out.append(target(f"idle CPU with {p['calls']:,} queued (cores)",
                          p["idle"]["sidecar_cores"],
                          p["idle"]["sidecar_cores"] < TARGET_IDLE_CORES,
                          f"< {TARGET_IDLE_CORES}",
                          disturbed=p["idle"]["other_cores"] > OTHER_LOAD_NOTE))
        out.append(target(f"RSS growth with {p['calls']:,} queued (MB)", p["rss_growth_mb"],
                          p["rss_growth_mb"] < TARGET_RSS_GROWTH_MB,
                          f"< {TARGET_RSS_GROWTH_MB:g}"))
    return out


# ====================================================================== report

def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def report(s: Settings, res: dict[str, Any]) -> str:
    env = res["environment"]
    out = [
        "integration-sidecar queued calls benchmark",
        f"mode {s.mode}; {env['cpus']} CPUs; Python {env['python']}; aiohttp "
        f"{env['aiohttp']}; grpcio {env['grpcio']}; SQLite {env['sqlite']}",
        "all traffic on 127.0.0.1; a fresh sidecar per phase (python -m sidecar serve, "
        "uvloop, SQLite synchronous=FULL); this process: the load",
        "  (grpc.aio + aiohttp clients on uvloop, requests serialised/signed ahead) and the "
        "phase-2 upstream (aiohttp, 200 at once)",
    ]
    if "ingest" in res:
        x = res["ingest"]
        out += [
            "",
            f"(1) durable enqueue vs webhook ingest: closed loops of {s.concurrency} callers, "
            f"{s.warmup:g} s warm-up + {s.duration:g} s measured per round, kinds alternated",
            "round  kind      answers/s   p50 ms   p99 ms  sidecar CPU   sidecar  loadgen  "
            "other (irq)  errors",
        ]
        for r in x["rounds"]:
            out.append(
                f"{r['round']:>5}  {r['kind']:<8} {r['per_s']:>10.0f}  {_f(r['p50_ms']):>7}  "
                f"{_f(r['p99_ms']):>7}  {_f(r['sidecar_cpu_us_per_op'], 0):>6} us/op  "
                f"{r['sidecar_cores']:>5.2f}c  {r['loadgen_cores']:>5.2f}c  "
                f"{r['other_cores']:>4.2f}c ({r['irq_cores']:.2f}c)  {r['errors']:>6}")
        w, e = x["webhook"], x["enqueue"]
        out += [
            f"  medians: webhook {w['per_s']:.0f}/s at {w['sidecar_cpu_us_per_op']:.0f} us "
            f"sidecar CPU each; enqueue {e['per_s']:.0f}/s at "
            f"{e['sidecar_cpu_us_per_op']:.0f} us each",
            f"  enqueue/webhook = {x['ratio']:.2f} (round pairs: "
            f"{', '.join(f'{r:.2f}' for r in x['pair_ratios'])}); answers per sidecar "
            f"CPU-second, enqueue/webhook = {x['cpu_bound_ratio']:.2f} (the ratio if the "
            "sidecar's CPU bounded both)",
        ]
        st = x["store"]
        out.append(f"  store: {st['enqueue_answers']:,} enqueue answers -> queued_calls "
                   f"{st['queued_calls']}; {st['accepted_webhooks']:,} accepted webhooks -> "
                   f"{st['events']:,} events; upstream requests {st['upstream_requests']}  "
                   f"{'OK' if st['ok'] else 'MISMATCH'}")
        if x.get("signed_on_the_fly"):
            out.append(f"  NOTE: {x['signed_on_the_fly']} requests were made during "
                       "measurement (the pools ran out)")
    if "drain" in res:
        d = res["drain"]
        out += [
            "",
            f"(2) drain: rate_limit {d['rate_limit']:g}/s burst 1, concurrency "
            f"{d['concurrency']}; {d['calls']:,} calls enqueued in {d['enqueue_s']:g} s, due "
            f"{DRAIN_LEAD_S:g} s after the enqueue began (first arrival after "
            f"{d['first_arrival_after_enqueue_s']:g} s)",
            f"  received in the {d['window_s']:g} s from the first arrival: "
            f"{d['received_in_window']:,} = {d['rate_in_window']:.2f}/s "
            f"({d['deviation']:+.2%} of the limit); over the whole drain "
            f"{_f(d['rate_overall'])}/s; most in any 1 s: {d['most_in_one_second']}",
            f"  upstream received {d['received']:,} requests, {d['distinct_keys']:,} distinct "
            f"keys ({d['repeated_keys']} repeated); outcome events, one per id: "
            f"{d['outcome_events']}, and {d['repeated_outcome_events']} appended again "
            "(at least once);",
            f"  store {d['store']}  {'OK' if d['all_succeeded'] else 'NOT ALL SUCCEEDED'}",
            f"  sidecar CPU {_f(d['sidecar_cpu_us_per_op'], 0)} us per attempt "
            f"({d['sidecar_cores']:.3f}c); loadgen+upstream {d['loadgen_cores']:.2f}c; "
            f"other {d['other_cores']:.2f}c",
        ]
        if d["drain_began_before_enqueue_ended"]:
            out.append("  NOTE: the drain began before the enqueue ended (it took longer "
                       f"than {DRAIN_LEAD_S:g} s)")
    if "parked" in res:
        p = res["parked"]
        en, ib, ia = p["enqueue"], p["idle_before"], p["idle"]
        out += [
            "",
            f"(3) {p['calls']:,} calls queued an hour ahead by {p['callers']} callers: "
            f"{en['seconds']:.1f} s = {en['per_s']:.0f}/s (sidecar "
            f"{_f(en['sidecar_cpu_us_per_op'], 0)} us each, {en['sidecar_cores']:.2f}c; "
            f"loadgen {en['loadgen_cores']:.2f}c; other {en['other_cores']:.2f}c); "
            f"settled in {p['settle_s']:g} s; database {p['db_mb']:g} MB",
            f"  idle CPU, empty queue ({ib['seconds']:g} s): {ib['sidecar_cores']:.2%} of a core "
            f"({ib['sidecar_cpu_s']:.2f} s CPU); with {p['calls']:,} queued "
            f"({ia['seconds']:g} s): {ia['sidecar_cores']:.2%} ({ia['sidecar_cpu_s']:.2f} s "
            f"CPU); other load {ib['other_cores']:.2f}c / {ia['other_cores']:.2f}c",
            f"  CPU by second of the window (only seconds with any, in CPU s): "
            f"{ib['busy_seconds'] or 'none'} / {ia['busy_seconds'] or 'none'}",
            f"  RSS: {p['rss_before_mb']} MB before, {p['rss_after_enqueue_mb']} MB after the "
            f"enqueue, {p['rss_after_mb']} MB after the idle window (growth "
            f"{p['rss_growth_mb']:+.1f} MB); peak {p['peak_rss_mb']} MB",
            f"  store: queued_calls {p['store']['queued_calls']}; upstream requests "
            f"{p['store']['upstream_requests']}  {'OK' if p['store']['ok'] else 'MISMATCH'}",
        ]
    if res.get("targets"):
        out += ["", "Summary"]
        for t in res["targets"]:
            value = t["value"]
            shown = (f"{value:+.2%}" if "drain" in t["name"] else
                     f"{value:.3f}" if isinstance(value, float) and abs(value) < 1 else
                     f"{value:g}")
            out.append(f"  {t['name']} = {shown} (target {t['goal']})  "
                       f"{'MET' if t['met'] else 'MISSED'}"
                       f"{'  (disturbed: other load)' if t['disturbed'] else ''}")
        if "ingest" in res:
            x = res["ingest"]
            projected = x["cpu_bound_ratio"]
            out.append(f"  if the sidecar's CPU bounded both (answers per CPU-second): "
                       f"enqueue/webhook = {projected:.2f}"
                       f"{'' if projected >= TARGET_RATIO else ' -- below the target'}")
            full = [r for r in x["rounds"] if r["sidecar_cores"] + r["loadgen_cores"]
                    + r["other_cores"] >= SATURATED * (res["environment"]["cpus"] or 1)]
            if full:
                out.append(f"  NOTE: the machine's CPUs were all busy in {len(full)} of "
                           f"{len(x['rounds'])} rounds of (1): answers/s there show how the "
                           "CPUs were shared, not what the sidecar can do")
        if "drain" in res:
            d = res["drain"]
            out.append(f"  every drained call SUCCEEDED (one call.succeeded per id, each key "
                       f"upstream once): {'yes' if d['all_succeeded'] else 'NO'}; outcome "
                       f"events appended twice: {d['repeated_outcome_events']} of "
                       f"{d['calls']:,}")
    if res.get("log_lines"):
        out.append(f"  log lines written: {res['log_lines']}")
    if res.get("problems"):
        out += ["", "PROBLEMS (the benchmark is broken, exit status 1):"]
        out += [f"  - {p}" for p in res["problems"]]
    out.append(f"(whole run: {res.get('elapsed_s', 0):.1f} s)")
    return "\n".join(out)


# ====================================================================== entry point

def _environment() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "grpcio": grpc.__version__,
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.queue",
                                     description="Benchmark queued calls (EnqueueCall).")
    parser.add_argument("--quick", action="store_true", help="short phases (smoke test)")
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    results: dict[str, Any] = {"benchmark": "queue", "mode": s.mode, "settings": asdict(s),
                               "environment": _environment(), "problems": []}
    started = time.perf_counter()
    try:
        run_on_uvloop(lambda: run_all(s, results))
    except KeyboardInterrupt:
        results["problems"].append("interrupted")
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["ok"] = not results["problems"]
    print(report(s, results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

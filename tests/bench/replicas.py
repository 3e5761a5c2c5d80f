"""Replicas benchmark: the Redis backend (two sidecars as one) against SQLite (one sidecar).

Method. Everything runs on this machine and talks only to 127.0.0.1:

* Redis -- ``REDIS_URL`` if set, else a private ``redis-server`` on a free port
  (``--save "" --appendonly no``, a temporary directory), stopped at the end;
* replicas A and B -- two ``python -m sidecar serve`` processes (uvloop) with
  ``storage.backend: redis`` and one key prefix unique to the run (keys under
  it are deleted at the end when ``REDIS_URL`` is used);
* S -- one ``python -m sidecar serve`` with the default SQLite backend
  (``synchronous=FULL``) in a temporary directory;
* the load process -- this module with ``--load`` (grpc.aio and aiohttp
  clients on uvloop): publisher, subscriber and webhook senders all in one
  process, so one clock times every delivery;
* this process -- starts the others, checks their exits, prints the report.

Every sidecar has every port 0 on 127.0.0.1 (the addresses are read from its
JSON ``sidecar started`` line), ``logging.level: info`` (the started line is
an info line; neither Publish, live delivery nor webhook ingest write one per
event -- the report shows how many lines each sidecar wrote), one ``stripe``
webhook source with rate limits of 1e6/s (on, never limiting) and otherwise
default settings (realtime ``queue_size`` 1000, ``slow_consumer: disconnect``).

Sanity first: a signed webhook sent to A is ``accepted`` and the same one sent
to B is a ``duplicate`` naming the same stored event (A and B share one Redis
and one prefix).

Phases, alternating Redis and SQLite (which goes first alternates per round),
each after a warm-up whose figures are not counted:

1. *publish-to-delivery latency* -- a live gRPC ``Subscribe`` (start LATEST)
   on a fresh topic, on B for Redis and on S for SQLite, receiving until probe
   events arrive; then an open loop of ``Publish`` calls at 1,000 events/s
   (event *i* starts at ``t0 + i/rate`` whatever became of earlier ones) on A
   for Redis, on S for SQLite. Each event carries its sequence number and
   ``time.perf_counter()`` taken just before its ``Publish``; the receiver
   subtracts it from ``perf_counter()`` on arrival. Every event must arrive
   exactly once (no gap, no duplicate, none missing within 5 s of the last
   publish); p50/p90/p99/max over the measured events;
2. *webhook ingest* -- a closed loop of 128 senders (aiohttp, 128 keep-alive
   connections), each posting the next signed Stripe webhook (~480 bytes,
   unique ``evt_`` id, signed before the phase with
   ``tests.webhook_support.stripe_headers``) as soon as its answer arrives,
   to A for Redis and to S for SQLite; accepted answers/s in the measured
   window. Every answer must be HTTP 200 ``accepted``.

Figures per backend are the median over the rounds (max: the highest), and
each ratio is redis / sqlite of those medians (and, when both backends have
undisturbed rounds, of the medians over those alone). The CPU each process
used in every measured window is read from ``/proc``: the servers (A, B and
Redis, or S) per event, the load process, and "other load" -- what the rest
of the machine used meanwhile. Other work on this small machine disturbs
the figures (p99 first): a phase with other load above 0.15 CPU is marked
``*`` and, while the time allows, run again (the less disturbed run is
kept). An open loop that started its calls more than 5 ms late (p99) with
no other load is marked ``!``: the benchmark's own processes -- three
servers and the load process for Redis -- kept both CPUs busy.

There are no numeric targets: the figures and ratios are reported. The exit
status is 1 when something broke (a failed Publish, a lost, duplicated or
gapped delivery, a non-200 or non-``accepted`` webhook, a crashed or hung
process, the time budget exceeded), else 0.

Usage: ``python -m tests.bench --only replicas`` or ``python -c "import sys;
from tests.bench.replicas import main; sys.exit(main())" [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import secrets
import shutil
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
import redis
import redis.asyncio
import yaml
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from tests.bench.load import ClosedResult, OpenResult, closed_loop, open_loop, percentile
from tests.bench.loop import run_on_uvloop
from tests.bench.procs import (
    Child,
    ChildError,
    child_env,
    free_port,
    machine_busy_seconds,
    self_cpu_seconds,
)
from tests.bench.webhooks import SECRET, SECRET_ENV, SOURCE, Pool, stripe_body, wait_started
from tests.webhook_support import stripe_headers

#: A phase is "disturbed" when other processes used more CPU than this (in CPUs) ...
OTHER_LOAD_NOTE = 0.15
#: ... or when the open loop started its calls this late (p99, ms): a starved generator.
START_LAG_NOTE_MS = 5.0
START_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0
#: Deliveries still missing this long after the last Publish answered are lost.
DRAIN_TIMEOUT = 5.0
#: The subscription must deliver a probe event within this.
PROBE_TIMEOUT = 10.0
#: A disturbed phase runs again only if this much of the budget would be left after it.
RERUN_MARGIN = 15.0
#: Webhooks signed ahead per second of an ingest phase (more are signed on the
#: fly, and counted, if the sidecar is faster).
PRESIGN_PER_S = 6000
#: Event data: sequence number (-1 for probes) and perf_counter() before Publish.
STAMP = struct.Struct("<qd")
BACKENDS = ("redis", "sqlite")


@dataclass(frozen=True)
class Settings:
    mode: str
    warmup: float
    duration: float
    rate: float
    concurrency: int
    rounds: int
    #: Disturbed phases may run again, this many times in the whole run.
    reruns: int
    #: The whole run (start-up to shutdown) must end within this many seconds.
    budget: float


FULL = Settings("full", warmup=1.0, duration=5.0, rate=1000.0, concurrency=128, rounds=3,
                reruns=4, budget=140.0)
QUICK = Settings("quick", warmup=0.3, duration=1.0, rate=1000.0, concurrency=128, rounds=1,
                 reruns=0, budget=60.0)


class BadAnswer(Exception):
    pass


def _pid_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ====================================================================== load process

class Load:
    """Runs every phase against the sidecars named in ``spec``; see the module docstring."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.s = Settings(**spec["settings"])
        self.sidecars: dict[str, dict[str, str]] = spec["sidecars"]
        #: Processes whose CPU is measured: name -> pid.
        self.pids: dict[str, int] = {k: int(v) for k, v in spec["pids"].items()}
        #: Which processes serve each backend (their CPU is "servers").
        self.servers: dict[str, list[str]] = spec["servers"]
        self.deadline = float(spec["deadline"])  # time.time() by which reruns must end
        self.run_id = f"{os.getpid():x}{int(time.time()):x}"
        self.secret = os.environ[SECRET_ENV]
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.reruns_left = self.s.reruns
        #: Wall time of the longest phase so far (seconds): decides whether a rerun fits.
        self.longest_phase = self.s.warmup + self.s.duration + 2.0
        self.phase_no = 0

    def probe(self) -> dict[str, float]:
        out = {name: _pid_cpu_seconds(pid) for name, pid in self.pids.items()}
        out["load"] = self_cpu_seconds()
        out["machine"] = machine_busy_seconds()
        return out

    def stub(self, replica: str) -> pb_grpc.SidecarServiceStub:
        if replica not in self.channels:
            self.channels[replica] = grpc.aio.insecure_channel(self.sidecars[replica]["grpc"])
        return pb_grpc.SidecarServiceStub(self.channels[replica])

    def url(self, replica: str) -> str:
        return f"http://{self.sidecars[replica]['edge']}/webhooks/{SOURCE}"

    def cpu_fields(self, backend: str, cpu: dict[str, float], seconds: float,
                   count: int) -> dict[str, Any]:
        ours = sum(v for k, v in cpu.items() if k != "machine")
        servers = sum(cpu[k] for k in self.servers[backend] if k in cpu)
        mine = [*self.servers[backend], "load"]
        return {
            "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_us_per_item": {k: round(cpu[k] / count * 1e6) if count else None
                                for k in mine if k in cpu},
            "servers_cores": round(servers / seconds, 2),
            "servers_cpu_us_per_item": round(servers / count * 1e6, 1) if count else None,
            "load_cores": round(cpu.get("load", 0.0) / seconds, 2),
            # CPU the rest of the machine used meanwhile (other benchmarks, tests, ...).
            "other_cores": round(max(0.0, cpu.get("machine", ours) - ours) / seconds, 2),
        }

    # ------------------------------------------------------------------ sanity

    async def sanity(self) -> dict[str, Any]:
        """A webhook accepted on A is a duplicate on B (one Redis, one prefix)."""
        body = stripe_body(f"evt_sanity_{self.run_id}", 1_700_000_000)
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
            answers = {}
            for replica in ("A", "B", "S"):
                async with session.post(self.url(replica), data=body,
                                        headers=stripe_headers(body, self.secret)) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        raise BadAnswer(f"sanity webhook to {replica}: HTTP {resp.status}: "
                                        f"{raw[:200]!r}")
                    answers[replica] = json.loads(raw)
        out = {r: a.get("status") for r, a in answers.items()}
        expected = {"A": "accepted", "B": "duplicate", "S": "accepted"}
        if out != expected or answers["B"].get("event_id") != answers["A"].get("event_id"):
            raise BadAnswer(f"sanity: answers {answers}, expected statuses {expected} with B "
                            "naming A's stored event (do A and B share Redis and the prefix?)")
        return out

    # ------------------------------------------------------------------ latency

    async def latency(self, backend: str) -> dict[str, Any]:
        s = self.s
        pub_replica, sub_replica = ("A", "B") if backend == "redis" else ("S", "S")
        pub, sub = self.stub(pub_replica), self.stub(sub_replica)
        self.phase_no += 1
        topic = f"bench.replicas.{self.run_id}.{self.phase_no}"
        n_warm = round(s.warmup * s.rate)  # as open_loop counts them
        n_total = n_warm + round(s.duration * s.rate)
        seen = bytearray(n_total)
        delivered_ms: list[float] = []
        counts = {"delivered": 0, "duplicates": 0, "gaps": 0, "unknown": 0}
        stream_error: list[str] = []
        probe_seen = asyncio.Event()
        all_in = asyncio.Event()
        perf = time.perf_counter
        unpack = STAMP.unpack

        call = sub.Subscribe(pb.SubscribeRequest(topics=[topic],
                                                 start=pb.START_POSITION_LATEST))

        async def receive() -> None:
            try:
                async for resp in call:
                    now = perf()
                    kind = resp.WhichOneof("message")
                    if kind == "event":
                        seq, sent = unpack(resp.event.data)
                        if seq < 0:
                            probe_seen.set()
                        elif seq >= n_total:
                            counts["unknown"] += 1
                        elif seen[seq]:
                            counts["duplicates"] += 1
                        else:
                            seen[seq] = 1
                            counts["delivered"] += 1
                            if seq >= n_warm:
                                delivered_ms.append((now - sent) * 1000)
                            if counts["delivered"] == n_total:
                                all_in.set()
                    elif kind == "gap":
                        counts["gaps"] += 1
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    stream_error.append(f"Subscribe on {sub_replica}: {exc.code().name}: "
                                        f"{exc.details()}")
            except Exception as exc:
                stream_error.append(f"Subscribe on {sub_replica}: {type(exc).__name__}: {exc}")
            finally:
                all_in.set()  # wake the waiter: the stream is over

        receiver = asyncio.create_task(receive())
        try:
            # The subscription is live once a probe event published after it arrives.
            deadline = time.monotonic() + PROBE_TIMEOUT
            while not probe_seen.is_set():
                if receiver.done() or time.monotonic() > deadline:
                    raise BadAnswer(f"{backend}: no probe event reached the subscriber on "
                                    f"{sub_replica} within {PROBE_TIMEOUT:g}s "
                                    f"{stream_error[:1]}")
                await pub.Publish(pb.PublishRequest(topic=topic, type="bench.probe",
                                                    data=STAMP.pack(-1, perf())),
                                  timeout=REQUEST_TIMEOUT)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(probe_seen.wait(), 0.05)
            await asyncio.sleep(0.2)  # stray probes arrive before the clock starts

            seq = itertools.count()

            async def publish() -> None:
                request = pb.PublishRequest(topic=topic, type="bench.tick",
                                            data=STAMP.pack(next(seq), perf()))
                await pub.Publish(request, timeout=REQUEST_TIMEOUT)

            probed: list[float] = []

            def probe() -> dict[str, float]:
                probed.append(perf())
                return self.probe()

            r: OpenResult = await open_loop(publish, rate=s.rate, warmup=s.warmup,
                                            duration=s.duration, probe=probe)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), DRAIN_TIMEOUT)
        finally:
            call.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
        delivered_ms.sort()
        lat = delivered_ms
        missing = n_total - counts["delivered"] - r.errors.count  # a failed Publish: not sent
        errors = (r.errors.count + counts["duplicates"] + counts["gaps"] + counts["unknown"]
                  + max(0, missing) + len(stream_error))
        first = r.errors.first or (stream_error[0] if stream_error else "")
        if not first and errors:
            first = (f"{max(0, missing)} missing, {counts['duplicates']} duplicate(s), "
                     f"{counts['gaps']} gap(s), {counts['unknown']} unknown event(s)")
        x = {
            "backend": backend, "publish_on": pub_replica, "subscribe_on": sub_replica,
            "topic": topic, "rate": r.rate, "sent": r.sent, "seconds": round(r.seconds, 3),
            "achieved_per_s": round(r.achieved, 1), "published_total": n_total,
            "delivered_total": counts["delivered"], "measured_deliveries": len(lat),
            "missing": max(0, missing), "duplicates": counts["duplicates"],
            "gaps": counts["gaps"], "publish_errors": r.errors.count,
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99), "max_ms": lat[-1] if lat else None,
            "publish_p50_ms": percentile(r.latencies_ms, 50),
            "publish_p99_ms": percentile(r.latencies_ms, 99),
            "start_lag_p99_ms": percentile(r.lag_ms, 99),
            "errors": errors, "first_error": first,
            # CPU between the two probes: from the first measured Publish to the answer
            # of the last (longer than the schedule when the sidecar falls behind).
            "cpu_window_s": round(probed[-1] - probed[0], 3),
            **self.cpu_fields(backend, r.cpu, probed[-1] - probed[0], r.sent),
        }
        return x

    # ------------------------------------------------------------------ ingest

    async def ingest(self, backend: str) -> dict[str, Any]:
        s = self.s
        replica = "A" if backend == "redis" else "S"
        url = self.url(replica)
        self.phase_no += 1
        t = time.perf_counter()
        pool = Pool(f"{self.run_id}_{self.phase_no}_", math.ceil(
            PRESIGN_PER_S * (s.warmup + s.duration)), secret=self.secret)
        presign = time.perf_counter() - t
        answers = {"accepted": 0}
        connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=0,
                                         keepalive_timeout=60)
        async with aiohttp.ClientSession(
                connector=connector, auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:

            async def send() -> None:
                item = pool.next()
                async with session.post(url, data=item.body, headers=item.headers) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        raise BadAnswer(f"{item.event_id}: HTTP {resp.status}: {raw[:200]!r}")
                status = json.loads(raw).get("status")
                if status != "accepted":
                    raise BadAnswer(f"{item.event_id}: answered {status!r}, not 'accepted'")
                answers["accepted"] += 1

            r: ClosedResult = await closed_loop(send, concurrency=s.concurrency,
                                                warmup=s.warmup, duration=s.duration,
                                                probe=self.probe)
        lat = r.latencies_ms
        return {
            "backend": backend, "replica": replica, "calls": r.calls,
            "seconds": round(r.seconds, 3), "accepted_per_s": round(r.rate, 1),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else None,
            "accepted_total": answers["accepted"], "errors": r.errors.count,
            "first_error": r.errors.first, "presign_seconds": round(presign, 2),
            "signed_on_the_fly": pool.signed_on_the_fly,
            **self.cpu_fields(backend, r.cpu, r.seconds, r.calls),
        }

    # ------------------------------------------------------------------ rounds

    async def phase(self, kind: str, backend: str, left: int) -> dict[str, Any]:
        """Run one phase; again while disturbed, within the allowance and while the
        ``left`` phases still to come would fit before the deadline."""
        best: dict[str, Any] | None = None
        tries = 0
        while True:
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            x = await (self.latency(backend) if kind == "latency" else self.ingest(backend))
            self.longest_phase = max(self.longest_phase, time.monotonic() - t0 + 0.3)
            tries += 1
            # Only other work disturbs a phase: a late open loop with no other load
            # means the benchmark's own processes saturate the CPUs (running it again
            # would not change that); it is reported as "saturated" instead.
            x["disturbance"] = round(x["other_cores"] / OTHER_LOAD_NOTE, 2)
            x["saturated"] = (x.get("start_lag_p99_ms") or 0.0) > START_LAG_NOTE_MS
            if x["errors"]:
                best = x  # an error is never hidden by a rerun
                break
            if best is None or x["disturbance"] < best["disturbance"]:
                best = x
            if (best["disturbance"] <= 1.0 or self.reruns_left <= 0
                    or time.time() + self.longest_phase * (1 + left) > self.deadline):
                break
            self.reruns_left -= 1
        best["tries"] = tries
        return best

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sanity": await self.sanity(), "latency": [], "ingest": []}
        try:
            schedule = [(rnd, kind, backend) for rnd in range(self.s.rounds)
                        for kind in ("latency", "ingest")
                        for backend in (BACKENDS if rnd % 2 == 0 else BACKENDS[::-1])]
            for i, (rnd, kind, backend) in enumerate(schedule):
                x = await self.phase(kind, backend, len(schedule) - i - 1)
                x["round"] = rnd + 1
                out[kind].append(x)
                if x["errors"]:
                    out["aborted"] = (f"{kind} on {backend} (round {rnd + 1}, other load "
                                      f"{x['other_cores']:.2f} CPU) failed: {x['first_error']}")
                    return out
        finally:
            for channel in self.channels.values():
                await channel.close(grace=None)
        out["reruns_used"] = self.s.reruns - self.reruns_left
        return out


async def load_main(spec: dict[str, Any]) -> dict[str, Any]:
    gen = Load(spec)
    try:
        return await gen.run()
    except (BadAnswer, grpc.aio.AioRpcError, aiohttp.ClientError, OSError) as exc:
        return {"aborted": f"{type(exc).__name__}: {exc}"}


# ====================================================================== the run

def sidecar_config(path: Path, data_dir: Path, backend: str, prefix: str,
                   s: Settings) -> None:
    huge = {"rate": 1_000_000, "burst": 1_000_000}
    storage: dict[str, Any] = {"backend": backend, "data_dir": str(data_dir)}
    if backend == "redis":
        storage["redis"] = {"url_env": "REDIS_URL", "key_prefix": prefix}
    config = {
        "version": 1,
        "server": {
            "grpc": {"address": "127.0.0.1:0"},
            "edge": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "shutdown_grace": "2s",
        },
        "storage": storage,
        # info, not warning: "sidecar started" is an info line (see the docstring).
        "logging": {"level": "info", "format": "json"},
        "webhooks": {
            "per_ip_rate_limit": huge,
            "max_concurrent": max(1024, 2 * s.concurrency),
            "sources": {SOURCE: {"scheme": "stripe", "secrets_env": [SECRET_ENV],
                                 "rate_limit": huge}},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


async def start_redis(tmp: Path, env: dict[str, str], children: list[Child]
                      ) -> tuple[Child, str]:
    """A private ``redis-server`` on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ChildError("no REDIS_URL and no redis-server on PATH "
                         "(Debian/Ubuntu: apt-get install redis-server)")
    directory = tmp / "redis"
    directory.mkdir()
    for attempt in range(3):  # the picked port may be taken in between: try another
        port = free_port()
        child = Child("redis-server", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no",
                                       "--dir", str(directory)], env)
        children.append(child)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.asyncio.Redis.from_url(url, socket_timeout=1.0)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                try:
                    await client.ping()
                    return child, url
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    if child.proc.poll() is not None:
                        break
                    if time.monotonic() > deadline:
                        raise ChildError(f"redis-server did not answer within "
                                         f"{START_TIMEOUT:g}s:\n{child.tail()}") from None
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()
        children.remove(child)
        child.stop()
        if attempt == 2:
            raise ChildError(f"redis-server exited with {child.proc.returncode}:\n"
                             f"{child.tail()}")
    raise AssertionError("unreachable")


async def redis_info(url: str) -> dict[str, Any]:
    client = redis.asyncio.Redis.from_url(url, socket_timeout=2.0)
    try:
        info = await client.info("server")
        memory = await client.info("memory")
        return {"version": info.get("redis_version"),
                "used_memory_mb": round(memory.get("used_memory", 0) / 2**20, 1)}
    finally:
        await client.aclose()


async def delete_prefix(url: str, prefix: str) -> int:
    """Remove every key under ``prefix`` (SCAN + DEL) from a Redis this run did not start."""
    client = redis.asyncio.Redis.from_url(url, socket_timeout=5.0)
    removed = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += await client.delete(*batch)
                batch.clear()
        if batch:
            removed += await client.delete(*batch)
    finally:
        await client.aclose()
    return removed


def warnings(child: Child, keep: int = 6) -> list[str]:
    """The distinct warning and error messages among a sidecar's last log lines."""
    seen: dict[str, int] = {}
    for line in child.lines:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = {"level": "error", "msg": line}  # a traceback or other raw output
        if isinstance(obj, dict) and obj.get("level") in ("warning", "error", "critical"):
            text = f"{obj.get('level')} {obj.get('logger', '')}: {obj.get('msg')}"
            detail = obj.get("error") or obj.get("exc_info") or obj.get("reason")
            text += f" ({str(detail)[:300]})" if detail else ""
            seen[text] = seen.get(text, 0) + 1
    return [f"{text} x{n}" for text, n in list(seen.items())[-keep:]]


async def run(s: Settings, results: dict[str, Any]) -> None:
    started = time.time()
    problems: list[str] = results["problems"]
    children: list[Child] = []
    external = os.environ.get("REDIS_URL") or ""
    prefix = f"bench-replicas:{secrets.token_hex(6)}:"
    results["key_prefix"] = prefix
    state: dict[str, Any] = {"url": external}
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-replicas-") as tmp:
        try:
            async with asyncio.timeout(s.budget):
                await _measure(s, results, Path(tmp), children, state, prefix, started)
        except TimeoutError:
            problems.append(f"the run did not finish within its {s.budget:g}s budget")
        except (ChildError, BadAnswer, OSError, ValueError, redis.RedisError) as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            codes = results.setdefault("exit_codes", {})
            lines = results.setdefault("log_lines", {})
            # The load process and the sidecars first, Redis last.
            for child in sorted(reversed(children), key=lambda c: c.name == "redis-server"):
                running = child.proc.poll() is None
                code = child.stop()
                codes[child.name] = code
                if child.name.startswith("sidecar"):
                    lines[child.name] = child.line_count
                    if warned := warnings(child):
                        results.setdefault("sidecar_warnings", {})[child.name] = warned
                if code != 0 and running:
                    problems.append(f"{child.name} exited with {code} after SIGTERM "
                                    f"(None: killed); its last output:\n{child.tail()}")
                elif code != 0 and not any(child.name in p for p in problems):
                    problems.append(f"{child.name} had exited with {code}; its last "
                                    f"output:\n{child.tail()}")
            if external and state.get("prefix_used"):
                try:
                    results["keys_deleted"] = await asyncio.wait_for(
                        delete_prefix(external, prefix), 20.0)
                except (TimeoutError, redis.RedisError, OSError) as exc:
                    problems.append(f"could not delete the keys under {prefix!r}: {exc}")


async def _measure(s: Settings, results: dict[str, Any], tmp: Path, children: list[Child],
                   state: dict[str, Any], prefix: str, started: float) -> None:
    py = sys.executable
    env = {**child_env(), SECRET_ENV: SECRET}
    pids: dict[str, int] = {}
    if state["url"]:
        url = state["url"]
        parts = urlsplit(url)
        results["redis"] = {"source": "REDIS_URL", "host": parts.hostname, "port": parts.port}
    else:
        server, url = await start_redis(tmp, env, children)
        pids["redis"] = server.pid
        results["redis"] = {"source": "private redis-server", "address": url.split("//")[1]}
    results["redis"].update(await redis_info(url))
    env["REDIS_URL"] = url
    state["prefix_used"] = True

    sidecars: dict[str, Child] = {}
    for name, backend in (("A", "redis"), ("B", "redis"), ("S", "sqlite")):
        directory = tmp / name
        directory.mkdir()
        sidecar_config(directory / "sidecar.yaml", directory / "data", backend, prefix, s)
        child = Child(f"sidecar-{name}", [py, "-m", "sidecar", "serve", "--config",
                                          str(directory / "sidecar.yaml")], env)
        children.append(child)
        sidecars[name] = child
    addresses: dict[str, dict[str, str]] = {}
    for name, child in sidecars.items():
        line = await wait_started(child, START_TIMEOUT)
        want = "sqlite" if name == "S" else "redis"
        if line.get("storage") != want:
            raise ChildError(f"{child.name} started with storage {line.get('storage')!r}, "
                             f"not {want!r}")
        addresses[name] = {"grpc": line["grpc"], "edge": line["edge"]}
        pids[name] = child.pid
    results["sidecars"] = {n: {**a, "pid": sidecars[n].pid} for n, a in addresses.items()}

    spec = {
        "settings": asdict(s), "sidecars": addresses, "pids": pids,
        "servers": {"redis": [k for k in ("A", "B", "redis") if k in pids], "sqlite": ["S"]},
        # Reruns must leave time for the shutdown and the report.
        "deadline": started + s.budget - RERUN_MARGIN,
        "out": str(tmp / "load.json"),
    }
    (tmp / "load-spec.json").write_text(json.dumps(spec))
    load = Child("load", [py, "-m", "tests.bench.replicas", "--load",
                          str(tmp / "load-spec.json")], env)
    children.append(load)
    while (code := load.proc.poll()) is None:
        for child in children:
            if child is not load:
                child.check_alive()
        await asyncio.sleep(0.05)
    if code != 0:
        raise ChildError(f"the load process exited with {code}:\n{load.tail()}")
    lg = json.loads((tmp / "load.json").read_text())
    results["load"] = lg
    for child in children:
        if child is not load:
            child.check_alive()
    results["memory_mb"] = {c.name: round(c.rss_mb(), 1) for c in children if c is not load
                            and c.proc.poll() is None}
    results["redis"].update(await redis_info(url))
    if lg.get("aborted"):
        results["problems"].append(f"the load process stopped: {lg['aborted']}")
    summarise(results)


def _median(values: list[float | None]) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else None


def summarise(results: dict[str, Any]) -> None:
    lg = results["load"]
    summary: dict[str, Any] = {}
    for kind, metrics in (("latency", ("p50_ms", "p90_ms", "p99_ms", "publish_p99_ms",
                                       "servers_cpu_us_per_item")),
                          ("ingest", ("accepted_per_s", "p50_ms", "p99_ms",
                                      "servers_cpu_us_per_item"))):
        per: dict[str, Any] = {}
        for backend in BACKENDS:
            xs = [x for x in lg.get(kind, []) if x["backend"] == backend]
            if not xs:
                continue
            per[backend] = {m: _median([x[m] for x in xs]) for m in metrics}
            per[backend]["max_ms"] = max((x["max_ms"] for x in xs if x["max_ms"] is not None),
                                         default=None)
            per[backend]["cpu_us_per_item"] = {
                name: _median([x["cpu_us_per_item"].get(name) for x in xs])
                for name in xs[0]["cpu_us_per_item"]}
            per[backend]["rounds"] = len(xs)
            per[backend]["disturbed_rounds"] = sum(x["disturbance"] > 1.0 for x in xs)
            per[backend]["saturated_rounds"] = sum(x.get("saturated", False) for x in xs)
        if len(per) == 2:
            key = "p99_ms" if kind == "latency" else "accepted_per_s"
            r, q = per["redis"][key], per["sqlite"][key]
            per["ratio_redis_sqlite"] = round(r / q, 2) if r is not None and q else None
            per["ratio_of"] = key
            r, q = (per[b]["servers_cpu_us_per_item"] for b in BACKENDS)
            # Server CPU per item hardly depends on other load: the steadiest comparison.
            per["cpu_ratio_redis_sqlite"] = round(r / q, 2) if r is not None and q else None
            per["reliable"] = not any(per[b]["disturbed_rounds"] for b in BACKENDS)
            calm = {b: [x[key] for x in lg[kind] if x["backend"] == b
                        and x["disturbance"] <= 1.0] for b in BACKENDS}
            if all(calm.values()):
                r, q = _median(calm["redis"]), _median(calm["sqlite"])
                per["calm"] = {"redis": r, "sqlite": q, "rounds": {b: len(v) for b, v
                                                                   in calm.items()},
                               "ratio_redis_sqlite": round(r / q, 2) if r and q else None}
        summary[kind] = per
    results["summary"] = summary
    errors = sum(x["errors"] for k in ("latency", "ingest") for x in lg.get(k, []))
    if errors:
        firsts = [x["first_error"] for k in ("latency", "ingest") for x in lg.get(k, [])
                  if x["first_error"]]
        results["problems"].append(f"{errors} error(s); first: {firsts[:1]}")


# ====================================================================== report

def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _calm(per: dict[str, Any], unit: str) -> str:
    """The ratio over undisturbed rounds only, when the rounds were not all calm."""
    calm = per.get("calm")
    if per["reliable"] or not calm:
        return ""
    digits = 0 if unit == "/s" else 2
    unit = unit if unit == "/s" else f" {unit}"
    return (f"; undisturbed rounds only ({calm['rounds']['redis']} redis, "
            f"{calm['rounds']['sqlite']} sqlite): {_f(calm['redis'], digits)}{unit} / "
            f"{_f(calm['sqlite'], digits)}{unit} = {_f(calm['ratio_redis_sqlite'])}")


def _cpu_line(per: dict[str, Any]) -> str:
    """``A 600 + B 400 + redis 150 = 1150 us (load 450 us)`` from the medians."""
    cpu = dict(per["cpu_us_per_item"])
    load = cpu.pop("load", None)
    parts = " + ".join(f"{k} {_f(v, 0)}" for k, v in cpu.items())
    total = sum(v for v in cpu.values() if v is not None)
    return (f"{parts} = {total:.0f} us" if len(cpu) > 1 else f"{parts} us") + \
        f" (load process {_f(load, 0)} us)"


def report(s: Settings, res: dict[str, Any]) -> str:
    env = res["environment"]
    rd = res.get("redis", {})
    where = rd.get("address") or f"{rd.get('host')}:{rd.get('port')}"
    out = [
        "integration-sidecar replicas benchmark: Redis backend (2 replicas) vs SQLite "
        "(1 sidecar)",
        f"mode {s.mode}: {s.rounds} round(s), each phase {s.warmup:g} s warm-up + "
        f"{s.duration:g} s measured; {env['cpus']} CPUs; Python {env['python']}; grpcio "
        f"{env['grpcio']}; aiohttp {env['aiohttp']}; redis-py {env['redis_py']}",
        f"Redis {rd.get('version', '?')} ({rd.get('source', '?')}, {where}"
        f"{'' if rd.get('source') == 'REDIS_URL' else ', no persistence'}); key prefix "
        f"{res.get('key_prefix')}",
        "all traffic on 127.0.0.1; processes: replicas A and B (python -m sidecar serve, "
        "storage redis), S (SQLite, synchronous=FULL),",
        "  the load process (grpc.aio + aiohttp on uvloop: publisher, subscriber and webhook "
        "senders, one clock) and this one",
    ]
    lg = res.get("load") or {}
    if "sanity" in lg:
        sn = lg["sanity"]
        out.append(f"sanity: one webhook -> A {sn['A']}, B {sn['B']} (same stored event), "
                   f"S {sn['S']}")
    servers = "A+B" if rd.get("source") == "REDIS_URL" else "A+B+redis"
    if lg.get("latency"):
        out += [
            "",
            f"Publish-to-delivery, open loop at {s.rate:g} events/s, live gRPC Subscribe "
            "(redis: Publish on A, Subscribe on B; sqlite: both on S)",
            "round backend  delivered    p50 ms   p90 ms   p99 ms   max ms  publish p99  "
            "lag p99  servers CPU         load   other  errors",
        ]
        for x in lg["latency"]:
            mark = "*" if x["disturbance"] > 1.0 else "!" if x["saturated"] else " "
            out.append(
                f"{x['round']:>3}{mark}  {x['backend']:<7} {x['delivered_total']:>5}/"
                f"{x['published_total']:<5} {_f(x['p50_ms']):>7}  {_f(x['p90_ms']):>7}  "
                f"{_f(x['p99_ms']):>7}  {_f(x['max_ms']):>7}  {_f(x['publish_p99_ms']):>8} ms"
                f"  {_f(x['start_lag_p99_ms']):>5} ms  "
                f"{_f(x['servers_cpu_us_per_item'], 0):>5} us/ev {x['servers_cores']:>4.2f}c"
                f"  {x['load_cores']:>4.2f}c  {x['other_cores']:>4.2f}c  {x['errors']:>5}")
        out.append(f"  servers CPU: {servers} for redis, S for sqlite, per published event "
                   "and cores; delivery = perf_counter at arrival - perf_counter before "
                   "Publish")
    if lg.get("ingest"):
        out += [
            "",
            f"Webhook ingest, closed loop, {s.concurrency} senders, unique signed Stripe "
            "webhooks (redis: to A; sqlite: to S)",
            "round backend  accepted/s   p50 ms   p99 ms   max ms  servers CPU         "
            "load   other  errors",
        ]
        for x in lg["ingest"]:
            mark = "*" if x["disturbance"] > 1.0 else " "
            out.append(
                f"{x['round']:>3}{mark}  {x['backend']:<7} {x['accepted_per_s']:>10.0f}  "
                f"{_f(x['p50_ms']):>7}  {_f(x['p99_ms']):>7}  {_f(x['max_ms']):>7}  "
                f"{_f(x['servers_cpu_us_per_item'], 0):>5} us/wh {x['servers_cores']:>4.2f}c"
                f"  {x['load_cores']:>4.2f}c  {x['other_cores']:>4.2f}c  {x['errors']:>5}")
        on_the_fly = sum(x["signed_on_the_fly"] for x in lg["ingest"])
        if on_the_fly:
            out.append(f"  NOTE: {on_the_fly} webhooks were signed during measurement "
                       "(the pre-signed pool ran out)")
    phases = lg.get("latency", []) + lg.get("ingest", [])
    if any(x["disturbance"] > 1.0 for x in phases):
        out.append(f"  * disturbed: other processes used more than {OTHER_LOAD_NOTE} CPU "
                   "('other'); the figures of that round are unreliable")
    if any(x.get("saturated") and x["disturbance"] <= 1.0 for x in phases):
        out.append(f"  ! saturated: the open loop started its Publish calls late (lag p99 > "
                   f"{START_LAG_NOTE_MS:g} ms) with no other load: this benchmark's own "
                   f"processes kept the {env['cpus']} CPUs busy")
    sm = res.get("summary") or {}
    if sm:
        out += ["", "Summary (median over rounds; max: highest of any round)"]
        la = sm.get("latency", {})
        if "redis" in la and "sqlite" in la:
            r, q = la["redis"], la["sqlite"]
            out.append(f"  publish-to-delivery at {s.rate:g}/s  redis across A->B: p50 "
                       f"{_f(r['p50_ms'])} ms, p99 {_f(r['p99_ms'])} ms, max "
                       f"{_f(r['max_ms'])} ms")
            out.append(f"  {'':35}sqlite on S:       p50 {_f(q['p50_ms'])} ms, p99 "
                       f"{_f(q['p99_ms'])} ms, max {_f(q['max_ms'])} ms")
            out.append(f"  p99 ratio redis/sqlite = {_f(la['ratio_redis_sqlite'])}"
                       f"{'' if la['reliable'] else '  (UNRELIABLE: disturbed rounds)'}"
                       f"{_calm(la, 'ms')}")
            out.append(f"  CPU per event: redis {_cpu_line(r)}; sqlite {_cpu_line(q)}; "
                       f"servers redis/sqlite = {_f(la['cpu_ratio_redis_sqlite'])}")
        ing = sm.get("ingest", {})
        if "redis" in ing and "sqlite" in ing:
            r, q = ing["redis"], ing["sqlite"]
            out.append(f"  webhook ingest  redis (A): {r['accepted_per_s']:.0f} accepted/s "
                       f"({_f(r['servers_cpu_us_per_item'], 0)} us CPU/webhook in A+redis); "
                       f"sqlite (S): {q['accepted_per_s']:.0f} accepted/s "
                       f"({_f(q['servers_cpu_us_per_item'], 0)} us CPU/webhook)")
            out.append(f"  accepted/s ratio redis/sqlite = {_f(ing['ratio_redis_sqlite'])}"
                       f"{'' if ing['reliable'] else '  (UNRELIABLE: disturbed rounds)'}"
                       f"{_calm(ing, '/s')}")
            out.append(f"  CPU per webhook: redis {_cpu_line(r)}; sqlite {_cpu_line(q)}; "
                       f"servers redis/sqlite = {_f(ing['cpu_ratio_redis_sqlite'])}")
        out.append("  (no numeric targets in issue 6: the figures and ratios are reported)")
    if "log_lines" in res:
        out.append(f"  log lines written in the whole run: {res['log_lines']}")
    if "memory_mb" in res:
        out.append(f"  RSS after the load (MB): {res['memory_mb']}; Redis used_memory "
                   f"{rd.get('used_memory_mb', '?')} MB")
    for name, warned in (res.get("sidecar_warnings") or {}).items():
        out.append(f"  {name} logged: " + "; ".join(warned))
    if lg.get("reruns_used"):
        out.append(f"  disturbed phases run again: {lg['reruns_used']}")
    if rd.get("source") == "REDIS_URL":
        out.append("  NOTE: Redis from REDIS_URL: its CPU is not measured (counts as 'other' "
                   "if it runs on this machine)")
    if res.get("problems"):
        out += ["", "PROBLEMS (the benchmark is broken, exit status 1):"]
        out += [f"  - {p}" for p in res["problems"]]
    out.append(f"(whole run: {res.get('elapsed_s', 0):.1f} s)")
    return "\n".join(out)


# ====================================================================== entry point

def _environment() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "grpcio": grpc.__version__, "aiohttp": aiohttp.__version__,
            "redis_py": redis.__version__, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.replicas",
        description="Benchmark two Redis-backed replicas against one SQLite sidecar.")
    parser.add_argument("--quick", action="store_true", help="about 1 s per phase (smoke test)")
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="also write the results as JSON to PATH")
    parser.add_argument("--load", metavar="SPEC", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        spec = json.loads(args.load.read_text())
        result: dict[str, Any] = {}

        async def generate() -> None:
            result.update(await load_main(spec))

        run_on_uvloop(generate)
        Path(spec["out"]).write_text(json.dumps(result, default=str))
        return 0
    s = QUICK if args.quick else FULL
    results: dict[str, Any] = {"benchmark": "replicas", "mode": s.mode, "settings": asdict(s),
                               "environment": _environment(), "problems": []}
    t0 = time.perf_counter()
    try:
        run_on_uvloop(lambda: run(s, results))
    except KeyboardInterrupt:
        results["problems"].append("interrupted")
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    results["ok"] = not results["problems"]
    print(report(s, results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

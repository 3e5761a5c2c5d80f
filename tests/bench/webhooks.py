"""Webhook ingest benchmark: signed webhooks accepted end to end per second.

Method. Everything runs on this machine and talks only to 127.0.0.1, in three
processes:

* this process -- starts the others, checks durability, prints the report;
* the sidecar -- ``python -m sidecar serve`` (uvloop) with one ``stripe``
  source whose secret is in its environment; per-source and per-client-IP rate
  limits of 1e6/s (on, but never limiting); ``max_concurrent`` 1024; SQLite in
  a temporary directory with ``synchronous=FULL`` (the default); ports 0, the
  edge address read from its JSON ``sidecar started`` log line;
* the load generator -- this module with ``--loadgen`` (uvloop, one aiohttp
  client session with a pool of ``concurrency`` keep-alive connections).

Every webhook is a realistic ~480-byte Stripe event with a unique ``evt_`` id,
signed (``Stripe-Signature: t=<now>,v1=<HMAC-SHA256>``) before its phase
starts, so signing costs nothing during measurement. An answer counts only when
it is HTTP 200 with the expected ``status``; anything else (another status, a
wrong ``status``, a duplicate that names another stored event, a transport
error or timeout) is an error, and any error fails the run.

Phases, in order (each after a warm-up whose answers are not counted):

0. sanity: a valid webhook -> ``accepted``; the same id again -> ``duplicate``
   naming the same stored event; a tampered body -> 401;
1. *max accepted*: a closed loop of ``concurrency`` senders, each sending the
   next unique webhook as soon as its answer arrives; accepted answers/s over
   the measured window;
2. *max with 10% duplicates*: the same, with every 10th webhook a provider
   retry (fresh signature) of an id accepted in phase 1, which must be answered
   ``duplicate``; (accepted + duplicate) answers/s;
3. *latency*: an open loop at a fixed rate (500/s) -- webhook *i* starts at
   ``t0 + i/rate`` whatever became of earlier ones; p50/p99 from send to answer.

The CPU time of the sidecar and of the load generator in each window is
reported (per webhook for the sidecar), and "other load": CPU the rest of the
machine used meanwhile (other benchmarks on these 2 cores disturb the figures).

Durability: right after the last answer the sidecar is killed with SIGKILL (no
graceful shutdown, no checkpoint) and the ``events`` and ``webhook_events``
rows in ``<data_dir>/sidecar.db`` are counted: both must equal the number of
``accepted`` answers in the whole run (a row missing: an answered webhook was
lost; a row too many: something was stored twice or without an answer). This
is a coarse check -- no request is in flight at the kill, so a commit that
merely lags its answer by milliseconds would not show; the crash tests in
``tests/test_webhooks_crash.py`` cover that -- and a process kill cannot test
power loss, which is what ``synchronous=FULL`` is for.

Target: >= 3,000 accepted webhooks/s. Missing it is reported, not fatal; the
exit status is 1 only when something broke (errors, a lost or extra row, a
crashed or hung process, the time budget exceeded).

The sidecar logs at ``info`` and not ``warning`` because its ``sidecar
started`` line is an info line; the webhook path writes no info line for an
accepted or duplicate webhook, so this costs nothing per request (the report
shows how many lines the sidecar wrote in the whole run).

Usage: ``python -c "import sys; from tests.bench.webhooks import main;
sys.exit(main())" [--quick] [--json PATH]`` (or ``python -m tests.bench.webhooks``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import platform
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.bench.load import Errors, open_loop, percentile
from tests.bench.loop import run_on_uvloop
from tests.bench.procs import (
    Child,
    ChildError,
    child_env,
    machine_busy_seconds,
    self_cpu_seconds,
)
from tests.webhook_support import stripe_headers

TARGET_ACCEPTED_PER_S = 3000.0
#: Other processes' CPU use (in CPUs) above which the report warns of disturbance.
OTHER_LOAD_NOTE = 0.15
SOURCE = "stripe"
SECRET_ENV = "BENCH_STRIPE_WHSEC"
SECRET = "whsec_bench_" + "5f3c1a9e7d2b4c6a8e0f1d3b5a7c9e2f"
DUPLICATE_EVERY = 10  # every 10th webhook of phase 2 is a retry: 10% duplicates
#: Webhooks signed ahead per second of a closed-loop phase (more are signed on
#: the fly, and counted, if the sidecar is faster than this).
PRESIGN_PER_S = 8000
REQUEST_TIMEOUT = 10.0
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Settings:
    mode: str
    warmup: float
    duration: float
    concurrency: int
    latency_rate: float
    #: The whole run (start-up to the durability check) must end within this.
    budget: float


FULL = Settings("full", warmup=1.0, duration=5.0, concurrency=128, latency_rate=500.0,
                budget=110.0)
QUICK = Settings("quick", warmup=0.3, duration=1.0, concurrency=128, latency_rate=500.0,
                 budget=60.0)

PHASES = {
    "unique": "(1) max accepted, unique ids",
    "duplicates": "(2) max, 10% duplicates",
    "latency": "(3) fixed rate, open loop",
}


class BadAnswer(Exception):
    pass


# ====================================================================== load generator

@dataclass(frozen=True)
class Webhook:
    event_id: str
    body: bytes
    headers: dict[str, str]
    #: The answer's ``status`` this webhook must get.
    expect: str


def stripe_body(event_id: str, created: int) -> bytes:
    """A Stripe ``invoice.paid`` event shaped like the real thing (~480 bytes)."""
    suffix = event_id[-12:]
    return json.dumps({
        "id": event_id, "object": "event", "api_version": "2024-06-20", "created": created,
        "type": "invoice.paid", "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": {
            "id": f"in_{suffix}", "object": "invoice", "amount_due": 2000,
            "amount_paid": 2000, "currency": "usd", "customer": f"cus_{suffix}",
            "subscription": f"sub_{suffix}", "status": "paid", "paid": True,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_1/{suffix}",
            "lines": {"object": "list", "total_count": 1, "has_more": False},
        }},
    }, separators=(",", ":")).encode()


class Pool:
    """Webhooks signed ahead of a phase, handed out in order."""

    def __init__(self, prefix: str, count: int, *, secret: str,
                 retry_ids: list[str] | None = None) -> None:
        self._prefix = prefix
        self._secret = secret
        self._retry_ids = retry_ids or []
        self._n = 0
        self._retries = 0
        self.signed_on_the_fly = 0
        self._items = [self._make() for _ in range(count)]
        self._next = 0

    def _make(self) -> Webhook:
        self._n += 1
        now = int(time.time())
        if self._retry_ids and self._n % DUPLICATE_EVERY == 0:
            # A provider retry: the same event (id and body), signed again now.
            event_id = self._retry_ids[self._retries % len(self._retry_ids)]
            self._retries += 1
            expect = "duplicate"
        else:
            event_id = f"evt_{self._prefix}{self._n:08d}"
            expect = "accepted"
        body = stripe_body(event_id, 1_700_000_000)
        return Webhook(event_id, body, stripe_headers(body, self._secret, now), expect)

    def next(self) -> Webhook:
        if self._next < len(self._items):
            item = self._items[self._next]
            self._next += 1
            return item
        self.signed_on_the_fly += 1
        return self._make()


def _pid_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoadGen:
    def __init__(self, spec: dict[str, Any], session: aiohttp.ClientSession) -> None:
        self.s = Settings(**spec["settings"])
        self.url = spec["url"]
        self.sidecar_pid = int(spec["sidecar_pid"])
        self.secret = os.environ[SECRET_ENV]
        self.session = session
        self.prefix = f"{os.getpid():x}_{int(time.time()):x}_"
        #: Answers of the whole run by kind: accepted, duplicate, http_<status>, ...
        self.totals: collections.Counter[str] = collections.Counter()
        #: provider event id -> stored event id, for every accepted answer.
        self.stored: dict[str, str] = {}
        self.errors = Errors()

    def probe(self) -> dict[str, float]:
        return {"sidecar": _pid_cpu_seconds(self.sidecar_pid), "loadgen": self_cpu_seconds(),
                "machine": machine_busy_seconds()}

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self.session.post(self.url, data=body, headers=headers) as resp:
            return resp.status, await resp.read()

    async def send(self, item: Webhook) -> str:
        """Send one webhook; returns its answer's status or raises ``BadAnswer``."""
        try:
            code, raw = await self.post(item.body, item.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.totals["transport_error"] += 1
            raise BadAnswer(f"{item.event_id}: {type(exc).__name__}: {exc}") from exc
        if code != 200:
            self.totals[f"http_{code}"] += 1
            raise BadAnswer(f"{item.event_id}: HTTP {code}: {raw[:200]!r}")
        answer = json.loads(raw)
        status = str(answer.get("status"))
        self.totals[status] += 1
        if status == "accepted":
            if item.event_id in self.stored:
                raise BadAnswer(f"{item.event_id}: accepted a second time (stored twice)")
            self.stored[item.event_id] = answer["event_id"]
        if status != item.expect:
            raise BadAnswer(f"{item.event_id}: answered {status!r}, expected {item.expect!r}")
        if status == "duplicate" and answer.get("event_id") != self.stored.get(item.event_id):
            raise BadAnswer(f"{item.event_id}: duplicate names {answer.get('event_id')}, "
                            f"stored as {self.stored.get(item.event_id)}")
        return status

    async def sanity(self) -> dict[str, Any]:
        pool = Pool(self.prefix + "s", 1, secret=self.secret)
        item = pool.next()
        first = await self.send(item)
        again = await self.send(Webhook(item.event_id, item.body,
                                        stripe_headers(item.body, self.secret), "duplicate"))
        tampered = item.body.replace(b'"amount_paid":2000', b'"amount_paid":1')
        code, _ = await self.post(tampered, stripe_headers(item.body, self.secret))
        if code != 401:
            raise BadAnswer(f"a tampered webhook got HTTP {code}, not 401: verification is off?")
        return {"valid": first, "same_id_again": again, "tampered_body": code}

    async def closed(self, pool: Pool) -> dict[str, Any]:
        """``concurrency`` senders, each sending the next webhook once answered."""
        stop = measuring = False
        window: collections.Counter[str] = collections.Counter()
        latencies: list[float] = []
        errors = Errors()
        perf = time.perf_counter

        async def sender() -> None:
            while not stop:
                item = pool.next()
                t0 = perf()
                try:
                    status = await self.send(item)
                except BadAnswer as exc:
                    errors.add(exc)
                    self.errors.add(exc)
                    await asyncio.sleep(0.01)  # a broken target must not spin the loop
                    continue
                if measuring:
                    latencies.append((perf() - t0) * 1000)
                    window[status] += 1

        senders = [asyncio.create_task(sender()) for _ in range(self.s.concurrency)]
        try:
            await asyncio.sleep(self.s.warmup)
            cpu0 = self.probe()
            measuring = True
            t_start = perf()
            await asyncio.sleep(self.s.duration)
            measuring = False
            seconds = perf() - t_start
            cpu1 = self.probe()
        finally:
            stop = True
            await asyncio.gather(*senders, return_exceptions=True)
        latencies.sort()
        answers = window["accepted"] + window["duplicate"]
        return {
            "seconds": round(seconds, 3), "answers": answers,
            "accepted": window["accepted"], "duplicate": window["duplicate"],
            "answers_per_s": round(answers / seconds, 1),
            "accepted_per_s": round(window["accepted"] / seconds, 1),
            "duplicate_per_s": round(window["duplicate"] / seconds, 1),
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1] if latencies else None,
            "errors": errors.count, "first_error": errors.first,
            "signed_on_the_fly": pool.signed_on_the_fly,
            **_cpu_fields({k: cpu1[k] - cpu0[k] for k in cpu1}, seconds, answers),
        }

    async def fixed_rate(self, pool: Pool) -> dict[str, Any]:
        errors_before = self.errors.count

        async def call() -> None:
            try:
                await self.send(pool.next())
            except BadAnswer as exc:
                self.errors.add(exc)
                raise

        r = await open_loop(call, rate=self.s.latency_rate, warmup=self.s.warmup,
                            duration=self.s.duration, probe=self.probe)
        lat = r.latencies_ms
        return {
            "rate": r.rate, "sent": r.sent, "seconds": round(r.seconds, 3),
            "answers_per_s": round(r.achieved, 1), "accepted_per_s": round(r.achieved, 1),
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99), "max_ms": lat[-1] if lat else None,
            "start_lag_p99_ms": percentile(r.lag_ms, 99),
            "errors": self.errors.count - errors_before, "first_error": r.errors.first,
            **_cpu_fields(r.cpu, r.seconds, r.sent),
        }

    async def run(self) -> dict[str, Any]:
        s = self.s
        out: dict[str, Any] = {"sanity": await self.sanity()}
        closed_count = math.ceil(PRESIGN_PER_S * (s.warmup + s.duration))

        t = time.perf_counter()
        pool = Pool(self.prefix + "u", closed_count, secret=self.secret)
        out["presign_seconds"] = round(time.perf_counter() - t, 2)
        out["unique"] = await self.closed(pool)

        await asyncio.sleep(0.3)
        retry_ids = list(self.stored)[-20_000:]
        pool = Pool(self.prefix + "d", closed_count, secret=self.secret, retry_ids=retry_ids)
        out["duplicates"] = await self.closed(pool)

        await asyncio.sleep(0.3)
        pool = Pool(self.prefix + "l", math.ceil(s.latency_rate * (s.warmup + s.duration)) + 10,
                    secret=self.secret)
        out["latency"] = await self.fixed_rate(pool)

        out["totals"] = dict(self.totals)
        out["accepted_total"] = self.totals["accepted"]
        out["errors"] = self.errors.count
        out["first_error"] = self.errors.first
        return out


def _cpu_fields(cpu: dict[str, float], seconds: float, answers: int) -> dict[str, Any]:
    ours = cpu["sidecar"] + cpu["loadgen"]
    return {
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "sidecar_cores": round(cpu["sidecar"] / seconds, 2),
        "loadgen_cores": round(cpu["loadgen"] / seconds, 2),
        # CPU the rest of the machine used meanwhile (other benchmarks, ...).
        "other_cores": round(max(0.0, cpu["machine"] - ours) / seconds, 2),
        "sidecar_cpu_us_per_webhook": (round(cpu["sidecar"] / answers * 1e6, 1)
                                       if answers else None),
    }


async def loadgen_main(spec: dict[str, Any]) -> dict[str, Any]:
    s = Settings(**spec["settings"])
    connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=0,
                                     keepalive_timeout=60)
    async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
        gen = LoadGen(spec, session)
        try:
            result = await gen.run()
        except BadAnswer as exc:  # the sanity checks failed
            result = {"errors": gen.errors.count + 1, "first_error": str(exc),
                      "totals": dict(gen.totals), "accepted_total": gen.totals["accepted"],
                      "aborted": True}
    return result


# ====================================================================== the run

def write_config(path: Path, data_dir: Path, s: Settings) -> None:
    huge = {"rate": 1_000_000, "burst": 1_000_000}
    config = {
        "version": 1,
        "server": {
            "grpc": {"address": "127.0.0.1:0"},
            "edge": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "shutdown_grace": "2s",
        },
        "storage": {"data_dir": str(data_dir)},
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


async def wait_started(child: Child, timeout: float) -> dict[str, Any]:
    """The sidecar's JSON ``sidecar started`` line (it names the bound addresses)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in list(child.lines):
            if line.startswith("{") and '"sidecar started"' in line:
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if obj.get("msg") == "sidecar started":
                        return dict(obj)
        child.check_alive()
        if time.monotonic() > deadline:
            raise ChildError(f"{child.name} did not start within {timeout:g}s; its output:\n"
                             f"{child.tail()}")
        await asyncio.sleep(0.02)


async def wait_exit(child: Child, watch: Child) -> int:
    """Wait for ``child`` to exit, failing early if ``watch`` dies meanwhile."""
    while (code := child.proc.poll()) is None:
        watch.check_alive()
        await asyncio.sleep(0.05)
    return code


def count_rows(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for table in ("events", "webhook_events")}
    finally:
        conn.close()


async def run(s: Settings, results: dict[str, Any]) -> None:
    env = {**child_env(), SECRET_ENV: SECRET}
    children: list[Child] = []
    problems: list[str] = results["problems"]
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-webhooks-") as tmp:
        try:
            async with asyncio.timeout(s.budget):
                await _measure(s, results, env, Path(tmp), children)
        except TimeoutError:
            problems.append(f"the run did not finish within its {s.budget:g}s budget")
        except (ChildError, OSError, sqlite3.Error, ValueError) as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            for child in reversed(children):
                killed = child.proc.poll() is not None and child.proc.returncode == -9
                code = child.stop()
                results.setdefault("exit_codes", {})[child.name] = code
                if code != 0 and not (child.name == "sidecar" and killed
                                      and results.get("durability")):
                    problems.append(f"{child.name} exited with {code} (None: killed after "
                                    f"SIGTERM); its last output:\n{child.tail()}")
            sidecar = next((c for c in children if c.name == "sidecar"), None)
            if sidecar is not None:
                results["sidecar_log_lines"] = sidecar.line_count


async def _measure(s: Settings, results: dict[str, Any], env: dict[str, str], tmp: Path,
                   children: list[Child]) -> None:
    py = sys.executable
    data_dir = tmp / "data"
    config = tmp / "sidecar.yaml"
    write_config(config, data_dir, s)
    sidecar = Child("sidecar", [py, "-m", "sidecar", "serve", "--config", str(config)], env)
    children.append(sidecar)
    started = await wait_started(sidecar, START_TIMEOUT)
    edge = started["edge"]
    results["sidecar"] = {"pid": sidecar.pid, "edge": edge}

    spec = {"settings": asdict(s), "url": f"http://{edge}/webhooks/{SOURCE}",
            "sidecar_pid": sidecar.pid, "out": str(tmp / "loadgen.json")}
    (tmp / "loadgen-spec.json").write_text(json.dumps(spec))
    loadgen = Child("loadgen", [py, "-m", "tests.bench.webhooks", "--loadgen",
                                str(tmp / "loadgen-spec.json")], env)
    children.append(loadgen)
    code = await wait_exit(loadgen, sidecar)
    if code != 0:
        raise ChildError(f"the load generator exited with {code}:\n{loadgen.tail()}")
    lg = json.loads((tmp / "loadgen.json").read_text())
    results["loadgen"] = lg
    results["memory"] = {"sidecar_rss_mb": round(sidecar.rss_mb(), 1),
                         "sidecar_peak_rss_mb": round(sidecar.peak_rss_mb(), 1)}
    if lg.get("errors"):
        results["problems"].append(f"{lg['errors']} webhook(s) failed; answers by kind: "
                                   f"{lg.get('totals')}; first: {lg.get('first_error')}")

    # Durability: kill without any shutdown right after the last answer, then count.
    sidecar.proc.kill()
    sidecar.proc.wait()
    rows = count_rows(data_dir / "sidecar.db")
    accepted = int(lg.get("accepted_total", 0))
    ok = rows["events"] == accepted and rows["webhook_events"] == accepted
    results["durability"] = {"accepted_answers": accepted, **rows, "ok": ok}
    if not ok:
        results["problems"].append(
            f"durability check failed: {accepted} accepted answers but {rows['events']} "
            f"events and {rows['webhook_events']} webhook_events rows after SIGKILL")
    if "unique" in lg:
        results["targets"] = [target("accepted webhooks/s", lg["unique"]["accepted_per_s"],
                                     ">=", TARGET_ACCEPTED_PER_S, "/s")]


def target(name: str, value: float | None, op: str, limit: float, unit: str = ""
           ) -> dict[str, Any]:
    met = value is not None and (value >= limit if op == ">=" else value <= limit)
    return {"name": name, "value": value, "op": op, "target": limit, "unit": unit, "met": met}


# ====================================================================== report

def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(s: Settings, res: dict[str, Any]) -> str:
    env = res["environment"]
    out = [
        "integration-sidecar webhook ingest benchmark",
        f"mode {s.mode}: {s.warmup:g} s warm-up + {s.duration:g} s measured per phase; "
        f"{env['cpus']} CPUs; Python {env['python']}; aiohttp {env['aiohttp']}; "
        f"uvloop {env['uvloop']}; SQLite {env['sqlite']}",
        "all traffic on 127.0.0.1; three processes: the sidecar (python -m sidecar serve, "
        "uvloop), the load generator",
        f"  (aiohttp client on uvloop, {s.concurrency} senders over a pool of "
        f"{s.concurrency} keep-alive connections) and this one",
        f"  source '{SOURCE}' (scheme stripe, HMAC-SHA256), ~480-byte events, each signed "
        "before its phase with a unique id and a current timestamp;",
        "  rate limits 1e6/s (never limit); SQLite synchronous=FULL; an 'accepted' answer "
        "means verified + de-duplicated + committed",
    ]
    lg = res.get("loadgen") or {}
    if "sanity" in lg:
        sn = lg["sanity"]
        out.append(f"sanity: valid -> {sn['valid']}; same id again -> {sn['same_id_again']} "
                   f"(same stored event); tampered body -> HTTP {sn['tampered_body']}")
    if "latency" in lg:
        out += [
            "",
            "phase                          answers/s  accepted/s  duplicate/s   p50 ms   "
            "p99 ms   max ms  sidecar CPU      loadgen  other    errors",
        ]
        for key in ("unique", "duplicates", "latency"):
            x = lg[key]
            dup = x.get("duplicate_per_s", 0.0)
            cpu = x["sidecar_cpu_us_per_webhook"]
            out.append(
                f"{PHASES[key]:<30} {x['answers_per_s']:>9.0f}  {x['accepted_per_s']:>10.0f}"
                f"  {dup:>11.0f}  {_f(x['p50_ms']):>7}  {_f(x['p99_ms']):>7}  "
                f"{_f(x['max_ms']):>7}  {'-' if cpu is None else f'{cpu:.0f} us/wh':>10} "
                f"{x['sidecar_cores']:>4.2f}c  {x['loadgen_cores']:>4.2f}c  "
                f"{x['other_cores']:>4.2f}c  {x['errors']:>6}")
        la = lg["latency"]
        out += [
            f"  (1), (2): closed loop, {s.concurrency} webhooks in flight, {s.duration:g} s; "
            f"(2) sends every {DUPLICATE_EVERY}th webhook again (an id accepted in (1)), "
            "which must be answered 'duplicate'",
            f"  (3): open loop at {la['rate']:g}/s for {s.duration:g} s ({la['sent']} sent, "
            f"start lag p99 {_f(la['start_lag_p99_ms'])} ms); latency = send to answer",
            "  sidecar CPU: per answered webhook, and cores used; other: CPU the rest of the "
            "machine used meanwhile",
        ]
        on_the_fly = sum(lg[k].get("signed_on_the_fly", 0) for k in ("unique", "duplicates"))
        if on_the_fly:
            out.append(f"  NOTE: {on_the_fly} webhooks were signed during measurement "
                       "(the pre-signed pool ran out)")
    dur = res.get("durability")
    if dur:
        out += ["", f"Durability (sidecar killed with SIGKILL right after the last answer): "
                    f"{dur['accepted_answers']:,} 'accepted' answers in the whole run; "
                    f"{dur['events']:,} rows in events, {dur['webhook_events']:,} in "
                    f"webhook_events  {'OK' if dur['ok'] else 'MISMATCH'}"]
    if res.get("targets"):
        out += ["", "Summary"]
        for t in res["targets"]:
            out.append(f"  {t['name']} = {_f(t['value'], 0)} (target {t['op']} "
                       f"{t['target']:,.0f}{t['unit']})  {'MET' if t['met'] else 'MISSED'}")
        if "duplicates" in lg and "latency" in lg:
            out.append(f"  with 10% duplicates: {lg['duplicates']['answers_per_s']:.0f} "
                       f"answers/s; at {lg['latency']['rate']:g}/s: p50 "
                       f"{_f(lg['latency']['p50_ms'])} ms, p99 {_f(lg['latency']['p99_ms'])} ms")
        totals = lg.get("totals", {})
        out.append(f"  answers in the whole run: {totals}; errors: {lg.get('errors', 0)}")
    if "sidecar_log_lines" in res:
        out.append(f"  sidecar wrote {res['sidecar_log_lines']} log line(s) in the whole run")
    if "memory" in res:
        out.append(f"  sidecar RSS after the load {res['memory']['sidecar_rss_mb']} MB "
                   f"(peak {res['memory']['sidecar_peak_rss_mb']} MB)")
    other = max((lg[k]["other_cores"] for k in PHASES if k in lg), default=0.0)
    if other > OTHER_LOAD_NOTE:
        out.append(f"  NOTE: other processes used up to {other:.2f} CPU of {env['cpus']} during "
                   "a phase ('other'): the figures are disturbed")
    if res.get("problems"):
        out += ["", "PROBLEMS (the benchmark is broken, exit status 1):"]
        out += [f"  - {p}" for p in res["problems"]]
    out.append(f"(whole run: {res.get('elapsed_s', 0):.1f} s)")
    return "\n".join(out)


# ====================================================================== entry point

def _environment() -> dict[str, Any]:
    try:
        import uvloop
        uv = str(getattr(uvloop, "__version__", "?"))
    except ImportError:  # pragma: no cover
        uv = "not installed"
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "uvloop": uv, "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.webhooks",
                                     description="Benchmark webhook ingest on the edge.")
    parser.add_argument("--quick", action="store_true", help="about 1 s per phase (smoke test)")
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="also write the results as JSON to PATH")
    parser.add_argument("--concurrency", metavar="N", type=int,
                        help=f"senders in the closed loops (default {FULL.concurrency})")
    parser.add_argument("--loadgen", metavar="SPEC", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        spec = json.loads(args.loadgen.read_text())
        result: dict[str, Any] = {}

        async def generate() -> None:
            result.update(await loadgen_main(spec))

        run_on_uvloop(generate)
        Path(spec["out"]).write_text(json.dumps(result, default=str))
        return 0
    s = QUICK if args.quick else FULL
    if args.concurrency:
        s = dataclasses.replace(s, concurrency=max(1, args.concurrency))
    results: dict[str, Any] = {"benchmark": "webhooks", "mode": s.mode, "settings": asdict(s),
                               "environment": _environment(), "problems": []}
    started = time.perf_counter()
    try:
        run_on_uvloop(lambda: run(s, results))
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

"""Alert rules, dashboard and metrics against a real sidecar: promtool checks and unit
tests, every metric and label the rules and dashboard use exists in a running sidecar's
/metrics, and a real Prometheus scrapes it and loads the rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import yaml
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import Sidecar
from tests.call_support import integration
from tests.conftest import make_config
from tests.deploy import generator
from tests.deploy.reasons import grpc_reasons
from tests.system_tools import require_binary
from tests.upstream import Upstream, reply
from tests.webhook_support import WEBHOOK_ENV, stripe_event, stripe_headers, webhook_sources

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
WS_SECRET = "observability-test-hmac-secret-0123456789"
SUNSET = "Wed, 11 Nov 2026 11:11:11 GMT"
#: Labels Prometheus (or the operator's relabelling) adds to every scraped series.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "le"}
METRIC = re.compile(r"\b((?:sidecar|grpc_server)_[a-z0-9_]+)\b")
#: PromQL words that are neither metrics nor labels.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset"}


def rule_list() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def all_exprs() -> list[str]:
    exprs = [r["expr"] for r in rule_list()]
    exprs += [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    return exprs


def labels_in(expr: str) -> set[str]:
    """Label names an expression groups by or matches on."""
    found: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        found.update(x.strip() for x in group.split(",") if x.strip())
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        found.update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return found - PROMQL_WORDS


# ------------------------------------------------------------------- rules

def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    promtool = require_binary("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_list())} rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True,
                            text=True, timeout=60, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    names = set()
    for rule in rule_list():
        name = rule["alert"]
        names.add(name)
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        url = notes["runbook_url"]
        assert url.split("#")[0].endswith("docs/operations.md"), url
        assert url.split("#")[1] == name.lower() and name.lower() in anchors, (
            f"{name}: no '### {name}' section in docs/operations.md")
    assert len(names) == len(rule_list())
    # The operator's PrometheusRule carries exactly these rules.
    cr = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml")
                        .read_text())
    assert cr["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


# --------------------------------------------------------------- dashboard

def test_dashboard_has_stable_uid_variables_units_and_the_required_panels() -> None:
    board = dashboard()
    assert board["uid"] == "integration-sidecar"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["integration"]["datasource"]["uid"] == "${datasource}"
    assert "integration" in variables["integration"]["definition"]
    panels = dashboard_panels()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']}: no unit"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}"
                                    for t in p["targets"])
    kinds = {p["type"] for p in panels}
    assert "state-timeline" in kinds
    text = json.dumps(panels)
    for needed in ("histogram_quantile", "sidecar_retries_total", "sidecar_circuit_breaker_state",
                   "sidecar_rate_limited_calls_total", "sidecar_webhooks_received_total",
                   "sidecar_group_events", "sidecar_websocket_connections",
                   "sidecar_live_deliveries_total", "grpc_server_handled_total",
                   '$integration'):
        assert needed in text, needed
    # Panels do not overlap on the 24-column grid.
    check_layout(board)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    # Grafana's variables as Prometheus would see them once substituted.
    exprs = [t["expr"].replace("$__rate_interval", "1m").replace("$integration", ".*")
             for p in dashboard_panels() for t in p["targets"]]
    rules = tmp_path / "dashboard.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def check_layout(board: dict[str, Any]) -> None:
    taken: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                 for y in range(g["y"], g["y"] + g["h"])}
        assert g["x"] + g["w"] <= 24 and not cells & taken, p["title"]
        taken |= cells


# ------------------------------------------------- a real sidecar's metrics


@contextlib.asynccontextmanager
async def exercised_sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    """A sidecar that has served a Call (with a Sunset), a webhook and a live WebSocket
    delivery, so labelled series exist."""
    upstream = await Upstream(default=reply(200, b"{}", {"Sunset": SUNSET,
                                                         "Deprecation": "@1700000000"})
                              ).start()
    config = make_config(tmp_path, {
        "integrations": {"payments": integration(upstream.url)},
        "webhooks": {"sources": webhook_sources()},
        "realtime": {"websocket": {"jwt": {"hs256_secret_env": "WS_SECRET"}}},
    }, env={**WEBHOOK_ENV, "WS_SECRET": WS_SECRET})
    sc = Sidecar(config)
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel, \
                aiohttp.ClientSession() as http:
            stub = pb_grpc.SidecarServiceStub(channel)
            answer = await stub.Call(pb.CallRequest(integration="payments", method="GET",
                                                    path="/charges"), timeout=10)
            assert answer.status == 200
            body = stripe_event("evt_obs_1")
            async with http.post(f"http://{sc.edge.address}/webhooks/stripe", data=body,
                                 headers=stripe_headers(body)) as resp:
                assert resp.status == 200
            token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, WS_SECRET,
                               algorithm="HS256")
            async with http.ws_connect(f"http://{sc.edge.address}/ws",
                                       headers={"Authorization": f"Bearer {token}"}) as ws:
                # Joined rooms are confirmed before events can arrive.
                subscribed = 0
                while subscribed < 2:  # user:alice and broadcast
                    frame = await asyncio.wait_for(ws.receive_json(), 5)
                    subscribed += frame.get("control") == "subscribed"
                await stub.Publish(pb.PublishRequest(topic="user:alice", type="t",
                                                     data=b"{}",
                                                     content_type="application/json"),
                                   timeout=5)
                event = await asyncio.wait_for(ws.receive_json(), 5)
                assert event["topic"] == "user:alice"
        yield sc
    finally:
        await sc.stop()
        await upstream.stop()


async def scrape(sc: Sidecar) -> str:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://{sc.admin.address}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "info": ("_info",), "summary": ("_sum", "_count")}


async def test_every_metric_and_label_used_by_rules_and_dashboard_is_exported(
        tmp_path: Path) -> None:
    async with exercised_sidecar(tmp_path) as sc:
        text = await scrape(sc)
    declared: dict[str, set[str]] = {}  # exposed sample name -> label names seen
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            declared.setdefault(family.name + suffix, set())
        for sample in family.samples:
            declared.setdefault(sample.name, set()).update(sample.labels)
    # The exercise produced the labelled series the panels chart.
    for name in ("sidecar_calls_total", "sidecar_webhooks_received_total",
                 "sidecar_live_deliveries_total", "sidecar_upstream_sunset_timestamp_seconds",
                 "sidecar_circuit_breaker_state", "sidecar_call_duration_seconds_bucket"):
        assert declared.get(name), f"{name}: no samples after the exercise"
    assert 'sidecar_webhooks_received_total{result="accepted",source="stripe"} 1.0' in text

    # The registry's view gives label names of families without samples too.
    registry_labels = {name: set(f["labels"]) for f in generator.load().metric_families()
                       for name in f["exposed"]}
    used = set()
    for expr in all_exprs():
        names = set(METRIC.findall(expr))
        assert names, f"no sidecar metric in {expr!r}"
        missing = names - set(declared)
        assert not missing, f"{expr!r} uses metrics the sidecar does not export: {missing}"
        allowed = TARGET_LABELS.union(*(registry_labels.get(n, set()) | declared[n]
                                        for n in names))
        unknown = labels_in(expr) - allowed
        assert not unknown, f"{expr!r} uses labels no metric in it has: {unknown}"
        used |= names
    assert len(used) >= 20


# ------------------------------------------------ a real Prometheus scraping it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def query(http: aiohttp.ClientSession, base: str, path: str,
                **params: str) -> dict[str, Any]:
    async with http.get(base + path, params=params) as resp:
        return dict(await resp.json())


async def test_a_real_prometheus_scrapes_the_sidecar_and_loads_the_rules(
        tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    async with exercised_sidecar(tmp_path) as sc:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "sidecar",
                                "static_configs": [{"targets": [sc.admin.address]}]}],
        }))
        proc = await asyncio.create_subprocess_exec(
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                # An external process: poll with a bounded deadline (Prometheus 2.x applies
                # new scrape targets on a 5 s tick, so the first sample takes about 5 s).
                deadline = time.monotonic() + 20
                result: list[dict[str, Any]] = []
                while not result:
                    assert proc.returncode is None, "prometheus exited"
                    assert time.monotonic() < deadline, "no sidecar series within 20 s"
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        answer = await query(http, base, "/api/v1/query",
                                             query='sidecar_calls_total{integration="payments"}')
                        result = answer["data"]["result"]
                    if not result:
                        await asyncio.sleep(0.2)
                (series,) = result
                assert series["metric"]["outcome"] == "success"
                assert float(series["value"][1]) == 1.0
                rules = await query(http, base, "/api/v1/rules")
                loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
                assert {r["name"] for r in loaded} == {r["alert"] for r in rule_list()}
                assert all(r["health"] in ("ok", "unknown") for r in loaded), loaded
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def test_dashboard_and_alert_agree_on_what_a_failed_call_is() -> None:
    not_failed = generator.load().NOT_FAILED
    (rule,) = [r for r in rule_list() if r["alert"] == "SidecarIntegrationErrorRateHigh"]
    assert f'outcome!~"{not_failed}"' in rule["expr"]
    assert f'outcome!~\\"{not_failed}\\"' in DASHBOARD.read_text()
    # Outcomes are the pipeline's own names or error reasons that really exist.
    listed = set(not_failed.split("|"))
    assert listed - {"success", "replayed", "client_error"} <= set(grpc_reasons())

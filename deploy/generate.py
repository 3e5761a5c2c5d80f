"""Generate the deploy artefacts that must follow the code: the Grafana dashboard,
the PrometheusRule wrapping ``deploy/prometheus/rules.yaml``, the metrics
reference in ``docs/operations.md`` (read from the sidecar's real registry), and the
config file's JSON Schema and reference page (``docs/configuration.md``), read from
the settings' declarations in ``sidecar/config/model.py``.

    python deploy/generate.py           rewrite them
    python deploy/generate.py --check   exit 1 when any is stale (tests run this)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
for entry in (ROOT, ROOT / "generated"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
CONFIG_SCHEMA = ROOT / "deploy" / "config" / "sidecar.schema.json"

METRICS_BEGIN = "<!-- BEGIN GENERATED METRICS (python deploy/generate.py) -->"
METRICS_END = "<!-- END GENERATED METRICS -->"

# --------------------------------------------------------------------------- metrics


def metric_families() -> list[dict[str, Any]]:
    """Every metric the sidecar registers: exposed names, type, labels, help."""
    from sidecar.metrics import Metrics

    registry = Metrics().registry
    found: list[dict[str, Any]] = []
    # The registry maps each collector to its sample names; label names are kept
    # on the collector (families without samples do not list them).
    for collector, _names in registry._collector_to_names.items():
        for family in collector.describe():
            kind = family.type
            base = family.name
            exposed = {
                "counter": [f"{base}_total"],
                "histogram": [f"{base}_bucket", f"{base}_sum", f"{base}_count"],
                "info": [f"{base}_info"],
                "summary": [f"{base}_sum", f"{base}_count"],
            }.get(kind, [base])
            found.append({
                "name": base, "type": kind, "exposed": exposed,
                "labels": list(getattr(collector, "_labelnames", ())),
                "help": family.documentation,
            })
    return sorted(found, key=lambda f: f["exposed"][0])


def exposed_metric_names() -> set[str]:
    return {name for f in metric_families() for name in f["exposed"]}


def metrics_reference() -> str:
    lines = [
        "| metric | type | labels | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for f in metric_families():
        labels = ", ".join(f"`{x}`" for x in f["labels"]) or "—"
        if f["type"] == "info":
            labels = ", ".join(f"`{x}`" for x in ("version", "python", "grpcio"))
        name = f"`{f['exposed'][0]}`"
        if f["type"] == "histogram":
            name = f"`{f['name']}` (`_bucket`, `_sum`, `_count`)"
        help_text = f["help"].replace("|", "\\|")
        lines.append(f"| {name} | {f['type']} | {labels} | {help_text} |")
    return "\n".join(lines) + "\n"


def render_operations(current: str) -> str:
    start, end = current.find(METRICS_BEGIN), current.find(METRICS_END)
    if start < 0 or end < start:
        raise SystemExit(f"{OPERATIONS}: the generated-metrics markers are missing")
    return (current[: start + len(METRICS_BEGIN)] + "\n" + metrics_reference()
            + current[end:])


# --------------------------------------------------------------------- PrometheusRule


def render_prometheus_rule() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "integration-sidecar",
                     "labels": {"app.kubernetes.io/name": "orders-app"}},
        "spec": {"groups": groups},
    }
    header = ("# Generated from deploy/prometheus/rules.yaml by `python deploy/generate.py`;\n"
              "# edit that file, not this one.\n")
    return header + yaml.safe_dump(resource, sort_keys=False, width=100)


# -------------------------------------------------------------------------- dashboard

DS = {"type": "prometheus", "uid": "${datasource}"}
INTEGRATION = 'integration=~"$integration"'
RATE = "[$__rate_interval]"
#: Call outcomes that are not the integration failing: an answer (4xx included), a replay,
#: or the caller's own mistake. SidecarIntegrationErrorRateHigh uses the same list.
NOT_FAILED = ("success|replayed|client_error|INVALID_ARGUMENT|INTEGRATION_NOT_FOUND|"
              "IDEMPOTENCY_IN_FLIGHT|IDEMPOTENCY_KEY_REUSED")


def _panel(title: str, kind: str, unit: str, targets: list[tuple[str, str]],
           description: str, width: int = 12, **extra: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    defaults.update(extra.pop("defaults", {}))
    panel: dict[str, Any] = {
        "type": kind, "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend,
                     "refId": chr(ord("A") + i),
                     **({"format": "table", "instant": True} if kind == "table" else {})}
                    for i, (expr, legend) in enumerate(targets)],
        "gridPos": {"w": width, "h": 8},
    }
    panel.update(extra)
    return panel


def _select(metric: str, selector: str) -> str:
    return f"{metric}{{{selector}}}" if selector else metric


def _rate(metric: str, by: str, selector: str = "") -> str:
    """Per-second rate of a counter, summed by ``by``."""
    return f"sum by ({by}) (rate({_select(metric, selector)}{RATE}))"


def _quantiles(metric: str, by: str, selector: str = "") -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le, {by}) "
             f"(rate({_select(metric + '_bucket', selector)}{RATE})))",
             f"p{int(q * 100)} {{{{{by}}}}}")
            for q in (0.5, 0.95, 0.99)]


def dashboard_panels() -> list[dict[str, Any]]:
    breaker = f"sidecar_circuit_breaker_state{{{INTEGRATION}, state="
    dead_or_waiting = 'sidecar_group_events{status=~"pending|delivered|failed|dead"}'
    return [
        {"type": "row", "title": "Calls", "collapsed": False, "panels": []},
        _panel("Success rate by integration", "timeseries", "percentunit",
               [("1 - (" + _rate("sidecar_calls_total", "integration",
                                 f'{INTEGRATION}, outcome!~"{NOT_FAILED}"')
                 + " or " + _rate("sidecar_calls_total", "integration", INTEGRATION) + " * 0) / "
                 + _rate("sidecar_calls_total", "integration", INTEGRATION), "{{integration}}")],
               "Share of Call RPCs the integration did not fail: an upstream answer (4xx "
               "included), a replay, or a request the caller got wrong.",
               defaults={"min": 0, "max": 1}),
        _panel("Calls by outcome", "timeseries", "reqps",
               [(_rate("sidecar_calls_total", "integration, outcome", INTEGRATION),
                 "{{integration}} {{outcome}}")],
               "Outcomes: success, client_error, server_error, replayed, stale, or the "
               "error reason (docs/errors.md)."),
        _panel("Call latency (retries included)", "timeseries", "s",
               _quantiles("sidecar_call_duration_seconds", "integration", INTEGRATION),
               "histogram_quantile over sidecar_call_duration_seconds."),
        _panel("Upstream attempt latency", "timeseries", "s",
               _quantiles("sidecar_upstream_attempt_duration_seconds", "integration",
                          INTEGRATION),
               "One HTTP attempt to the upstream."),
        _panel("Retries by reason", "timeseries", "reqps",
               [(_rate("sidecar_retries_total", "integration, reason", INTEGRATION),
                 "{{integration}} {{reason}}"),
                (_rate("sidecar_retry_budget_exhausted_total", "integration", INTEGRATION),
                 "{{integration}} budget exhausted")],
               "Retries per second by trigger, and retries skipped by the retry budget."),
        _panel("Circuit breaker state", "state-timeline", "none",
               [(f'max by (integration, scope) (({breaker}"open"}} * 2) or '
                 f'{breaker}"half_open"}})', "{{integration}} {{scope}}")],
               "Worst state over the replicas: closed, half-open or open.",
               defaults={"mappings": [{"type": "value", "options": {
                   "0": {"text": "closed", "color": "green", "index": 0},
                   "1": {"text": "half-open", "color": "yellow", "index": 1},
                   "2": {"text": "open", "color": "red", "index": 2}}}],
                   "color": {"mode": "thresholds"},
                   "thresholds": {"mode": "absolute", "steps": [
                       {"color": "green", "value": None}, {"color": "yellow", "value": 1},
                       {"color": "red", "value": 2}]}},
               options={"showValue": "never", "mergeValues": True}),
        _panel("Rate limiting", "timeseries", "reqps",
               [(_rate("sidecar_rate_limited_calls_total", "integration, action", INTEGRATION),
                 "{{integration}} {{action}}")],
               "Attempts that waited for a token, or were rejected (RATE_LIMITED)."),
        _panel("Upstream sunset dates", "table", "dateTimeFromNow",
               [(f"max by (integration, route) (sidecar_upstream_sunset_timestamp_seconds"
                 f"{{{INTEGRATION}}}) * 1000", "{{integration}} {{route}}")],
               "Sunset dates upstreams announced (RFC 8594).",
               options={"showHeader": True}),
        {"type": "row", "title": "Webhooks and durable groups", "collapsed": False,
         "panels": []},
        _panel("Webhooks by result", "timeseries", "reqps",
               [(_rate("sidecar_webhooks_received_total", "source, result"),
                 "{{source}} {{result}}")],
               "accepted, duplicate, or why one was refused (invalid_signature, "
               "stale_timestamp, rate_limited, ...)."),
        _panel("Webhook ingest latency", "timeseries", "s",
               _quantiles("sidecar_webhook_ingest_seconds", "source"),
               "Verify, de-duplicate and durably store, before the 200."),
        _panel("Events by status (pending, in flight, failed, dead)", "timeseries", "short",
               [(f"max by (group, status) ({dead_or_waiting})", "{{group}} {{status}}")],
               "Per durable group; max over replicas (with Redis they share the counts)."),
        _panel("Oldest unacked event age", "timeseries", "s",
               [("max by (group, topic) (sidecar_group_oldest_unacked_age_seconds)",
                 "{{group}} {{topic}}")],
               "How long the oldest incomplete event of each group has waited."),
        _panel("Deliveries and acks", "timeseries", "ops",
               [(_rate("sidecar_deliveries_total", "group"), "{{group}} delivered"),
                (_rate("sidecar_redeliveries_total", "group"), "{{group}} redelivered"),
                (_rate("sidecar_acks_total", "group, outcome"), "{{group}} ack {{outcome}}")],
               "Durable delivery throughput."),
        {"type": "row", "title": "Queued calls", "collapsed": False, "panels": []},
        _panel("Queued calls by state", "timeseries", "short",
               [(f'max by (integration, state) (sidecar_queued_calls{{{INTEGRATION}, '
                 'state=~"queued|running|dead"})', "{{integration}} {{state}}"),
                (f"max by (integration) (sidecar_queued_call_oldest_due_seconds"
                 f"{{{INTEGRATION}}})", "{{integration}} oldest due (s)")],
               "Backlog (queued, running), dead calls to replay, and how long due work has "
               "waited (SidecarQueuedCallsNotDraining fires past 15 minutes)."),
        _panel("Queued call attempts and outcomes", "timeseries", "ops",
               [(_rate("sidecar_queued_call_attempts_total", "integration, outcome",
                       INTEGRATION), "{{integration}} {{outcome}}"),
                (_rate("sidecar_queued_calls_finished_total", "integration, state",
                       INTEGRATION), "{{integration}} finished {{state}}")],
               "Attempts by status class, error reason or refused (nothing sent); calls "
               "finishing."),
        {"type": "row", "title": "Real-time", "collapsed": False, "panels": []},
        _panel("WebSocket connections and live subscribers", "timeseries", "short",
               [("sum(sidecar_websocket_connections)", "WebSocket connections"),
                ("sum by (transport) (sidecar_live_subscribers)", "subscribers {{transport}}")],
               "Open connections over all replicas."),
        _panel("Fan-out: live deliveries", "timeseries", "ops",
               [(_rate("sidecar_live_deliveries_total", "transport"), "{{transport}}"),
                (_rate("sidecar_events_published_total", "topic_class"),
                 "published {{topic_class}}")],
               "Events handed to live subscribers per second, and publishes."),
        _panel("Publish to delivery latency", "timeseries", "s",
               _quantiles("sidecar_publish_to_delivery_seconds", "transport"),
               "From publish to hand-off to a live subscriber."),
        _panel("Slow consumers and gaps", "timeseries", "ops",
               [(_rate("sidecar_slow_consumer_events_total", "transport, policy"),
                 "slow {{transport}} {{policy}}"),
                (_rate("sidecar_subscription_gaps_total", "reason"), "gap {{reason}}"),
                (_rate("sidecar_websocket_auth_failures_total", "reason"),
                 "ws auth refused {{reason}}")],
               "Subscribers that fell behind, gap markers sent, WebSocket auth refusals."),
        {"type": "row", "title": "gRPC and process", "collapsed": False, "panels": []},
        _panel("gRPC server errors by code", "timeseries", "reqps",
               [(_rate("grpc_server_handled_total", "grpc_method, grpc_code", 'grpc_code!="OK"'),
                 "{{grpc_method}} {{grpc_code}}")],
               "RPCs that ended with a status other than OK."),
        _panel("gRPC handling latency (p99)", "timeseries", "s",
               [(f'histogram_quantile(0.99, sum by (le, grpc_method) (rate('
                 f'grpc_server_handling_seconds_bucket{{grpc_type="unary"}}{RATE})))',
                 "{{grpc_method}}")],
               "Unary RPCs only: streams last as long as the client stays."),
        _panel("Ready replicas and storage", "timeseries", "short",
               [("sum(sidecar_ready)", "ready replicas"),
                ("sum by (backend) (sidecar_storage_up)", "storage up ({{backend}})")],
               "Replicas reporting ready, and those whose storage answered its last check."),
        _panel("Config reloads", "timeseries", "short",
               [('sum by (result) (increase(sidecar_config_reloads_total[$__rate_interval]))',
                 "{{result}}"),
                ("sum(sidecar_config_restart_required)", "replicas needing a restart")],
               "Reloads (SIGHUP or file watch) by result; replicas whose config changes "
               "settings that need a restart."),
    ]


def _layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    x = y = 0
    for pid, panel in enumerate(panels, start=1):
        panel["id"] = pid
        if panel["type"] == "row":
            y += 8 if x else 0
            x = 0
            panel["gridPos"] = {"x": 0, "y": y, "w": 24, "h": 1}
            y += 1
            continue
        w = panel["gridPos"]["w"]
        if x + w > 24:
            x, y = 0, y + 8
        panel["gridPos"] = {"x": x, "y": y, "w": w, "h": 8}
        x += w
    return panels


def render_dashboard() -> str:
    dashboard = {
        "uid": "integration-sidecar",
        "title": "Integration sidecar",
        "description": "Calls, webhooks, real-time fan-out and gRPC of the integration "
                       "sidecar (generated by deploy/generate.py).",
        "tags": ["integration-sidecar"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "graphTooltip": 1,
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "integration", "label": "Integration", "type": "query",
             "datasource": DS, "query": {"query": "label_values(sidecar_calls_total, "
                                                  "integration)", "refId": "integration"},
             "definition": "label_values(sidecar_calls_total, integration)",
             "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
             "current": {"text": "All", "value": "$__all"}, "sort": 1, "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": _layout(dashboard_panels()),
    }
    return json.dumps(dashboard, indent=2) + "\n"


# ------------------------------------------------------------------------- config


def render_config_reference() -> str:
    from sidecar.config.reference import render_reference

    return render_reference()


def render_config_schema() -> str:
    from sidecar.config.reference import SCHEMA_PATH, render_schema

    assert ROOT / SCHEMA_PATH == CONFIG_SCHEMA
    return render_schema()


# ------------------------------------------------------------------------------- main

Target = tuple[Path, Callable[[str], str]]


def targets() -> list[Target]:
    return [
        (PROMETHEUS_RULE, lambda _old: render_prometheus_rule()),
        (DASHBOARD, lambda _old: render_dashboard()),
        (OPERATIONS, render_operations),
        (CONFIGURATION, lambda _old: render_config_reference()),
        (CONFIG_SCHEMA, lambda _old: render_config_schema()),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, render in targets():
        old = path.read_text() if path.exists() else ""
        new = render(old)
        if new == old:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale (run `python deploy/generate.py`): " + ", ".join(map(str, stale)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HTML for ``/status``: one self-contained page (inline CSS, no external assets) drawn
from the ``/status.json`` snapshot. Every value is escaped; states carry text as
well as colour. A small inline script swaps in a fresh fragment every few seconds
(a meta refresh does it when scripts are off)."""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;
background:#f5f6f8}
header,main,footer{padding:0 20px}header{background:#1d2430;color:#fff;padding:12px 20px}
h1{font-size:18px;margin:0}h2{font-size:15px;margin:22px 0 6px}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef0f3;font-weight:600;font-size:12px;text-transform:uppercase}
tr.route td{background:#fafbfc;font-size:13px}tr.route td:first-child{padding-left:24px}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.muted{color:#6b7380}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;
white-space:nowrap}
.good{background:#dcf5e3;color:#11612d}.warn{background:#fff1cc;color:#7a5300}
.bad{background:#fde0de;color:#9b1c14}.idle{background:#e8eaee;color:#4a5261}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:0}dt{color:#6b7380}
dd{margin:0}footer{color:#6b7380;font-size:12px;margin:18px 0}
"""

_SCRIPT = """
(function () {
  var main = document.getElementById("status");
  var note = document.getElementById("refresh-note");
  var every = Number(main.getAttribute("data-refresh")) * 1000;
  function tick() {
    fetch(location.pathname + "?fragment=1", {cache: "no-store", credentials: "same-origin"})
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        main.innerHTML = html;
        note.textContent = "live: refreshed " + new Date().toLocaleTimeString();
      })
      .catch(function (e) {
        note.textContent = "refresh failed (" + e.message + "); the data shown may be old";
      })
      .then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
"""

#: Shown for a value that does not exist yet (no calls in the window).
NONE = "&ndash;"
#: value -> (css class, text shown)
_HEALTH = {"ok": ("good", "✓ ok"), "degraded": ("warn", "! degraded"),
           "recovering": ("warn", "↻ recovering"), "failing": ("bad", "✗ failing"),
           "idle": ("idle", "- idle")}
_BREAKER = {"closed": ("good", "● closed"), "half_open": ("warn", "◐ half-open"),
            "open": ("bad", "○ open")}
_SUNSET = {"past": ("bad", "sunset passed"), "near": ("warn", "sunset soon"),
           "later": ("idle", "sunset announced")}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _badge(kind: str, text: str) -> str:
    return f'<span class="badge {_e(kind)}">{_e(text)}</span>'


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return ""
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = now - ts
    rel = f"{_span(abs(delta))} {'ago' if delta >= 0 else 'from now'}"
    return f'<span title="{_e(stamp)}">{_e(rel)}</span>'


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{s // 60} min"
    if s < 48 * 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


def _latency(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _rate(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f} %"


def _rejected(counts: dict[str, int]) -> str:
    if not counts:
        return '<span class="muted">none</span>'
    return "<br>".join(f"{_e(reason)} {n}" for reason, n in counts.items())


def _breaker_cell(b: dict[str, Any] | None, now: float) -> str:
    if b is None:
        return '<span class="muted">off</span>'
    kind, text = _BREAKER.get(b["state"], ("idle", b["state"]))
    out = _badge(kind, text)
    if b.get("since") is not None:
        out += f' <span class="muted">since {_when(b["since"], now)}</span>'
    if b.get("retry_at") is not None:
        out += f'<br><span class="muted">probes again {_when(b["retry_at"], now)}</span>'
    return out


def _error_cell(err: dict[str, Any] | None, now: float) -> str:
    if err is None:
        return '<span class="muted">none</span>'
    where = f" on route {_e(err['route'])}" if err.get("route") else ""
    return f"{_e(err['reason'])}{where}<br><span class=\"muted\">{_when(err['at'], now)}</span>"


def _upstream_error(row: dict[str, Any], now: float) -> str:
    """When the last error was a refusal (breaker open...), what the upstream last did."""
    last, upstream = row["last_error"], row["last_upstream_error"]
    if upstream is None or upstream == last:
        return ""
    return f'<br><span class="muted">upstream:</span> {_error_cell(upstream, now)}'


def _deprecation_cell(items: list[dict[str, Any]], now: float) -> str:
    parts = []
    for d in items:
        bits = [f'<span class="muted">route {_e(d["route"])}:</span>'] if d.get("route") else []
        if d.get("sunset"):
            kind, text = _SUNSET[d["sunset"]]
            bits.append(f"{_badge(kind, text)} {_when(d['sunset_at'], now)}")
        if d.get("deprecated"):
            bits.append(_badge("warn", "deprecated")
                        + (" " + _when(d["deprecated_at"], now) if d.get("deprecated_at") else ""))
        link = d.get("link") or ""
        if link.startswith(("http://", "https://")):
            bits.append(f'<a href="{_e(link)}" rel="noreferrer noopener">notice</a>')
        elif link:
            bits.append(f'<span class="muted">{_e(link)}</span>')
        parts.append(" ".join(bits))
    return "<br>".join(parts) if parts else '<span class="muted">none</span>'


def _stats_cells(row: dict[str, Any]) -> str:
    return (f'<td class="num">{_rate(row["success_rate"])}</td>'
            f'<td class="num">{_latency(row["latency_p50_seconds"])}</td>'
            f'<td class="num">{_latency(row["latency_p99_seconds"])}</td>'
            f'<td class="num">{row["calls"]}</td>'
            f"<td>{_rejected(row['rejected'])}</td>")


def _integrations(items: list[dict[str, Any]], now: float, window: float) -> str:
    if not items:
        return '<p class="muted">No integrations are configured.</p>'
    head = ("<tr><th>Integration</th><th>Health</th><th>Breaker</th>"
            f"<th>Success ({_e(_span(window))})</th><th>p50</th><th>p99</th><th>Calls</th>"
            "<th>Rejected</th><th>Last error</th><th>Deprecation</th></tr>")
    rows = []
    for i in items:
        kind, text = _HEALTH.get(i["health"], ("idle", i["health"]))
        rows.append(
            f'<tr class="integration" data-integration="{_e(i["name"])}">'
            f"<td><strong>{_e(i['name'])}</strong></td><td>{_badge(kind, text)}</td>"
            f"<td>{_breaker_cell(i['breaker'], now)}</td>{_stats_cells(i)}"
            f"<td>{_error_cell(i['last_error'], now)}{_upstream_error(i, now)}</td>"
            f"<td>{_deprecation_cell(i['deprecations'], now)}</td></tr>")
        for r in i["routes"]:
            breaker = (_breaker_cell(r["breaker"], now) if r["own_breaker"]
                       else '<span class="muted">shared</span>')
            rows.append(
                f'<tr class="route" data-integration="{_e(i["name"])}" '
                f'data-route="{_e(r["name"])}"><td>↳ {_e(r["name"])} '
                f'<span class="muted">{_e(r["method"])} {_e(r["path"])}</span></td><td></td>'
                f"<td>{breaker}</td>{_stats_cells(r)}<td></td><td></td></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _webhooks(items: list[dict[str, Any]]) -> str:
    if not items:
        return '<p class="muted">No webhook sources are configured.</p>'
    head = ("<tr><th>Source</th><th>Topic</th><th>Stored</th><th>Pending</th>"
            "<th>Delivered</th><th>Failed</th><th>Dead</th><th>Oldest unacked</th>"
            "<th>Groups</th></tr>")
    rows = []
    for w in items:
        if "error" in w and "pending" not in w:
            rows.append(f'<tr data-source="{_e(w["source"])}"><td>{_e(w["source"])}</td>'
                        f'<td>{_e(w["topic"])}</td><td colspan="7">'
                        f'{_badge("bad", "storage error")} {_e(w["error"])}</td></tr>')
            continue
        dead = w["dead"]
        dead_cell = _badge("bad", f"{dead} dead") if dead else "0"
        age = w["oldest_unacked_age_seconds"]
        groups = ", ".join(_e(g["group"]) for g in w["groups"]) or _badge(
            "warn", "no consumer group yet")
        rows.append(
            f'<tr data-source="{_e(w["source"])}"><td><strong>{_e(w["source"])}</strong></td>'
            f'<td>{_e(w["topic"])}</td><td class="num">{w.get("stored_events", NONE)}</td>'
            f'<td class="num">{w["pending"]}</td><td class="num">{w["delivered"]}</td>'
            f'<td class="num">{w["failed"]}</td><td class="num">{dead_cell}</td>'
            f'<td class="num">{NONE if age is None else _e(_span(age))}</td>'
            f"<td>{groups}</td></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _queued(items: list[dict[str, Any]]) -> str:
    if not items:
        return '<p class="muted">No queued calls.</p>'
    if "error" in items[0]:
        return f'<p>{_badge("bad", "storage error")} {_e(items[0]["error"])}</p>'
    head = ("<tr><th>Integration</th><th>Queued</th><th>Running</th><th>Succeeded</th>"
            "<th>Failed</th><th>Dead</th><th>Cancelled</th><th>Oldest due</th></tr>")
    rows = []
    for q in items:
        dead = q["dead"]
        dead_cell = _badge("bad", f"{dead} dead") if dead else "0"
        age = q["oldest_due_seconds"]
        rows.append(
            f'<tr data-queue="{_e(q["integration"])}"><td><strong>{_e(q["integration"])}'
            f'</strong></td><td class="num">{q["queued"]}</td>'
            f'<td class="num">{q["running"]}</td><td class="num">{q["succeeded"]}</td>'
            f'<td class="num">{q["failed"]}</td><td class="num">{dead_cell}</td>'
            f'<td class="num">{q["cancelled"]}</td>'
            f'<td class="num">{NONE if age is None else _e(_span(age))}</td></tr>')
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _live(live: dict[str, Any]) -> str:
    ws = (str(live["websocket_connections"]) if live["websocket_enabled"]
          else '<span class="muted">WebSocket edge off</span>')
    return (f"<dl><dt>WebSocket connections</dt><dd>{ws}</dd>"
            f"<dt>gRPC live subscribers</dt><dd>{live['grpc_subscribers']}</dd>"
            f"<dt>Distinct users</dt><dd>{live['users']}</dd></dl>")


def _sidecar(info: dict[str, Any], now: float) -> str:
    ready = _badge("good", "✓ ready") if info["ready"] else _badge("bad", "✗ not ready")
    checks = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in sorted(info["checks"].items()))
    return (f"<dl><dt>Version</dt><dd>{_e(info['version'])}</dd>"
            f"<dt>Up</dt><dd>{_e(_span(info['uptime_seconds']))} "
            f"(since {_when(info['started_at'], now)})</dd>"
            f"<dt>Storage</dt><dd>{_e(info['storage_backend'])}</dd>"
            f"<dt>Readiness</dt><dd>{ready} <span class=\"muted\">{checks}</span></dd></dl>")


def render_fragment(data: dict[str, Any]) -> str:
    """The part of the page that refreshes."""
    now = data["generated_at"]
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%H:%M:%S UTC")
    return (f'<p class="muted" id="generated">As of {_e(stamp)}</p>'
            "<h2>Integrations</h2>"
            f'{_integrations(data["integrations"], now, data["window_seconds"])}'
            f"<h2>Webhook sources</h2>{_webhooks(data['webhooks'])}"
            f"<h2>Queued calls</h2>{_queued(data.get('queued_calls', []))}"
            f"<h2>Live connections</h2>{_live(data['live'])}"
            f"<h2>Sidecar</h2>{_sidecar(data['sidecar'], now)}")


def render_page(data: dict[str, Any], *, refresh: float, nonce: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>integration-sidecar status</title>"
        f'<noscript><meta http-equiv="refresh" content="{max(1, round(refresh))}"></noscript>'
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>integration-sidecar status</h1></header>"
        f'<main id="status" data-refresh="{refresh:g}">{render_fragment(data)}</main>'
        '<footer><span id="refresh-note">live: refreshes every '
        f'{refresh:g} s</span> · the same data as JSON: '
        '<a href="status.json">status.json</a></footer>'
        f'<script nonce="{_e(nonce)}">{_SCRIPT}</script></body></html>')

"""The integration-health status page: ``/status`` (HTML) and ``/status.json`` on the
admin listener, both built from one snapshot of the running sidecar.

``/status.json`` fields (``schema_version`` 1; times are Unix seconds, durations
seconds, rates fractions 0..1, ``null`` when unknown or idle):

- ``generated_at``, ``window_seconds`` (the rolling window of call statistics)
- ``sidecar``: ``version``, ``started_at``, ``uptime_seconds``, ``storage_backend``,
  ``ready``, ``checks`` (name -> ``ok`` or why not)
- ``integrations[]``: ``name``, ``health`` (``ok``, ``degraded``, ``recovering``,
  ``failing``, ``idle``), ``breaker`` (``state`` closed/open/half_open, ``since``,
  ``retry_at``, ``failure_rate``, ``consecutive_failures``; null when disabled),
  ``calls``, ``failures``, ``success_rate``, ``latency_p50_seconds``,
  ``latency_p99_seconds``, ``rejected`` (reason -> calls refused without reaching the
  upstream: ``CIRCUIT_OPEN``, ``RATE_LIMITED``, ``BULKHEAD_FULL``), ``last_error`` and
  ``last_upstream_error`` (``reason``, ``route``, ``status``, ``at``), ``deprecations[]``
  (``route``, ``deprecated``, ``deprecated_at``, ``sunset_at``, ``sunset`` past/near/later,
  ``link`` without query or credentials, ``seen_at``), ``routes[]`` (``name``, ``method``,
  ``path``, ``own_breaker``, ``breaker`` and the same call statistics)
- ``webhooks[]``: ``source``, ``topic``, ``stored_events``, ``pending``, ``delivered``,
  ``failed``, ``completed``, ``dead`` (summed over the consumer groups reading the
  source), ``oldest_unacked_age_seconds``, ``groups[]`` (the same counts per group),
  ``error`` (storage did not answer)
- ``live``: ``websocket_enabled``, ``websocket_connections``, ``grpc_subscribers``,
  ``users`` (distinct WebSocket users connected)
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from sidecar import __version__
from sidecar.admin import Readiness, authorised
from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.core.calls.health_window import CallHealth, LastError, WindowTotals, sunset_status
from sidecar.core.calls.queue.models import QueuedState
from sidecar.core.events.models import DeliveryStatus
from sidecar.core.events.presence import Presence
from sidecar.core.resilience import CircuitBreaker
from sidecar.core.resilience.headers import safe_link
from sidecar.errors import SidecarError
from sidecar.http_common import Handler, json_error
from sidecar.metrics import Metrics
from sidecar.storage import Storage

SCHEMA_VERSION = 1
#: Below this success rate an integration shows as degraded.
DEGRADED_BELOW = 0.95
#: Consumer groups per source whose oldest unacked event is looked up: the
#: page stays cheap however many groups an app creates.
MAX_GROUPS_PER_SOURCE = 20
#: Seconds between refreshes of the HTML page, unless ``?refresh=`` says otherwise.
DEFAULT_REFRESH = 5.0
MIN_REFRESH = 0.2
MAX_REFRESH = 3600.0
#: Seconds the webhook section may wait for storage before it shows an error.
STORAGE_TIMEOUT = 2.0
OPEN_WORK = (DeliveryStatus.PENDING, DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)


class BreakerSource(Protocol):
    def breakers(self) -> Mapping[str, CircuitBreaker]: ...


class StatusSource(Protocol):
    """What the page reads from the running sidecar, at each request (so a reload shows)."""

    @property
    def config(self) -> Config: ...

    @property
    def storage(self) -> Storage: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def presence(self) -> Presence: ...

    @property
    def websocket(self) -> object | None: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def calls(self) -> BreakerSource: ...

    async def readiness(self) -> Readiness: ...


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _error(e: LastError | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {"reason": e.reason, "route": e.route, "status": e.status or None, "at": e.at}


class StatusPage:
    def __init__(self, source: StatusSource, health: CallHealth) -> None:
        self._src = source
        self._health = health
        self._started_at = source.clock.time()
        self._started_mono = source.clock.monotonic()

    # ------------------------------------------------------------------ snapshot

    async def snapshot(self) -> dict[str, Any]:
        src = self._src
        now = src.clock.time()
        ready = await src.readiness()
        self._health.forget(src.config.integrations)
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": now,
            "window_seconds": self._health.window,
            "sidecar": {
                "version": __version__,
                "started_at": self._started_at,
                "uptime_seconds": round(src.clock.monotonic() - self._started_mono, 3),
                "storage_backend": src.storage.backend,
                "ready": ready.ready,
                "checks": ready.checks,
            },
            "integrations": self._integrations(now),
            "webhooks": await self._webhooks_bounded(now),
            "queued_calls": await self._queued_bounded(now),
            "live": self._live(),
        }

    def _stats(self, totals: WindowTotals) -> dict[str, Any]:
        return {
            "calls": totals.calls,
            "failures": totals.failures,
            "success_rate": _round(totals.success_rate, 4),
            "latency_p50_seconds": _round(totals.quantile(0.5)),
            "latency_p99_seconds": _round(totals.quantile(0.99)),
            "rejected": dict(sorted(totals.rejected.items())),
        }

    def _breaker(self, integration: str, scope: str,
                 breaker: CircuitBreaker | None) -> dict[str, Any] | None:
        if breaker is None:
            return None
        snap = breaker.snapshot()  # applies a due open -> half_open first
        change = self._health.breaker(integration, scope)
        since = change.since if change is not None and change.state == snap.state.value else (
            snap.opened_at)
        return {"state": snap.state.value, "since": since, "retry_at": snap.retry_at,
                "failure_rate": round(snap.failure_rate, 4),
                "consecutive_failures": snap.consecutive_failures}

    def _integrations(self, now: float) -> list[dict[str, Any]]:
        cfg = self._src.config
        breakers = self._src.calls.breakers()
        out = []
        for name in sorted(cfg.integrations):
            routes = [r for r in cfg.routes if r.integration == name]
            health = self._health
            totals = health.totals(name, ["", *(r.name for r in routes)])
            breaker = self._breaker(name, "", breakers.get(name))
            route_rows = []
            for r in routes:
                own = r.circuit_breaker is not None and f"{name}/{r.name}" in breakers
                route_rows.append({
                    "name": r.name, "method": r.method, "path": r.path, "own_breaker": own,
                    "breaker": self._breaker(name, r.name, breakers.get(f"{name}/{r.name}"))
                    if own else None,
                    **self._stats(health.totals(name, [r.name])),
                })
            entry: dict[str, Any] = {"name": name}
            entry["health"] = _health_label(
                totals, [b for b in [breaker, *(r["breaker"] for r in route_rows)] if b])
            entry["breaker"] = breaker
            entry.update(self._stats(totals))
            entry["last_error"] = _error(health.last_error(name))
            entry["last_upstream_error"] = _error(health.last_upstream_error(name))
            entry["deprecations"] = [{
                "route": d.route, "deprecated": d.info.deprecated,
                "deprecated_at": d.info.deprecated_at, "sunset_at": d.info.sunset_at,
                "sunset": sunset_status(d.info.sunset_at, now),
                "link": safe_link(d.info.link), "seen_at": d.seen_at,
            } for d in health.deprecations(name)]
            entry["routes"] = route_rows
            out.append(entry)
        return out

    async def _webhooks_bounded(self, now: float) -> list[dict[str, Any]]:
        """The webhook section, or an error per source when storage is too slow: the
        page must still answer during a storage incident."""
        try:
            return await asyncio.wait_for(self._webhooks(now), STORAGE_TIMEOUT)
        except TimeoutError:
            return self._unknown(f"storage did not answer within {STORAGE_TIMEOUT:g}s")

    def _unknown(self, why: str) -> list[dict[str, Any]]:
        return [{"source": name, "topic": s.topic_name, "error": why}
                for name, s in sorted(self._src.config.webhooks.sources.items())]

    async def _webhooks(self, now: float) -> list[dict[str, Any]]:
        sources = self._src.config.webhooks.sources
        if not sources:
            return []
        storage = self._src.storage
        try:
            counts = await storage.count_deliveries()
        except SidecarError as exc:
            return self._unknown(exc.message)
        out = []
        for name, source in sorted(sources.items()):
            topic = source.topic_name
            groups: dict[str, dict[str, int]] = {}
            for (group, t, status), n in counts.items():
                if t == topic:
                    groups.setdefault(group, {})[status] = n
            entry: dict[str, Any] = {"source": name, "topic": topic}
            try:
                first, last = await storage.topic_bounds(topic)
                entry["stored_events"] = max(0, last - first + 1)
                oldest = await self._oldest_unacked(topic, sorted(groups), now)
            except SidecarError as exc:
                entry["error"] = exc.message
                oldest = None
            for status in DeliveryStatus:
                entry[status.value] = sum(g.get(status.value, 0) for g in groups.values())
            entry["oldest_unacked_age_seconds"] = _round(oldest, 3)
            entry["groups"] = [{"group": g, **{s.value: c.get(s.value, 0) for s in DeliveryStatus}}
                               for g, c in sorted(groups.items())]
            out.append(entry)
        return out

    async def _queued_bounded(self, now: float) -> list[dict[str, Any]]:
        """Queued calls per integration: by state, and how long due work has waited."""
        store = self._src.storage
        try:
            counts, overdue = await asyncio.wait_for(
                asyncio.gather(store.queue_counts(), store.queue_overdue(now=now)),
                STORAGE_TIMEOUT)
        except TimeoutError:
            return [{"error": f"storage did not answer within {STORAGE_TIMEOUT:g}s"}]
        except SidecarError as exc:
            return [{"error": exc.message}]
        names = sorted({i for i, _ in counts} | set(overdue))
        return [{"integration": name,
                 **{state.value: counts.get((name, state.value), 0) for state in QueuedState},
                 "oldest_due_seconds": (_round(max(0.0, now - overdue[name]), 3)
                                        if name in overdue else None)}
                for name in names]

    async def _oldest_unacked(self, topic: str, groups: list[str], now: float) -> float | None:
        received = []
        for group in groups[:MAX_GROUPS_PER_SOURCE]:
            for status in OPEN_WORK:
                first = await self._src.storage.list_deliveries(group=group, topic=topic,
                                                                status=status, limit=1)
                received += [r.received_at for r in first]
        return max(0.0, now - min(received)) if received else None

    def _live(self) -> dict[str, Any]:
        registry = self._src.metrics.registry
        enabled = self._src.websocket is not None
        users = sum(1 for s in self._src.presence.topics()
                    if s.topic.startswith("user:") and s.connections)
        return {
            "websocket_enabled": enabled,
            "websocket_connections": int(registry.get_sample_value(
                "sidecar_websocket_connections") or 0),
            "grpc_subscribers": int(registry.get_sample_value(
                "sidecar_live_subscribers", {"transport": "grpc"}) or 0),
            "users": users,
        }

    # ------------------------------------------------------------------ handlers

    def _refused(self, request: web.Request) -> web.Response | None:
        token = self._src.config.server.grpc.api_token
        if authorised(request, token.value if token else None):
            return None
        response = json_error(401, "API_TOKEN_INVALID",
                              "send Authorization: Bearer <token> (or the token as a Basic "
                              "password)")
        # Browsers ask for Basic credentials and resend them on every refresh.
        response.headers["WWW-Authenticate"] = 'Basic realm="integration-sidecar", charset="UTF-8"'
        return response

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the operator endpoints' access rule."""
        async def guard(request: web.Request) -> web.StreamResponse:
            refused = self._refused(request)
            return refused if refused is not None else await handler(request)

        return guard

    async def json_handler(self, request: web.Request) -> web.Response:
        response = web.json_response(await self.snapshot())
        response.headers["Cache-Control"] = "no-store"
        return response

    async def html_handler(self, request: web.Request) -> web.Response:
        try:
            refresh = float(request.query.get("refresh", DEFAULT_REFRESH))
        except ValueError:
            refresh = DEFAULT_REFRESH
        if not MIN_REFRESH <= refresh <= MAX_REFRESH:  # also NaN
            refresh = DEFAULT_REFRESH
        # Imported on the first page view: most sidecars never serve one.
        from sidecar.status_html import render_fragment, render_page

        data = await self.snapshot()
        nonce = secrets.token_urlsafe(16)
        if request.query.get("fragment"):
            body = render_fragment(data)
        else:
            body = render_page(data, refresh=refresh, nonce=nonce)
        return web.Response(text=body, content_type="text/html", charset="utf-8", headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'unsafe-inline'; "
                f"script-src 'nonce-{nonce}'; connect-src 'self'; frame-ancestors 'none'; "
                "base-uri 'none'; form-action 'none'"),
        })


def _health_label(totals: WindowTotals, breakers: list[dict[str, Any]]) -> str:
    states = {b["state"] for b in breakers}
    if "open" in states:
        return "failing"
    if "half_open" in states:
        return "recovering"
    rate = totals.success_rate
    if rate is None:
        return "idle"
    return "degraded" if rate < DEGRADED_BELOW else "ok"


def status_routes(app: web.Application, source: StatusSource, health: CallHealth) -> StatusPage:
    """Add ``/status`` and ``/status.json`` to the admin application."""
    page = StatusPage(source, health)
    app.router.add_get("/status", page.guarded(page.html_handler))
    app.router.add_get("/status.json", page.guarded(page.json_handler))
    return page

"""Wiring: builds every part from the config and owns start-up and shutdown.

One event loop runs the grpc.aio server, the aiohttp edge and the admin
listener. Shutdown (SIGTERM/SIGINT): health goes NOT_SERVING, listeners stop
accepting, in-flight work drains within the grace period, storage closes.
SIGHUP reloads the configuration (see ``sidecar.reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sidecar import __version__
from sidecar.admin import Readiness, build_admin_app, event_routes, queue_routes
from sidecar.clock import Clock, SystemClock
from sidecar.config import Config, ConfigError, IntegrationConfig, load_config
from sidecar.config.policies import integration_specs, queue_policy, webhook_settings
from sidecar.core.calls.credentials import CredentialFactory, CredentialSource
from sidecar.core.calls.fan_out import FanOutObserver
from sidecar.core.calls.health_window import CallHealth
from sidecar.core.calls.models import Transport
from sidecar.core.calls.pipeline import CallPipeline, TransportFactory
from sidecar.core.calls.policy import IntegrationSpec
from sidecar.core.calls.queue.models import EVENT_TYPES, QueuedCall, QueuePolicy
from sidecar.core.calls.queue.runner import CallQueue
from sidecar.core.events.groups import ConsumerGroups
from sidecar.core.events.live import LiveBus, LivePolicy
from sidecar.core.events.models import DeliveryStatus
from sidecar.core.events.notify import TopicNotifier
from sidecar.core.events.presence import Presence
from sidecar.core.tasks import stop_task, within
from sidecar.core.webhooks.ingest import WebhookIngest
from sidecar.edge.app import build_edge_app
from sidecar.edge.webhooks import WebhookEdge
from sidecar.errors import SidecarError
from sidecar.http_listener import HttpListener
from sidecar.logs import SecretScrubber
from sidecar.metrics import (
    BREAKER_STATES,
    CallMetrics,
    EventMetrics,
    LiveMetrics,
    Metrics,
    QueueMetrics,
    TokenMetrics,
)
from sidecar.reload import (
    FileWatch,
    Reloader,
    ReloadOutcome,
    effective_config,
    restart_required,
    watched_files,
)
from sidecar.rpc.queued_calls import outcome_data, queued_call_json
from sidecar.rpc.server import GrpcServer, ServiceRegistrar
from sidecar.rpc.servicer import SidecarServicer
from sidecar.server_tls import TlsFileError, TlsMaterial, read_material
from sidecar.status import status_routes
from sidecar.storage import Storage, make_storage
from sidecar.upstream.transport import AiohttpTransport

if TYPE_CHECKING:
    from sidecar.edge.websocket import WebSocketEdge
    from sidecar.otlp import OtlpExporter

log = logging.getLogger("sidecar")

#: How often readiness re-checks its dependencies; kubelet probes every 10 s
#: by default, so a change shows up by the next probe.
READINESS_INTERVAL = 5.0
#: A dependency check slower than this counts as failed.
CHECK_TIMEOUT = 2.0
#: Expired records (idempotency keys) are deleted this often, in batches of
#: PRUNE_BATCH, at most PRUNE_BATCHES per round, so pruning never holds the
#: database for long and growth stays bounded.
PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 1000
#: Finished queued calls are kept this long (GetQueuedCall, replay), then deleted: their
#: idempotency keys are free again.
QUEUED_CALL_RETENTION = 7 * 24 * 3600.0
PRUNE_BATCHES = 20
#: Seconds queued spans may take to export on shutdown, even after a drain that
#: used up the grace period.
TRACE_FLUSH_MIN = 1.0
#: Seconds stop() may take beyond ``server.shutdown_grace``: the clean-up after a
#: drain that used the whole grace (spans, storage, listeners). serve() ends the
#: process at grace + STOP_MARGIN + EXIT_MARGIN whatever still runs.
STOP_MARGIN = 1.5
#: Of the margin, kept for closing storage and the admin listener...
CLEANUP_RESERVE = 0.75
#: ... and of that, for the admin listener alone.
ADMIN_STOP_RESERVE = 0.25
#: The least each step before the drain gets (with a grace of 0 too).
TASK_STOP_MIN = 0.25
#: After stop(): the event loop's own clean-up (leftover tasks, threads).
EXIT_MARGIN = 0.5
#: Exit status when shutdown overran its bound and the process ended it anyway.
EXIT_OVERDUE = 3


def _aiohttp_transport(spec: IntegrationSpec) -> Transport:
    config = cast(IntegrationConfig, spec.source)
    return AiohttpTransport(config, max_connections=spec.bulkhead_limit)


def _token_sources(clock: Clock, metrics: Metrics) -> CredentialFactory:
    """Builds each OAuth2 integration's token source (the module loads on first use)."""

    def build(spec: IntegrationSpec) -> CredentialSource:
        from sidecar.upstream.oauth2 import OAuth2TokenSource

        return OAuth2TokenSource(cast(IntegrationConfig, spec.source), clock,
                                 TokenMetrics(metrics))

    return build


class Sidecar:
    def __init__(
        self,
        config: Config,
        *,
        storage: Storage | None = None,
        metrics: Metrics | None = None,
        extra_services: Sequence[ServiceRegistrar] = (),
        clock: Clock | None = None,
        transport_factory: TransportFactory | None = None,
        config_path: str | Path | None = None,
        log_scrubber: SecretScrubber | None = None,
    ) -> None:
        self.config = config
        #: What a reload re-reads (with the environment); None: built-in defaults.
        self.config_path = str(config_path) if config_path is not None else None
        self._scrubber = log_scrubber
        self._secret_values = {s.value for s in config.secrets()}
        self.metrics = metrics or Metrics()
        self.storage = storage or make_storage(config.storage)
        self.clock = clock or SystemClock()
        grace = config.server.shutdown_grace
        #: The span exporter when ``tracing.enabled``; None: no span is ever made.
        self.tracing: OtlpExporter | None = None
        if config.tracing.enabled:
            # Imported only when on: a sidecar without tracing never loads it.
            from sidecar.otlp import OtlpExporter

            self.tracing = OtlpExporter(config.tracing, self.metrics, self.clock)
        shared = getattr(self.storage, "rate_limiter", None)
        # Rolling call statistics for the status page, next to the metrics.
        self.call_health = CallHealth(self.clock)
        self.call_observer = FanOutObserver(CallMetrics(self.metrics), self.call_health)
        self.calls = CallPipeline(
            integration_specs(config), self.storage, transport_factory or _aiohttp_transport,
            self.clock,
            observer=self.call_observer,
            # With a shared backend every replica draws from one bucket per integration.
            rate_limiter=(lambda name, policy: shared(name, policy, self.clock)) if shared
            else None,
            credentials=_token_sources(self.clock, self.metrics))
        self.event_metrics = EventMetrics(self.metrics)
        self.notifier = TopicNotifier()
        rt = config.realtime
        self.live = LiveBus(self.storage, self.clock,
                            LivePolicy(queue_size=rt.queue_size, slow_consumer=rt.slow_consumer,
                                       heartbeat=rt.heartbeat, max_data_bytes=rt.max_data_bytes,
                                       idempotency_retention=rt.idempotency_retention,
                                       durable_publish=rt.durable_publish),
                            LiveMetrics(self.metrics), self.notifier.notify)
        if getattr(self.storage, "follows_events", False):
            # Shared backend: every replica's events reach this one's subscribers.
            self.live.follow(self.storage, self.notifier.topics)  # type: ignore[arg-type]
        self.webhooks = WebhookIngest(webhook_settings(config.webhooks), self.storage, self.clock,
                                      self.event_metrics, self.live.deliver)
        self.groups = ConsumerGroups(self.storage, self.clock, config.webhooks.delivery,
                                     self.notifier, self.event_metrics,
                                     interest=self.live.ensure_following)
        self.presence = Presence()
        #: Queued calls (EnqueueCall).
        self.queue_metrics = QueueMetrics(self.metrics)
        self.queue = CallQueue(self.storage, self.calls, self.clock, self._queue_policy,
                               self._announce_queued, observer=self.queue_metrics)
        self.websocket: WebSocketEdge | None = None
        if rt.websocket.enabled:
            # Imported only when on: PyJWT and cryptography cost memory otherwise.
            from sidecar.edge.websocket import WebSocketEdge

            self.websocket = WebSocketEdge(rt.websocket, self.live, self.presence, self.clock,
                                           self.metrics)
        self.grpc = GrpcServer(config.server.grpc,
                               SidecarServicer(calls=self.calls, webhooks=self.webhooks,
                                               groups=self.groups, live=self.live,
                                               presence=self.presence if self.websocket else None,
                                               clock=self.clock, recorder=self.tracing,
                                               queue=self.queue),
                               self.metrics, extra_services)
        self.webhook_edge = WebhookEdge(self.webhooks, config.webhooks, self.clock,
                                        self.event_metrics, self.tracing,
                                        body_timeout=config.server.edge.body_timeout)
        self.edge = HttpListener(build_edge_app(config.server.edge, self.metrics,
                                                self.webhook_edge, self.websocket),
                                 config.server.edge.host, config.server.edge.port,
                                 name="edge", shutdown_timeout=grace, tls=config.server.edge.tls,
                                 header_timeout=config.server.edge.header_timeout)
        admin_app = build_admin_app(self.metrics, self.readiness)
        token = config.server.grpc.api_token
        event_routes(admin_app, self.storage, self.clock, token.value if token else None,
                     self.presence if self.websocket else None)
        queue_routes(admin_app, self.queue, token.value if token else None, queued_call_json)
        status_routes(admin_app, self, self.call_health)
        self.admin = HttpListener(admin_app,
                                  config.server.admin.host, config.server.admin.port,
                                  name="admin", shutdown_timeout=1.0,
                                  tls=config.server.admin.tls)
        self._stopping = False
        self._started = False
        self._watch: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._last_checks: dict[str, str] = {"storage": "not checked yet"}
        self._reload_lock = asyncio.Lock()
        self.reloader = Reloader(self.reload)
        self._reload_after_start = False
        self._file_watch: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open storage, then bind every listener; raises if any step fails."""
        try:
            if self.tracing is not None:
                await self.tracing.start()
            await self.storage.open()
            await self.grpc.start()
            await self.edge.start()
            await self.admin.start()
        except BaseException:
            await self._close_partial()
            raise
        self._started = True
        await self._refresh_readiness()
        await self.live.start()
        await self.queue.start()
        self._watch = asyncio.create_task(self._watch_readiness(), name="readiness")
        self._pruner = asyncio.create_task(self._prune_forever(), name="prune")
        self.metrics.config_last_reload_success.set(self.clock.time())
        self._restart_file_watch()
        if self._reload_after_start:
            self.reloader.request()
        log.info("sidecar started", extra={
            "version": __version__, "grpc": self.grpc.address, "edge": self.edge.address,
            "admin": self.admin.address, "storage": self.storage.backend,
        })

    async def _close_partial(self) -> None:
        with contextlib.suppress(Exception):
            await self.grpc.stop(0)
        with contextlib.suppress(Exception):
            await self.calls.close()
        for listener in (self.edge, self.admin):
            with contextlib.suppress(Exception):
                await listener.stop()
        with contextlib.suppress(Exception):
            await self.storage.close()
        if self.tracing is not None:
            with contextlib.suppress(Exception):
                await self.tracing.stop(0)

    async def stop(self) -> None:
        """Graceful shutdown: returns within ``server.shutdown_grace`` + :data:`STOP_MARGIN`.

        Every step is bounded (``sidecar.core.tasks.within``), whatever it awaits does:
        in-flight work gets the grace, the clean-up after it the margin; a step that
        overruns is logged and left behind, and the steps after it still run.
        """
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.server.shutdown_grace
        loop = asyncio.get_running_loop()
        # Real time, not self.clock: the bound is for the process, whatever clock it runs on.
        drain_by = loop.time() + grace
        stop_by = drain_by + STOP_MARGIN

        def left(until: float = drain_by, at_least: float = 0.0) -> float:
            return max(at_least, min(until, stop_by) - loop.time())

        log.info("sidecar stopping", extra={"grace_seconds": grace})
        self.metrics.ready.set(0)
        await within(self.reloader.close(), left(at_least=TASK_STOP_MIN), "the config reload")
        for task in (self._watch, self._pruner, self._file_watch):
            await stop_task(task, left(at_least=TASK_STOP_MIN), task.get_name() if task else "")
        await within(self.grpc.begin_shutdown(), left(at_least=TASK_STOP_MIN),
                     "health NOT_SERVING")
        # Streams end with UNAVAILABLE (SHUTTING_DOWN) so clients resubscribe elsewhere
        # instead of holding the drain open until the grace runs out.
        await self.live.close()
        await within(self.live.stop_following(), left(at_least=TASK_STOP_MIN),
                     "the event follower")
        await self.groups.close()
        # No new attempt starts; those in flight get the grace (one cut short is
        # attempted again after the restart: at least once upstream).
        await within(self.queue.stop(), left(at_least=TASK_STOP_MIN), "queued calls")
        if self.websocket is not None:
            await within(self.websocket.close_all(), left(at_least=TASK_STOP_MIN),
                         "closing WebSocket connections")
        # gRPC and the edge drain together; the admin listener stays up until
        # the end so /readyz keeps saying "not ready" and metrics stay scrapable.
        draining = asyncio.gather(self.grpc.stop(left()), self.edge.stop())
        await asyncio.sleep(0)  # both have closed their listening sockets by now
        log.info("sidecar draining")
        # gRPC cancels what outlives the grace itself; part of the margin covers that.
        await within(draining, left(stop_by - CLEANUP_RESERVE), "draining in-flight requests")
        # The clean-up after the drain: each step may use what is left of the margin
        # but for what the steps after it are sure to get.
        await within(self.calls.close(), left(stop_by - CLEANUP_RESERVE), "closing upstream "
                                                                           "connections")
        if self.tracing is not None:
            # The drained requests' spans too: up to a second even when the drain
            # used up the grace (Kubernetes allows twice the default).
            flush = max(left(), min(TRACE_FLUSH_MIN, left(stop_by - CLEANUP_RESERVE)))
            await within(self.tracing.stop(flush), left(stop_by - CLEANUP_RESERVE,
                                                         at_least=flush), "exporting spans")
        await within(self.storage.close(), left(stop_by - ADMIN_STOP_RESERVE,
                                                at_least=ADMIN_STOP_RESERVE), "closing storage")
        await within(self.admin.stop(), left(stop_by, at_least=ADMIN_STOP_RESERVE),
                     "closing the admin listener")
        log.info("sidecar stopped")

    def _queue_policy(self, integration: str) -> QueuePolicy:
        """The integration's queue settings as the running config has them (a reload
        applies to the next attempt)."""
        cfg = self.config.integrations.get(integration)
        return queue_policy(cfg.queue) if cfg is not None else QueuePolicy()

    async def _announce_queued(self, call: QueuedCall) -> None:
        """A finished queued call's outcome event: at least once (a crash or power cut
        between the append and its record appends it again; consumers key on the call's
        id)."""
        await self.live.publish(call.result_topic, EVENT_TYPES[call.state],
                                outcome_data(call), "application/json",
                                {"queued_call_id": call.id})

    # ------------------------------------------------------------------ reload

    def request_reload(self) -> None:
        """SIGHUP: reload soon; one arriving during a reload queues one more."""
        if self._stopping:
            return
        if not self._started:
            self._reload_after_start = True
            return
        self.reloader.request()

    async def reload(self, config: Config | None = None) -> ReloadOutcome:
        """Re-read the config file and environment (or take ``config``) and apply
        what can change live. An invalid config changes nothing: the reason is
        logged at ERROR and counted in ``sidecar_config_reloads_total``."""
        async with self._reload_lock:
            try:
                # Read off the event loop: a slow volume must not stall calls.
                new = config if config is not None else await asyncio.to_thread(
                    load_config, self.config_path)
                effective = effective_config(self.config, new)
                specs = integration_specs(effective)
                transports = await asyncio.to_thread(self.calls.transports_for, specs)
                outcome = self._apply(new, effective, specs, transports)
            except ConfigError as exc:
                outcome = ReloadOutcome(False, tuple(str(p) for p in exc.problems))
            except TlsFileError as exc:
                outcome = ReloadOutcome(False, (str(exc),))
            except Exception as exc:  # e.g. an upstream CA file unreadable
                outcome = ReloadOutcome(False, (f"{type(exc).__name__}: {exc}",))
            if not outcome.ok:
                self.metrics.config_reloads.labels("failure").inc()
                log.error("config reload failed; the previous configuration stays in force",
                          extra={"problems": list(outcome.problems)})
                return outcome
            self.metrics.config_reloads.labels("success").inc()
            self.metrics.config_last_reload_success.set(self.clock.time())
            self.metrics.config_restart_required.set(1 if outcome.restart_required else 0)
            log.info("config reloaded", extra={
                "integrations_added": list(outcome.integrations_added),
                "integrations_removed": list(outcome.integrations_removed),
                "integrations_changed": list(outcome.integrations_changed),
                "restart_required": list(outcome.restart_required)})
            if outcome.restart_required:
                log.warning("config changes need a restart to apply",
                            extra={"fields": list(outcome.restart_required)})
            return outcome

    def _apply(self, new: Config, effective: Config, specs: Mapping[str, IntegrationSpec],
               transports: Mapping[str, Transport]) -> ReloadOutcome:
        """Everything that can fail first, then the swap: no await, so no call,
        stream or request ever sees half of a reload."""
        running = self.config
        restart = restart_required(effective, new)
        tls: list[tuple[GrpcServer | HttpListener, TlsMaterial]] = []
        for listener, tls_config, field in (
                (self.grpc, effective.server.grpc.tls, "server.grpc.tls"),
                (self.edge, effective.server.edge.tls, "server.edge.tls"),
                (self.admin, effective.server.admin.tls, "server.admin.tls")):
            if tls_config is not None:
                tls.append((listener, read_material(tls_config, field)))
        breakers_before = set(self.calls.breakers())
        changes = self.calls.reconfigure(specs, transports)
        # From here on nothing can fail on bad input: it was all checked above.
        for name in breakers_before - set(self.calls.breakers()):
            # A removed breaker's gauge must not keep an alert firing.
            integration, _, scope = name.partition("/")
            for state in BREAKER_STATES:
                with contextlib.suppress(KeyError):
                    self.metrics.breaker_state.remove(integration, scope, state)
        for listener, material in tls:
            listener.reload_tls(material)
        if effective.webhooks != running.webhooks:
            self.webhooks.update(webhook_settings(effective.webhooks))
            self.webhook_edge.update(effective.webhooks)
        websocket = effective.realtime.websocket
        if self.websocket is not None and websocket != running.realtime.websocket:
            self.websocket.update(websocket)
        if effective.logging.level != running.logging.level:
            logging.getLogger().setLevel(effective.logging.level.upper())
        # Old secrets stay redacted too: a call started before may still log.
        self._secret_values |= {s.value for s in effective.secrets()}
        if self._scrubber is not None:
            self._scrubber.update(self._secret_values)
        self.config = effective
        if effective.reload != running.reload:
            self._restart_file_watch()
        return ReloadOutcome(True, integrations_added=changes.added,
                             integrations_removed=changes.removed,
                             integrations_changed=changes.changed,
                             restart_required=tuple(restart))

    def _restart_file_watch(self) -> None:
        if self._file_watch is not None:
            self._file_watch.cancel()
            self._file_watch = None
        settings = self.config.reload
        if settings.watch:
            watch = FileWatch(lambda: watched_files(self.config, self.config_path),
                              settings.watch_interval, self.request_reload)
            self._file_watch = asyncio.create_task(watch.run(), name="config-watch")

    # ------------------------------------------------------------------ readiness

    async def readiness(self) -> Readiness:
        if self._stopping:
            return Readiness(False, {**self._last_checks, "lifecycle": "shutting down"})
        if not self._started:
            return Readiness(False, {"lifecycle": "starting"})
        return Readiness(all(v == "ok" for v in self._last_checks.values()),
                         dict(self._last_checks))

    async def _refresh_readiness(self) -> None:
        try:
            await asyncio.wait_for(self.storage.check(), CHECK_TIMEOUT)
            storage = "ok"
        except TimeoutError:
            storage = f"no answer within {CHECK_TIMEOUT:g}s"
        except SidecarError as exc:
            storage = exc.message
        if storage != self._last_checks.get("storage"):
            level = logging.INFO if storage == "ok" else logging.WARNING
            log.log(level, "storage check changed", extra={"storage": storage})
        self._last_checks = {"storage": storage}
        ready = storage == "ok" and not self._stopping
        self.metrics.storage_up.labels(self.storage.backend).set(1 if storage == "ok" else 0)
        self.metrics.ready.set(1 if ready else 0)
        if storage == "ok":
            with contextlib.suppress(SidecarError):
                counts = await self.storage.count_deliveries()
                self.event_metrics.set_group_counts(counts)
                self.event_metrics.set_oldest_unacked(await self._oldest_unacked(counts))
                now = self.clock.time()
                self.queue_metrics.set_counts(
                    await self.storage.queue_counts(),
                    {i: max(0.0, now - t)
                     for i, t in (await self.storage.queue_overdue(now=now)).items()})
        if not self._stopping:
            await self.grpc.set_ready(ready)

    async def prune_once(self) -> int:
        """Delete expired records now; returns how many went."""
        removed = 0
        now = self.clock.time()
        for _ in range(PRUNE_BATCHES):
            n = await self.storage.prune(
                now=now, limit=PRUNE_BATCH,
                events_before=now - self.config.realtime.max_event_age,
                durable_topics={s.topic_name: now - self.config.webhooks.retention
                                for s in self.config.webhooks.sources.values()},
                max_per_topic=self.config.realtime.max_events_per_topic)
            n += await self.storage.queue_prune(before=now - QUEUED_CALL_RETENTION,
                                                limit=PRUNE_BATCH)
            removed += n
            if n < PRUNE_BATCH:
                break
        if removed:
            log.info("pruned expired records", extra={"removed": removed})
        return removed

    async def _prune_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(PRUNE_INTERVAL)
            try:
                await self.prune_once()
            except SidecarError as exc:
                log.warning("pruning failed: %s", exc.message)

    async def _oldest_unacked(self, counts: dict[tuple[str, str, str], int]
                              ) -> dict[tuple[str, str], float]:
        """Per group and topic with open work, the age of its oldest such event."""
        open_work = {(g, t) for (g, t, status), n in counts.items()
                     if n and status in ("pending", "delivered", "failed")}
        now = self.clock.time()
        ages: dict[tuple[str, str], float] = {}
        for group, topic in sorted(open_work)[:100]:  # bounded work per refresh
            oldest = [
                r.received_at
                for status in (DeliveryStatus.PENDING, DeliveryStatus.DELIVERED,
                               DeliveryStatus.FAILED)
                for r in await self.storage.list_deliveries(group=group, topic=topic,
                                                            status=status, limit=1)
            ]
            if oldest:
                ages[(group, topic)] = max(0.0, now - min(oldest))
        return ages

    async def _watch_readiness(self) -> None:
        # The flag as well as the cancellation: see sidecar.core.tasks.
        while not self._stopping:
            await asyncio.sleep(READINESS_INTERVAL)
            await self._refresh_readiness()


class ExitWatchdog:
    """Ends the process if shutdown overruns its bound, whatever holds it up.

    Armed by the first SIGTERM/SIGINT: a thread (not the event loop, which may be
    what is stuck) exits with :data:`EXIT_OVERDUE` once grace + margins pass. A
    second signal exits at once. Last resort only: stop() is bounded on its own.
    """

    def __init__(self, bound: float) -> None:
        self._bound = bound
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is not None:
            self._fire("a second stop signal")
            return
        self._timer = threading.Timer(self._bound, self._fire, args=("the shutdown bound",))
        self._timer.daemon = True
        self._timer.start()

    def _fire(self, why: str) -> None:
        log.error("exiting now: %s was reached before shutdown finished", why,
                  extra={"bound_seconds": self._bound})
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_OVERDUE)


async def serve(config: Config, *, extra_services: Sequence[ServiceRegistrar] = (),
                config_path: str | Path | None = None,
                log_scrubber: SecretScrubber | None = None) -> int:
    """Run until SIGTERM or SIGINT, reloading on SIGHUP; returns the exit code.

    The process is gone within ``server.shutdown_grace`` + :data:`STOP_MARGIN` +
    :data:`EXIT_MARGIN` of the first SIGTERM/SIGINT (exit 0 if the shutdown was
    clean), at once on a second one.
    """
    sidecar = Sidecar(config, extra_services=extra_services, config_path=config_path,
                      log_scrubber=log_scrubber)
    stop = asyncio.Event()
    watchdog = ExitWatchdog(config.server.shutdown_grace + STOP_MARGIN + EXIT_MARGIN)

    def on_stop_signal() -> None:
        stop.set()
        watchdog.arm()

    loop = asyncio.get_running_loop()
    # Handlers go in before start-up, so a signal that arrives as soon as the
    # "started" line is out still drains gracefully (or reloads).
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, sidecar.request_reload)
    try:
        try:
            await sidecar.start()
        except Exception as exc:
            message = exc.message if isinstance(exc, SidecarError) else str(exc)
            log.error("sidecar failed to start: %s", message)
            return 1
        # Everything built so far lives as long as the process: keep it out of
        # the collector's scans, so full collections take well under a
        # millisecond instead of tens (they showed up in the p99).
        gc.freeze()
        await stop.wait()
        await sidecar.stop()
        # What is left (a stream handler gRPC gave up on, say) is cancelled here,
        # within a bound, not by the event loop's unbounded clean-up on return.
        current = asyncio.current_task()
        leftover = [t for t in asyncio.all_tasks() if t is not current]
        await asyncio.gather(*(stop_task(t, EXIT_MARGIN / 2) for t in leftover))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0

"""Hot reload: which settings apply without a restart, one reload at a time, file watch.

A reload re-reads the config file and the environment. Listener addresses and
options, storage, the log format, durable delivery, live-subscriber queue
policies and span export (``tracing``) keep their running values and are
reported as needing a restart; everything else (integrations and routes,
webhook sources, WebSocket JWT keys and limits, listener certificates, log
level, event retention) applies to new work at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from sidecar.config import Config, ServerTlsConfig
from sidecar.config.dump import to_plain
from sidecar.core.tasks import stop_task

log = logging.getLogger("sidecar.reload")


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    #: Why the reload was refused, each naming its field (never a secret value).
    problems: tuple[str, ...] = ()
    integrations_added: tuple[str, ...] = ()
    integrations_removed: tuple[str, ...] = ()
    integrations_changed: tuple[str, ...] = ()
    #: Fields whose new value was ignored until the next restart.
    restart_required: tuple[str, ...] = ()


def _tls(running: ServerTlsConfig | None, new: ServerTlsConfig | None) -> ServerTlsConfig | None:
    """New files apply live; turning TLS or client certificates on or off needs a restart."""
    if running is None or new is None:
        return running
    if bool(running.client_ca_file) != bool(new.client_ca_file):
        return running
    return new


def effective_config(running: Config, new: Config) -> Config:
    """``new`` with every restart-only setting kept at its running value."""
    s = running.server
    server = replace(s, grpc=replace(s.grpc, tls=_tls(s.grpc.tls, new.server.grpc.tls)),
                     edge=replace(s.edge, tls=_tls(s.edge.tls, new.server.edge.tls)),
                     admin=replace(s.admin, tls=_tls(s.admin.tls, new.server.admin.tls)))
    rt, new_rt = running.realtime, new.realtime
    # The /ws route exists only when the edge was built with it.
    websocket = (new_rt.websocket if new_rt.websocket.enabled == rt.websocket.enabled
                 else rt.websocket)
    realtime = replace(rt, max_events_per_topic=new_rt.max_events_per_topic,
                       max_event_age=new_rt.max_event_age, websocket=websocket)
    return replace(new, server=server, storage=running.storage,
                   logging=replace(running.logging, level=new.logging.level),
                   webhooks=replace(new.webhooks, delivery=running.webhooks.delivery),
                   realtime=realtime, tracing=running.tracing)


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted({*a, *b}):
            out += _diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if a == b else [path]


def restart_required(effective: Config, new: Config) -> list[str]:
    """Dotted paths of settings in ``new`` that ``effective`` does not apply."""
    # Integrations, routes and webhook sources always apply: only the sections
    # that can hold restart-only settings are compared (cheap with many integrations).
    paths: list[str] = []
    for section in ("server", "storage", "logging", "realtime", "tracing"):
        paths += _diff(to_plain(getattr(effective, section)),
                       to_plain(getattr(new, section)), section)
    paths += _diff(to_plain(effective.webhooks.delivery), to_plain(new.webhooks.delivery),
                   "webhooks.delivery")
    # Secrets show as their variable name only: compare the values too.
    for path, old_secret, new_secret in (
            ("server.grpc.api_token_env", effective.server.grpc.api_token,
             new.server.grpc.api_token),
            ("storage.redis.url_env", effective.storage.redis.url, new.storage.redis.url),
            ("tracing.otlp.headers_env", effective.tracing.otlp.headers,
             new.tracing.otlp.headers)):
        if old_secret != new_secret:
            paths.append(path)
    return sorted(set(paths))


def watched_files(config: Config, config_path: str | None) -> list[str]:
    files = [config_path] if config_path else []
    for tls in (config.server.grpc.tls, config.server.edge.tls, config.server.admin.tls):
        if tls is not None:
            files += [f for f in (tls.cert_file, tls.key_file, tls.client_ca_file) if f]
    return files


class Reloader:
    """Runs reloads one at a time; requests during a reload queue exactly one more."""

    def __init__(self, reload: Callable[[], Awaitable[object]]) -> None:
        self._reload = reload
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._waiters: list[asyncio.Future[None]] = []

    def request(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="config-reload")

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self._reload()
            finally:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            if not self._again:
                return

    def next_reload(self) -> asyncio.Future[None]:
        """Resolves when the next requested reload has finished (either way)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def wait(self) -> None:
        """Until no reload is running or queued."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self, bound: float = 1.0) -> None:
        await stop_task(self._task, bound, "the config reload")


def _fingerprint(files: list[str]) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for name in files:
        try:
            st = os.stat(name)  # follows symlinks: a Kubernetes volume swap shows up
        except OSError:
            out.append((name, -1, -1, -1))
        else:
            out.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class FileWatch:
    """Polls files every ``interval`` seconds; calls ``changed`` when any differs from
    how it was when the watch was made (or at the last change)."""

    def __init__(self, files: Callable[[], list[str]], interval: float,
                 changed: Callable[[], None]) -> None:
        self._files, self._interval, self._changed = files, interval, changed
        self._last = _fingerprint(files())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            now = _fingerprint(self._files())
            if now != self._last:
                self._last = now
                log.info("watched file changed; reloading")
                self._changed()

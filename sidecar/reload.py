"""Hot reload: which settings apply without a restart, one reload at a time, file watch.

A reload re-reads the config file and the environment. Whether a setting applies to
new work at once or keeps its running value until a restart (and is reported as
needing one) is declared on the setting itself (``Setting.reload`` in
``sidecar/config/model.py``; the list is in docs/configuration.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from sidecar.config import Config, ServerTlsConfig
from sidecar.config.settings import declared, is_section
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


def _switched(running: Any, new: Any) -> Any:
    """A section that applies live unless it is switched on or off (the ``/ws`` route
    exists only when the edge was built with it): then all of it waits for a restart."""
    return new if new.enabled == running.enabled else running


#: Settings that apply by a rule of their own (``Setting.reload_rule``).
RULES: dict[str, Callable[[Any, Any], Any]] = {"tls": _tls, "switched": _switched}


def _effective(running: Any, new: Any, cls: type, inherited: str) -> Any:
    values: dict[str, Any] = {}
    for d in declared(cls):
        s = d.setting
        mode = s.reload or inherited
        old, now = getattr(running, d.name), getattr(new, d.name)
        if old is now or old == now:
            values[d.name] = now
        elif s.reload_rule:
            values[d.name] = RULES[s.reload_rule](old, now)
        elif s.kind == "section" and is_section(old) and is_section(now):
            values[d.name] = _effective(old, now, type(now), mode)
        else:
            values[d.name] = now if mode == "live" else old
    return replace(new, **values)


def effective_config(running: Config, new: Config) -> Config:
    """``new`` with every restart-only setting kept at its running value, as each
    setting's declaration (``Setting.reload``, inherited from its section) says."""
    result: Config = _effective(running, new, Config, "live")
    return result


def _changed(a: Any, b: Any, cls: type, path: str) -> Iterator[str]:
    for d in declared(cls):
        old, now = getattr(a, d.name), getattr(b, d.name)
        if old is now or old == now:
            continue
        where = path if d.setting.flatten else f"{path}.{d.key or d.name}".lstrip(".")
        if d.setting.kind == "section" and is_section(old) and is_section(now):
            yield from _changed(old, now, type(now), where)
        else:
            yield where  # a secret by its *_env key: its value is never shown


def restart_required(effective: Config, new: Config) -> list[str]:
    """The file's keys (dotted) of settings in ``new`` that ``effective`` does not apply."""
    return sorted(set(_changed(effective, new, Config, "")))


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

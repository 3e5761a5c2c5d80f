"""One ``CallObserver`` that forwards every report to several (metrics, status page)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.core.calls.models import DeprecationInfo
from sidecar.core.calls.observer import CallObserver, NullObserver


def _listeners(observers: tuple[CallObserver, ...], report: str) -> tuple[Callable[..., Any], ...]:
    """The bound ``report`` methods of the observers that do something with it: an
    observer that keeps the null observer's no-op is not called (this runs per call)."""
    noop = getattr(NullObserver, report)
    return tuple(getattr(o, report) for o in observers
                 if getattr(type(o), report, None) is not noop)


class FanOutObserver:
    """Reports go to each observer in order; the pipeline still sees one."""

    def __init__(self, *observers: CallObserver) -> None:
        self._observers = observers
        self._call_finished = _listeners(observers, "call_finished")
        self._attempt_finished = _listeners(observers, "attempt_finished")

    def call_finished(self, integration: str, route: str, outcome: str, status: int,
                      attempts: int, duration: float) -> None:
        for report in self._call_finished:
            report(integration, route, outcome, status, attempts, duration)

    def attempt_finished(self, integration: str, route: str, outcome: str,
                         duration: float) -> None:
        for report in self._attempt_finished:
            report(integration, route, outcome, duration)

    def retried(self, integration: str, route: str, reason: str) -> None:
        for o in self._observers:
            o.retried(integration, route, reason)

    def budget_exhausted(self, integration: str) -> None:
        for o in self._observers:
            o.budget_exhausted(integration)

    def rate_limited(self, integration: str, route: str, action: str) -> None:
        for o in self._observers:
            o.rate_limited(integration, route, action)

    def idempotent_replay(self, integration: str) -> None:
        for o in self._observers:
            o.idempotent_replay(integration)

    def deprecation_seen(self, integration: str, route: str, info: DeprecationInfo) -> None:
        for o in self._observers:
            o.deprecation_seen(integration, route, info)

    def breaker_changed(self, integration: str, scope: str, state: str, *,
                        initial: bool = False) -> None:
        for o in self._observers:
            o.breaker_changed(integration, scope, state, initial=initial)

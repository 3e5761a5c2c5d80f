"""What the Call pipeline reports as it works; the metrics adapter implements it."""

from __future__ import annotations

from typing import Protocol

from sidecar.core.calls.models import DeprecationInfo


class CallObserver(Protocol):
    def call_finished(self, integration: str, route: str, outcome: str, status: int,
                      attempts: int, duration: float) -> None:
        """``outcome``: ``success`` (2xx/3xx), ``client_error``, ``server_error``, ``replayed``,
        ``stale``, or the error reason (``CIRCUIT_OPEN``, ``DEADLINE_EXCEEDED``, ...)."""

    def attempt_finished(self, integration: str, route: str, outcome: str,
                         duration: float) -> None:
        """``outcome``: status class (``2xx``...) or transport error kind."""

    def retried(self, integration: str, route: str, reason: str) -> None: ...

    def budget_exhausted(self, integration: str) -> None: ...

    def rate_limited(self, integration: str, route: str, action: str) -> None:
        """``action``: ``waited`` or ``rejected``."""

    def idempotent_replay(self, integration: str) -> None: ...

    def deprecation_seen(self, integration: str, route: str, info: DeprecationInfo) -> None: ...

    def breaker_changed(self, integration: str, scope: str, state: str, *,
                        initial: bool = False) -> None:
        """``scope``: the route name for a route's own breaker, else empty."""


class NullObserver:
    def call_finished(self, integration: str, route: str, outcome: str, status: int,
                      attempts: int, duration: float) -> None:
        pass

    def attempt_finished(self, integration: str, route: str, outcome: str,
                         duration: float) -> None:
        pass

    def retried(self, integration: str, route: str, reason: str) -> None:
        pass

    def budget_exhausted(self, integration: str) -> None:
        pass

    def rate_limited(self, integration: str, route: str, action: str) -> None:
        pass

    def idempotent_replay(self, integration: str) -> None:
        pass

    def deprecation_seen(self, integration: str, route: str, info: DeprecationInfo) -> None:
        pass

    def breaker_changed(self, integration: str, scope: str, state: str, *,
                        initial: bool = False) -> None:
        pass

"""FanOutObserver: every report reaches each observer that implements it, in order."""

from __future__ import annotations

from sidecar.core.calls.fan_out import FanOutObserver
from sidecar.core.calls.models import DeprecationInfo
from sidecar.core.calls.observer import NullObserver


class Recorder:
    """Implements every report."""

    def __init__(self, name: str, log: list[tuple[str, ...]]) -> None:
        self.name = name
        self.log = log

    def call_finished(self, integration: str, route: str, outcome: str, status: int,
                      attempts: int, duration: float) -> None:
        self.log.append((self.name, "call", integration, route, outcome, str(status),
                         str(attempts), str(duration)))

    def attempt_finished(self, integration: str, route: str, outcome: str,
                         duration: float) -> None:
        self.log.append((self.name, "attempt", integration, route, outcome, str(duration)))

    def retried(self, integration: str, route: str, reason: str) -> None:
        self.log.append((self.name, "retried", integration, route, reason))

    def budget_exhausted(self, integration: str) -> None:
        self.log.append((self.name, "budget", integration))

    def rate_limited(self, integration: str, route: str, action: str) -> None:
        self.log.append((self.name, "rate", integration, route, action))

    def idempotent_replay(self, integration: str) -> None:
        self.log.append((self.name, "replay", integration))

    def deprecation_seen(self, integration: str, route: str, info: DeprecationInfo) -> None:
        self.log.append((self.name, "deprecation", integration, route, info.link))

    def breaker_changed(self, integration: str, scope: str, state: str, *,
                        initial: bool = False) -> None:
        self.log.append((self.name, "breaker", integration, scope, state, str(initial)))


class CallsOnly(NullObserver):
    """Keeps the null observer's no-ops for everything but finished calls."""

    def __init__(self, log: list[tuple[str, ...]]) -> None:
        self.log = log

    def call_finished(self, integration: str, route: str, outcome: str, status: int,
                      attempts: int, duration: float) -> None:
        self.log.append(("calls-only", "call", integration, outcome))


def test_each_report_reaches_every_observer_that_implements_it_in_order() -> None:
    log: list[tuple[str, ...]] = []
    fan = FanOutObserver(Recorder("first", log), CallsOnly(log), Recorder("last", log))
    fan.call_finished("pay", "charges", "success", 200, 1, 0.25)
    fan.attempt_finished("pay", "charges", "2xx", 0.2)
    fan.retried("pay", "", "status_503")
    fan.budget_exhausted("pay")
    fan.rate_limited("pay", "", "waited")
    fan.idempotent_replay("pay")
    fan.deprecation_seen("pay", "", DeprecationInfo(deprecated=True, link="https://d"))
    fan.breaker_changed("pay", "", "open", initial=True)
    assert log == [
        ("first", "call", "pay", "charges", "success", "200", "1", "0.25"),
        ("calls-only", "call", "pay", "success"),
        ("last", "call", "pay", "charges", "success", "200", "1", "0.25"),
        ("first", "attempt", "pay", "charges", "2xx", "0.2"),
        ("last", "attempt", "pay", "charges", "2xx", "0.2"),
        ("first", "retried", "pay", "", "status_503"),
        ("last", "retried", "pay", "", "status_503"),
        ("first", "budget", "pay"),
        ("last", "budget", "pay"),
        ("first", "rate", "pay", "", "waited"),
        ("last", "rate", "pay", "", "waited"),
        ("first", "replay", "pay"),
        ("last", "replay", "pay"),
        ("first", "deprecation", "pay", "", "https://d"),
        ("last", "deprecation", "pay", "", "https://d"),
        ("first", "breaker", "pay", "", "open", "True"),
        ("last", "breaker", "pay", "", "open", "True"),
    ]


def test_reports_an_observer_keeps_as_null_no_ops_are_not_forwarded() -> None:
    # CallsOnly keeps NullObserver's attempt_finished: only its call_finished is called.
    log: list[tuple[str, ...]] = []
    fan = FanOutObserver(CallsOnly(log))
    fan.attempt_finished("pay", "", "2xx", 0.1)
    fan.call_finished("pay", "", "server_error", 503, 3, 1.0)
    assert log == [("calls-only", "call", "pay", "server_error")]

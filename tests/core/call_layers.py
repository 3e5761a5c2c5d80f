"""In-memory parts for testing the Call path's layers one at a time: a scripted
transport, an idempotency store, a clock whose sleeps move fake time, and a recording
observer. No sockets: the end-to-end tests (tests/test_call_*.py) cover those."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sidecar.clock import FakeClock
from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import (
    CallRequest,
    TransportError,
    TransportErrorKind,
    UpstreamRequest,
    UpstreamResponse,
)
from sidecar.core.calls.observer import NullObserver
from sidecar.core.calls.policy import RetryPolicy, Timeouts
from sidecar.core.idempotency import ClaimStatus, IdempotencyClaim
from sidecar.core.resilience.backoff import BackoffPolicy
from sidecar.core.tracing import new_trace

Outcome = UpstreamResponse | TransportError


def answer(status: int, *headers: tuple[str, str], body: bytes = b"") -> UpstreamResponse:
    return UpstreamResponse(status, tuple(headers), body)


def failure(kind: str) -> TransportError:
    return TransportError(TransportErrorKind(kind), "scripted")


class VirtualClock(FakeClock):
    """Fake time that a sleep moves forward by itself (and records)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


class ScriptedTransport:
    """Answers each request with the next scripted outcome (the last one repeats),
    optionally after ``takes`` seconds of fake time."""

    def __init__(self, outcomes: Iterable[Outcome], clock: FakeClock | None = None,
                 takes: float = 0.0) -> None:
        self._outcomes = list(outcomes)
        self._clock = clock
        self._takes = takes
        self.requests: list[UpstreamRequest] = []
        self.closed = False

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.requests.append(request)
        outcome = self._outcomes.pop(0) if len(self._outcomes) > 1 else self._outcomes[0]
        if self._clock is not None and self._takes:
            self._clock.advance(self._takes)
        if isinstance(outcome, TransportError):
            raise outcome
        return outcome

    async def close(self) -> None:
        self.closed = True


@dataclass
class _Record:
    fingerprint: str
    response: bytes | None = None


class MemoryIdempotency:
    """The IdempotencyStore port in a dict (leases are not needed here)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], _Record] = {}
        self.released: list[str] = []

    async def idempotency_claim(self, scope: str, key: str, fingerprint: str, *, now: float,
                                lease: float) -> IdempotencyClaim:
        record = self.records.get((scope, key))
        if record is None:
            self.records[(scope, key)] = _Record(fingerprint)
            return IdempotencyClaim(ClaimStatus.CLAIMED)
        if record.fingerprint != fingerprint:
            return IdempotencyClaim(ClaimStatus.CONFLICT)
        if record.response is None:
            return IdempotencyClaim(ClaimStatus.IN_FLIGHT)
        return IdempotencyClaim(ClaimStatus.COMPLETED, record.response)

    async def idempotency_complete(self, scope: str, key: str, response: bytes, *,
                                   now: float, ttl: float) -> None:
        self.records[(scope, key)].response = response

    async def idempotency_release(self, scope: str, key: str) -> None:
        self.released.append(key)
        self.records.pop((scope, key), None)


@dataclass
class RecordingObserver(NullObserver):
    events: list[tuple[object, ...]] = field(default_factory=list)

    def attempt_finished(self, integration: str, route: str, outcome: str,
                         duration: float) -> None:
        self.events.append(("attempt", outcome))

    def retried(self, integration: str, route: str, reason: str) -> None:
        self.events.append(("retried", reason))

    def budget_exhausted(self, integration: str) -> None:
        self.events.append(("budget_exhausted",))

    def rate_limited(self, integration: str, route: str, action: str) -> None:
        self.events.append(("rate_limited", action))

    def idempotent_replay(self, integration: str) -> None:
        self.events.append(("replay",))

    def of(self, kind: str) -> list[tuple[object, ...]]:
        return [e for e in self.events if e[0] == kind]


def retry_policy(max_attempts: int = 3, *, on_status: Iterable[int] = (429, 502, 503, 504),
                 on_errors: Iterable[str] = ("connect", "reset", "timeout"),
                 honor_retry_after: bool = True) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts,
                       backoff=BackoffPolicy(initial=0.1, multiplier=2.0, maximum=1.0,
                                                     jitter="none"),
                       on_status=frozenset(on_status), on_errors=frozenset(on_errors),
                       honor_retry_after=honor_retry_after)


TIMEOUTS = Timeouts(connect=1.0, attempt=5.0, total=30.0)
_ids = itertools.count()


def context(clock: FakeClock, *, method: str = "GET", key: str = "", deadline: float = 30.0,
            body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> CallContext:
    """A call's context as the router makes it, ``deadline`` seconds from now."""
    req = CallRequest("pay", method=method, path="/v1/x", body=body, idempotency_key=key,
                      headers=headers)
    now = clock.monotonic()
    return CallContext(req, "pay", "", method, f"https://pay.example/v1/x?n={next(_ids)}",
                       headers, now, now + deadline, new_trace())


def handler_of(*outcomes: Outcome, calls: list[CallContext] | None = None) -> Handler:
    """A ``next`` that records what reached it and answers as scripted, recording the
    attempt on the context the way the transport layer does."""
    script = list(outcomes)

    async def run(ctx: CallContext) -> UpstreamResponse:
        if calls is not None:
            calls.append(ctx)
        outcome = script.pop(0) if len(script) > 1 else script[0]
        ctx.attempts += 1
        ctx.went_out(outcome)
        if isinstance(outcome, TransportError):
            raise outcome
        return outcome

    return run


def raising(exc: BaseException | Callable[[], BaseException]) -> Handler:
    async def run(ctx: CallContext) -> UpstreamResponse:
        raise exc() if callable(exc) and not isinstance(exc, BaseException) else exc

    return run

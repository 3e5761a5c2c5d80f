"""The queue of calls: enqueue, look up, cancel, replay, and the loop that attempts
what is due.

The loop leases due calls from the store (as many per integration as its
``concurrency`` leaves free, the head of each ordering key only), runs one attempt of
each through the pipeline's queued stack, and settles the outcome: 2xx SUCCEEDED; a
4xx that is not "later" (or a 3xx, which is never followed) FAILED; anything else is
tried again after the schedule's next pause (or the upstream's Retry-After when
longer), DEAD once the schedule or ``max_age`` runs out. A refusal that sent nothing
(breaker open, bulkhead full) spends no attempt: an open breaker pauses the
integration's queue until it may half-open, and the next due calls are its probes.
Between due times the loop sleeps until the earliest one (or a wake-up on enqueue):
calls queued for later cost nothing while they wait.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import random
import re
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Protocol

from sidecar.clock import Clock, Timer
from sidecar.core.calls.layers.rate_limit import server_hint
from sidecar.core.calls.models import CallRequest, CallResult, UpstreamResponse
from sidecar.core.calls.queue.models import QueuedCall, QueuedState, QueuePolicy
from sidecar.core.calls.queue.store import QueueStore
from sidecar.core.events.topics import validate_topic
from sidecar.core.resilience import BreakerOpenError, RateLimitedError
from sidecar.core.resilience.bulkhead import BulkheadFullError
from sidecar.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    SidecarError,
)

log = logging.getLogger("sidecar.queue")

#: Seconds a replica holds a call it attempts; renewed every third of it while the
#: attempt runs, so only a dead replica's calls are taken over (after at most this).
LEASE = 60.0
#: Seconds before a refused attempt (bulkhead full) is tried again.
REFUSED_PAUSE = 1.0
#: Outcomes remembered as appended by this process (a bounded memory).
ANNOUNCED_MEMORY = 10_000
#: The loop looks again at least this often, so that calls another process changed in
#: the store (``integration-sidecar calls replay``) are seen: one query a minute.
MAX_SLEEP = 60.0
_ORDERING_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class QueueTarget(Protocol):
    """The Call path, as the queue uses it."""

    def check(self, req: CallRequest) -> None: ...

    def integration_names(self) -> Iterable[str]: ...

    async def attempt(self, req: CallRequest) -> CallResult: ...


Announce = Callable[[QueuedCall], Awaitable[None]]


class QueueObserver(Protocol):
    def attempted(self, integration: str, outcome: str) -> None:
        """``outcome``: status class (``2xx``...), an error reason, or ``refused``."""

    def finished(self, integration: str, state: str) -> None: ...

    def taken_over(self, count: int) -> None:
        """Calls of a dead replica made due again (their lease ran out)."""


class _Unobserved:
    def attempted(self, integration: str, outcome: str) -> None:
        pass

    def finished(self, integration: str, state: str) -> None:
        pass

    def taken_over(self, count: int) -> None:
        pass


class CallQueue:
    def __init__(self, store: QueueStore, target: QueueTarget, clock: Clock,
                 policies: Callable[[str], QueuePolicy], announce: Announce, *,
                 owner: str = "", rand: Callable[[], float] = random.random,
                 observer: QueueObserver | None = None, lease: float = LEASE) -> None:
        self._store = store
        self._target = target
        self._clock = clock
        self._policies = policies
        self._announce = announce
        self._owner = owner or secrets.token_hex(8)
        self._rand = rand
        self._observer: QueueObserver = observer or _Unobserved()
        self._wake = asyncio.Event()
        self._running: Counter[str] = Counter()
        #: Integration -> Unix time before which none of its calls is leased.
        self._paused: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._listeners: list[asyncio.Queue[QueuedCall]] = []
        self._lease = lease
        #: Ids of the calls this replica's attempts hold, with the renewal in flight.
        self._leased: set[str] = set()
        self._renewing: asyncio.Task[None] | None = None
        self._renew_timer: Timer | None = None
        #: Outcomes this process appended or is appending (the latest ones): the sweep
        #: must not append one again from a list it read before the attempt's mark.
        self._announcing: collections.OrderedDict[
            tuple[str, QueuedState, float | None], None] = (
            collections.OrderedDict())

    # ------------------------------------------------------------------ the API

    async def enqueue(self, req: CallRequest, *, not_before: float | None = None,
                      result_topic: str = "", ordering_key: str = ""
                      ) -> tuple[QueuedCall, bool]:
        """Store ``req`` for delivery; (the call, whether it was a duplicate)."""
        problems: list[FieldViolation] = []
        if not req.idempotency_key:
            problems.append(FieldViolation("call.idempotency_key",
                                           "is required for a queued call (or the "
                                           "idempotency-key metadata)"))
        topic = result_topic or f"calls.{req.integration}"
        problems += validate_topic(topic, "result_topic")
        if ordering_key and not _ORDERING_KEY.match(ordering_key):
            problems.append(FieldViolation("ordering_key",
                                           "must be 1-255 printable ASCII characters"))
        now = self._clock.time()
        max_age = self._policies(req.integration).max_age
        if not_before is not None and not (math.isfinite(not_before)
                                           and not_before <= now + max_age):
            problems.append(FieldViolation(
                "not_before", f"is later than the integration's queue max_age "
                              f"({max_age:g} s from now) allows"))
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems),
                                  violations=problems)
        self._target.check(req)  # what Call would refuse, refused now
        due = max(now, not_before or now)
        call = QueuedCall(id=f"qc_{secrets.token_hex(12)}", request=_stored(req),
                          fingerprint=_fingerprint(req, not_before, topic, ordering_key),
                          created_at=now, result_topic=topic, ordering_key=ordering_key,
                          next_attempt_at=due)
        stored, added = await self._store.queue_add(call)
        if not added and stored.fingerprint != call.fingerprint:
            raise FailedPrecondition(
                "this idempotency key was already used with a different queued call",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"integration": req.integration, "id": stored.id})
        if added:
            self._wake.set()
        return stored, not added

    async def get(self, call_id: str) -> QueuedCall:
        return _found(call_id, await self._store.queue_get(call_id))

    async def cancel(self, call_id: str) -> QueuedCall:
        before = await self._store.queue_get(call_id)
        call = _found(call_id, await self._store.queue_cancel(call_id, now=self._clock.time()))
        if before is not None and not before.state.final and call.state.final:
            self._observer.finished(call.integration, call.state.value)
        return call

    async def list_calls(self, *, state: QueuedState | None = None,
                         integration: str | None = None,
                         limit: int = 100) -> list[QueuedCall]:
        return await self._store.queue_list(state=state, integration=integration, limit=limit)

    async def replay(self, call_id: str) -> QueuedCall:
        call = _found(call_id, await self._store.queue_replay(call_id, now=self._clock.time()))
        self._wake.set()
        return call

    # ------------------------------------------------------------------ the loop

    async def start(self) -> None:
        recovered = await self._store.queue_recover(now=self._clock.time())
        if recovered:
            log.warning("queued calls interrupted mid-attempt are due again",
                        extra={"calls": recovered})
        self._loop_task = asyncio.ensure_future(self._loop())
        self._renew_timer = self._clock.call_later(self._lease / 3, self._renew_soon)

    def _renew_soon(self) -> None:
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.ensure_future(self._renew())
        self._renew_timer = self._clock.call_later(self._lease / 3, self._renew_soon)

    async def _renew(self) -> None:
        if not self._leased:
            return
        try:
            await self._store.queue_renew(set(self._leased), owner=self._owner,
                                          until=self._clock.time() + self._lease)
        except SidecarError as exc:
            log.warning("queued call leases not renewed: %s", exc)

    async def stop(self) -> None:
        """No new attempt starts; those in flight finish (cancelled if this is)."""
        if self._renew_timer is not None:
            self._renew_timer.cancel()
        if self._renewing is not None:
            self._renewing.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        try:
            await self.drained()
        finally:
            for task in self._tasks:
                task.cancel()

    async def drained(self) -> None:
        """Until no attempt runs (for tests and shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._announce_pending()
            except SidecarError as exc:  # tried again on the next turn; never blocks work
                log.warning("queued call outcome not yet appended: %s", exc)
            try:
                taken, free = await self._take()
                if taken:
                    continue
                # Integrations with no free slot are woken by their attempts' ends.
                due = await self._store.queue_next_due(integrations=free)
            except SidecarError as exc:  # the store is down: try again shortly
                log.error("queued calls: %s", exc)
                due = self._clock.time() + REFUSED_PAUSE
            # No await from reading the time to setting the timer: a clock that moves
            # meanwhile cannot make the loop oversleep.
            now = self._clock.time()
            wait = min([t - now for t in (due, *self._paused.values()) if t is not None],
                       default=MAX_SLEEP)
            if wait <= 0 and not taken:
                # Due already (the clock moved while the store answered): look again at
                # once. A pause still in force is not due: no spin, it is left out above.
                await asyncio.sleep(0)
                continue
            timer = self._clock.call_later(min(wait, MAX_SLEEP), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def listen(self) -> asyncio.Queue[QueuedCall]:
        """Every outcome settled from now on (what was stored), in order."""
        listener: asyncio.Queue[QueuedCall] = asyncio.Queue()
        self._listeners.append(listener)
        return listener

    async def _take(self) -> tuple[int, list[str]]:
        """Lease and start what is due; (how many, the integrations with free slots)."""
        now = self._clock.time()
        for name, until in list(self._paused.items()):
            if until <= now:
                del self._paused[name]
        wants = {name: free for name in self._integrations()
                 if name not in self._paused
                 and (free := self._policies(name).concurrency - self._running[name]) > 0}
        if not wants:
            return 0, []
        before = self._store.takeovers
        calls = await self._store.queue_take(now=now, wants=wants, owner=self._owner,
                                             lease=self._lease)
        if self._store.takeovers > before:
            self._observer.taken_over(self._store.takeovers - before)
        for call in calls:
            self._running[call.integration] += 1
            self._leased.add(call.id)
            task = asyncio.ensure_future(self._attempt(call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(calls), list(wants)

    def _integrations(self) -> Iterable[str]:
        return self._target.integration_names()

    async def _attempt(self, call: QueuedCall) -> None:
        name = call.integration
        try:
            outcome = await self._outcome(call)
            stored = await self._store.queue_settle(outcome, owner=self._owner,
                                                    now=self._clock.time())
            for listener in self._listeners:
                if stored is not None:
                    listener.put_nowait(stored)
            if stored is None:
                log.warning("queued call's lease was lost; its outcome is not recorded",
                            extra={"id": call.id, "integration": name})
            elif stored.state.final:
                self._observer.finished(name, stored.state.value)
                await self._announce_one(stored)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queued call attempt failed", extra={"id": call.id})
        finally:
            self._running[name] -= 1
            self._leased.discard(call.id)
            self._wake.set()

    async def _outcome(self, call: QueuedCall) -> QueuedCall:
        policy = self._policies(call.integration)
        now = self._clock.time()
        try:
            # A signed request's webhook-id is the queued call's id, on every attempt.
            result = await self._target.attempt(replace(call.request, message_id=call.id))
        except (BreakerOpenError, RateLimitedError, BulkheadFullError) as exc:
            # Nothing went out: no attempt spent. An open breaker pauses the integration.
            self._observer.attempted(call.integration, "refused")
            pause = exc.retry_after if exc.retry_after else REFUSED_PAUSE
            if isinstance(exc, BreakerOpenError):
                self._paused[call.integration] = now + pause
            return call.moved(state=QueuedState.QUEUED, next_attempt_at=now + pause,
                              last_error=exc.reason)
        except SidecarError as exc:
            self._observer.attempted(call.integration, exc.reason)
            attempts = call.attempts + max(1, int(exc.metadata.get("attempts", "1") or 1))
            if exc.metadata.get("attempts") == "0" and exc.reason in _CONFIG_REFUSALS:
                return call.moved(state=QueuedState.FAILED, next_attempt_at=None,
                                  finished_at=now, last_error=exc.reason, attempts=call.attempts)
            return self._again(call.moved(attempts=attempts, last_status=0,
                                          last_error=exc.reason), policy, now, None)
        self._observer.attempted(call.integration, f"{result.status // 100}xx")
        done = call.moved(attempts=call.attempts + max(1, result.attempts),
                          last_status=result.status, last_error="",
                          response=replace(result, attempts=call.attempts + 1))
        if 200 <= result.status < 300:
            return done.moved(state=QueuedState.SUCCEEDED, next_attempt_at=None,
                              finished_at=now)
        if 300 <= result.status < 400 or policy.failed_for_good(result.status):
            return done.moved(state=QueuedState.FAILED, next_attempt_at=None, finished_at=now)
        hint = server_hint(UpstreamResponse(result.status, result.headers, b""), now)
        return self._again(done, policy, now, hint)

    def _again(self, call: QueuedCall, policy: QueuePolicy, now: float,
               hint: float | None) -> QueuedCall:
        pause = policy.pause(call.attempts, self._rand)
        if pause is not None and hint is not None:
            pause = max(pause, hint)
        if pause is None or now + pause > call.created_at + policy.max_age:
            return call.moved(state=QueuedState.DEAD, next_attempt_at=None, finished_at=now)
        return call.moved(state=QueuedState.QUEUED, next_attempt_at=now + pause)

    async def _announce_pending(self) -> None:
        for call in await self._store.queue_unannounced():
            await self._announce_one(call)

    async def _announce_one(self, call: QueuedCall) -> None:
        # An attempt announces its own outcome; the loop's sweep (for outcomes a crash
        # or a failed append left) must not append the same one meanwhile.
        key = (call.id, call.state, call.finished_at)
        if call.announced or call.state not in _ANNOUNCED or key in self._announcing:
            return
        self._announcing[key] = None
        try:
            await self._announce(call)
            await self._store.queue_mark_announced(call.id)
        except BaseException:
            del self._announcing[key]  # not appended: the sweep tries again
            raise
        while len(self._announcing) > ANNOUNCED_MEMORY:
            self._announcing.popitem(last=False)


#: Refusals that no later attempt can change (the config no longer allows the call).
_CONFIG_REFUSALS = frozenset({"INTEGRATION_NOT_FOUND", "INVALID_ARGUMENT"})
_ANNOUNCED = frozenset({QueuedState.SUCCEEDED, QueuedState.FAILED, QueuedState.DEAD})


def _found(call_id: str, call: QueuedCall | None) -> QueuedCall:
    if call is None:
        raise NotFound(f"no queued call {call_id!r}", reason="QUEUED_CALL_NOT_FOUND",
                       metadata={"id": call_id[:100]})
    return call


def _stored(req: CallRequest) -> CallRequest:
    """What of a request is kept: no deadline, trace or span of the enqueuing RPC."""
    return CallRequest(req.integration, (req.method or "GET").upper(), req.path, req.query,
                       req.headers, req.body, req.idempotency_key, req.api_version)


def _fingerprint(req: CallRequest, not_before: float | None, topic: str,
                 ordering_key: str) -> str:
    h = hashlib.sha256()
    parts = [req.integration, (req.method or "GET").upper(), req.path, req.api_version,
             repr(req.query), repr(req.headers), repr(not_before), topic, ordering_key]
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    h.update(req.body)
    return h.hexdigest()


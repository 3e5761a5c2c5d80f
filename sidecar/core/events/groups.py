"""Durable consumer groups: at-least-once delivery to group members, with acks.

Each member pulls at most ``max_in_flight`` unacked events; the store hands an
event to one member at a time and redelivers it after the ack timeout or a
retry ack (with backoff), dead-lettering it after the group's max attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.clock import Clock
from sidecar.core.events.models import AckOutcome, Delivery, GroupPolicy
from sidecar.core.events.notify import TopicNotifier, wait_for_event
from sidecar.core.events.topics import validate_topics
from sidecar.core.resilience.backoff import BackoffPolicy, backoff_delay
from sidecar.errors import FieldViolation, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("sidecar.groups")

GROUP_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
MAX_ACK_IDS = 1000


class GroupStore(Protocol):
    async def claim(self, group: str, topics: Sequence[str], consumer: str, *, now: float,
                    policy: GroupPolicy, limit: int) -> list[Delivery]: ...

    async def settle(self, group: str, event_ids: Sequence[str], outcome: AckOutcome, *,
                     error: str, now: float, policy: GroupPolicy,
                     retry_delay: Callable[[int], float]) -> tuple[int, list[str]]: ...

    async def release_consumer(self, group: str, consumer: str, *, now: float) -> int: ...

    async def next_due(self, group: str, topics: Sequence[str]) -> float | None: ...

    async def group_exists(self, group: str) -> bool: ...


class GroupObserver(Protocol):
    def delivered(self, group: str, attempt: int) -> None: ...

    def acked(self, group: str, outcome: str, count: int) -> None: ...


@dataclass
class _Member:
    group: str
    consumer: str
    max_in_flight: int
    #: event id -> Unix time its ack is due.
    held: dict[str, float] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class DeliverySettings(Protocol):
    """What durable groups read of the operator's delivery settings (the config's
    ``webhooks.delivery`` is one)."""

    @property
    def ack_timeout(self) -> float:
        """Seconds a member has to ack before the event goes to another delivery."""

    @property
    def max_attempts(self) -> int:
        """Deliveries before an event is dead-lettered."""

    @property
    def backoff(self) -> BackoffPolicy:
        """Delay before redelivering an event acked with "retry" (grows per attempt)."""

    @property
    def default_in_flight(self) -> int:
        """Unacked events per member when the subscriber does not ask."""

    @property
    def max_in_flight(self) -> int:
        """The most unacked events per member a subscriber may ask for."""

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats on an idle stream."""


class ConsumerGroups:
    def __init__(self, store: GroupStore, clock: Clock, config: DeliverySettings,
                 notifier: TopicNotifier, observer: GroupObserver,
                 interest: Callable[[Sequence[str]], Awaitable[None]] | None = None) -> None:
        self._store = store
        #: Called before a member first claims: with a shared log this fixes where
        #: the replica starts following the topics, so no event slips by unseen.
        self._interest = interest
        self._clock = clock
        self._config = config
        self._notifier = notifier
        self._observer = observer
        self._policy = GroupPolicy(ack_timeout=config.ack_timeout,
                                   max_attempts=config.max_attempts)
        self._members: dict[tuple[str, str], _Member] = {}
        self._closing = False

    def _retry_delay(self, attempts: int) -> float:
        return backoff_delay(self._config.backoff, attempts, lambda: 1.0)

    async def consume(self, group: str, topics: Sequence[str], *, consumer: str = "",
                      max_in_flight: int = 0) -> AsyncIterator[Delivery | None]:
        """Deliveries for this member; ``None`` marks an idle heartbeat interval."""
        problems = validate_topics(topics)
        if not GROUP_RE.match(group):
            problems.append(FieldViolation("group", "must be 1-100 characters of A-Z a-z 0-9 "
                                                    ". _ -"))
        if consumer and not GROUP_RE.match(consumer):
            problems.append(FieldViolation("consumer", "must be 1-100 characters of A-Z a-z "
                                                       "0-9 . _ -"))
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems),
                                  violations=problems)
        consumer = consumer or f"member-{secrets.token_hex(4)}"
        limit = min(max_in_flight or self._config.default_in_flight, self._config.max_in_flight)
        member = _Member(group, consumer, limit)
        key = (group, consumer)
        if key in self._members:
            raise InvalidArgument.of("consumer", f"{consumer!r} is already connected to "
                                                 f"group {group!r}")
        self._members[key] = member
        self._notifier.subscribe(topics, member.wake)
        try:
            if self._interest is not None:
                await self._interest(topics)
            async for item in self._pull(member, list(topics)):
                yield item
        finally:
            self._notifier.unsubscribe(topics, member.wake)
            del self._members[key]
            with contextlib.suppress(Exception):
                await self._store.release_consumer(group, consumer, now=self._clock.time())

    async def _pull(self, member: _Member, topics: list[str]) -> AsyncIterator[Delivery | None]:
        while True:
            if self._closing:
                raise Unavailable("the sidecar is shutting down; resubscribe",
                                  reason="SHUTTING_DOWN")
            now = self._clock.time()
            # An event whose ack timed out may now be with another member.
            for event_id, due in list(member.held.items()):
                if due <= now:
                    del member.held[event_id]
            capacity = member.max_in_flight - len(member.held)
            if capacity > 0:
                member.wake.clear()
                got = await self._store.claim(member.group, topics, member.consumer, now=now,
                                              policy=self._policy, limit=capacity)
                if got:
                    for d in got:
                        member.held[d.event.id] = now + self._policy.ack_timeout
                        self._observer.delivered(member.group, d.attempt)
                        yield d
                    continue
            until = now + self._config.heartbeat
            next_due = await self._store.next_due(member.group, topics)
            if next_due is not None:
                until = min(until, next_due)
            if member.held:
                until = min(until, min(member.held.values()))
            if not await self._wait(member.wake, until) and until >= now + self._config.heartbeat:
                yield None

    async def _wait(self, wake: asyncio.Event, until: float) -> bool:
        return await wait_for_event(wake, self._clock, until)

    async def ack(self, group: str, event_ids: Sequence[str], outcome: AckOutcome,
                  error: str = "") -> tuple[int, list[str]]:
        problems = []
        if not group:
            problems.append(FieldViolation("group", "is required"))
        if not event_ids:
            problems.append(FieldViolation("event_ids", "at least one event id is required"))
        if len(event_ids) > MAX_ACK_IDS:
            problems.append(FieldViolation("event_ids", f"at most {MAX_ACK_IDS} ids"))
        if len(error) > 2000:
            problems.append(FieldViolation("error", "at most 2000 characters"))
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems),
                                  violations=problems)
        if not await self._store.group_exists(group):
            raise NotFound(f"consumer group {group!r} does not exist",
                           reason="CONSUMER_GROUP_NOT_FOUND", metadata={"group": group})
        settled, unknown = await self._store.settle(
            group, event_ids, outcome, error=error, now=self._clock.time(),
            policy=self._policy, retry_delay=self._retry_delay)
        self._observer.acked(group, outcome.value, settled)
        for member in self._members.values():
            if member.group != group:
                continue
            released = [eid for eid in event_ids if member.held.pop(eid, None) is not None]
            # A freed slot, a retry that may be due soon: let members re-plan.
            if released or outcome is not AckOutcome.SUCCESS:
                member.wake.set()
        return settled, unknown

    async def close(self) -> None:
        self._closing = True
        for member in self._members.values():
            member.wake.set()

    def members(self) -> list[tuple[str, str, int]]:
        """(group, consumer, events held) for status pages."""
        return [(m.group, m.consumer, len(m.held)) for m in self._members.values()]

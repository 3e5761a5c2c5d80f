"""Queued-call outcome events: when a queued call finishes, the sidecar appends
``call.succeeded``, ``call.failed`` or ``call.dead`` to the call's result topic with
the ``QueuedCall`` as data; this module reads them back as ``QueuedCall`` and runs a
durable-group consumer of them on top of ``consumer.consume``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final

from integration_sidecar_client import _wire
from integration_sidecar_client.consumer import DeadLetter, consume
from integration_sidecar_client.models import AckOutcome, Event, QueuedCall
from integration_sidecar_client.reconnect import Reconnect

if TYPE_CHECKING:
    from integration_sidecar_client.aio import AsyncSidecarClient

#: The event types of outcome events.
OUTCOME_TYPES: Final = frozenset({"call.succeeded", "call.failed", "call.dead"})
#: The attribute naming the queued call on an outcome event.
QUEUED_CALL_ID_ATTRIBUTE: Final = "queued_call_id"


def default_result_topic(integration: str) -> str:
    """Where outcomes go when ``enqueue_call`` names no ``result_topic``."""
    return f"calls.{integration}"


def queued_call_outcome(event: Event) -> QueuedCall:
    """The finished ``QueuedCall`` an outcome event carries (from a subscription or a
    durable group). Outcomes arrive at least once: key your handling on its ``id``.
    Raises ValueError for an event that is not an outcome, or whose data does not parse.
    """
    if event.type not in OUTCOME_TYPES:
        raise ValueError(f"event {event.id} is not a queued-call outcome "
                         f"(type {event.type!r}, expected one of {sorted(OUTCOME_TYPES)})")
    return _wire.queued_call_json(event.data)


async def consume_call_outcomes(
        client: AsyncSidecarClient, group: str, consumer: str, topics: str | Iterable[str],
        handler: Callable[[QueuedCall], Awaitable[None]], *, max_in_flight: int = 10,
        reconnect: Reconnect | None = None,
        on_settled: Callable[[Event, AckOutcome], None] | None = None) -> None:
    """``consume`` for result topics: ``handler`` gets each outcome as a ``QueuedCall``.

    The ack rules are ``consume``'s (return: SUCCESS, raise: RETRY, raise
    ``DeadLetter``: DEAD_LETTER). An event on the topics that is not an outcome, or
    does not parse, can never be handled: it is dead-lettered, not retried.
    """
    async def parsed(event: Event) -> None:
        try:
            outcome = queued_call_outcome(event)
        except ValueError as exc:
            raise DeadLetter(str(exc)) from exc
        await handler(outcome)

    await consume(client, group, consumer, topics, parsed, max_in_flight=max_in_flight,
                  reconnect=reconnect, on_settled=on_settled)

"""A durable-group consumer: subscribe as a member of a group, run an async handler
per event with bounded concurrency, and settle each event with Ack.

The handler returning settles the event as SUCCESS; raising ``DeadLetter`` settles it
as DEAD_LETTER; raising anything else settles it as RETRY (the sidecar redelivers it
after the group's backoff, up to its max attempts). Delivery is at least once: an
event whose ack was lost (sidecar restart, stream break) is delivered again, so
handlers should be idempotent (``idempotency_key_for(event.id)`` helps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from integration_sidecar_client.errors import SidecarError
from integration_sidecar_client.models import AckOutcome, Event
from integration_sidecar_client.reconnect import Reconnect

if TYPE_CHECKING:
    from integration_sidecar_client.aio import AsyncSidecarClient

log = logging.getLogger("integration_sidecar_client")

#: The sidecar keeps at most 2000 characters of the error text stored with an event.
MAX_ERROR_TEXT = 2000


class DeadLetter(Exception):
    """Raise from a handler when an event can never be processed: it is
    dead-lettered at once (an operator can list and replay it) instead of retried."""


def error_text(exc: BaseException) -> str:
    """What is stored with a retried or dead-lettered event: the exception's type
    and message, cut to the sidecar's limit."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_TEXT]


async def consume(client: AsyncSidecarClient, group: str, consumer: str,
                  topics: str | Iterable[str], handler: Callable[[Event], Awaitable[None]], *,
                  max_in_flight: int = 10, reconnect: Reconnect | None = None,
                  on_settled: Callable[[Event, AckOutcome], None] | None = None) -> None:
    """Deliver ``group``'s events on ``topics`` to ``handler`` until cancelled.

    At most ``max_in_flight`` handlers run at once (the sidecar is asked for the same
    number of unacked events). The stream is reopened after a backoff when it breaks.
    ``on_settled(event, outcome)`` is called once the sidecar has taken the ack (for
    metrics or logs). Cancelling the task stops reading, cancels running handlers
    (their events are redelivered) and closes the stream. Errors that reconnecting
    cannot cure (an invalid group name, a wrong token) are raised.
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    slots = asyncio.Semaphore(max_in_flight)
    running: set[asyncio.Task[None]] = set()

    async def settle(event: Event) -> None:
        try:
            outcome, text = AckOutcome.SUCCESS, ""
            try:
                await handler(event)
            except DeadLetter as exc:
                outcome, text = AckOutcome.DEAD_LETTER, error_text(exc)
            except Exception as exc:
                log.warning("handler failed for event %s (attempt %d): %s; asking for a retry",
                            event.id, event.delivery_attempt, type(exc).__name__)
                outcome, text = AckOutcome.RETRY, error_text(exc)
            try:
                await client.ack(group, [event.id], outcome, error=text)
            except SidecarError as exc:
                # Not fatal: the sidecar redelivers what it did not see settled.
                log.warning("ack of event %s failed (%s); it will be redelivered",
                            event.id, exc.reason or exc.code.name)
            else:
                if on_settled is not None:
                    try:
                        on_settled(event, outcome)
                    except Exception:
                        log.exception("on_settled failed for event %s", event.id)
        finally:
            slots.release()

    events = client.subscribe_group(group, consumer, topics, max_in_flight=max_in_flight,
                                    reconnect=reconnect)
    try:
        async for item in events:
            await slots.acquire()
            task = asyncio.create_task(settle(item), name=f"consume:{group}:{item.id}")
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        await events.aclose()
        for task in list(running):
            task.cancel()
        for task in list(running):
            with contextlib.suppress(asyncio.CancelledError):
                await task

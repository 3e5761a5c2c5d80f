"""Stopping background work for sure, within a bound.

Python 3.11 can lose a cancellation: when ``task.cancel()`` lands in the same loop
turn as the operation the task awaits under ``asyncio.wait_for`` completing,
``wait_for`` returns the result and the ``CancelledError`` is gone (fixed in 3.12).
redis-py runs every command under ``wait_for`` when a socket timeout is set, and a
background loop that loses its one cancellation runs on, so whoever awaits it waits
forever. Here a stop is never a single ``cancel()``: loops also check a flag, the
cancellation is repeated until the task ends, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("sidecar.tasks")

#: How long a cancelled task may take to end before it is cancelled again. Short:
#: a lost cancellation costs this much; a task that heeds the first one ends sooner.
RECANCEL_EVERY = 0.05


async def stop_task(task: asyncio.Future[Any] | None, bound: float, what: str = "") -> bool:
    """Cancel ``task`` until it ends, waiting at most ``bound`` seconds in all.

    True if it ended (however: cancelled, returned or failed; a failure is logged).
    A task that handles its cancellation must not need long to clean up: a further
    cancellation may interrupt the clean-up after :data:`RECANCEL_EVERY`.
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, bound)
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("%s did not stop within %.1f s; left behind",
                        what or _name(task), bound)
            return False
        task.cancel()
        # asyncio.wait returns at its timeout whatever the task does with the cancel.
        await asyncio.wait({task}, timeout=min(RECANCEL_EVERY, remaining))
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("%s failed while stopping: %s", what or _name(task), exc,
                    exc_info=exc)
    return True


async def within(step: Awaitable[Any], bound: float, what: str) -> bool:
    """Await ``step`` for at most ``bound`` seconds, then stop it (see :func:`stop_task`).

    For shutdown: True if it finished in time. A step that fails is logged, not
    raised, so the steps after it (closing storage) still run.
    """
    task = asyncio.ensure_future(step)
    try:
        await asyncio.wait({task}, timeout=max(0.0, bound))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("%s failed: %s", what, exc, exc_info=exc)
        return True
    log.warning("%s did not finish within %.1f s; going on without it", what, bound)
    with contextlib.suppress(Exception):
        # Give it a moment to end; it may hold resources the next step closes.
        await stop_task(task, min(RECANCEL_EVERY * 4, max(bound, RECANCEL_EVERY)), what)
    return False


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)

"""The port queued calls need from storage; the SQLite backend implements it. Times
are Unix seconds passed in by the caller."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from sidecar.core.calls.queue.models import QueuedCall, QueuedState


class QueueStore(Protocol):
    #: Calls made due again because their replica's lease ran out, so far (a store
    #: shared by replicas; always 0 for one that is not).
    takeovers: int

    async def queue_add(self, call: QueuedCall) -> tuple[QueuedCall, bool]:
        """Store ``call`` durably, unless its integration already has a call with its
        idempotency key: then (that call, False)."""

    async def queue_get(self, call_id: str) -> QueuedCall | None: ...

    async def queue_take(self, *, now: float, wants: Mapping[str, int], owner: str,
                         lease: float, scan: int = 500) -> list[QueuedCall]:
        """Lease due QUEUED calls to ``owner`` as RUNNING until ``now + lease``: at most
        ``wants[i]`` of integration ``i`` (none of an integration not in ``wants``), and
        of each ordering key only its oldest unfinished call."""

    async def queue_settle(self, call: QueuedCall, *, owner: str,
                           now: float) -> QueuedCall | None:
        """Write an attempt's outcome for a call leased to ``owner`` (through
        ``settled``); None when the lease was lost (nothing written)."""

    async def queue_renew(self, ids: Collection[str], *, owner: str, until: float) -> int:
        """Extend ``owner``'s leases of these RUNNING calls to ``until``; how many."""

    async def queue_mark_announced(self, call_id: str) -> None: ...

    async def queue_next_due(self, *, integrations: Collection[str]) -> float | None:
        """When the earliest QUEUED call that could then be taken is due: of one of
        ``integrations``, the head of its ordering key; a store shared by replicas also
        says when the first RUNNING lease runs out (a dead replica's calls are taken
        over then). None: none."""

    async def queue_cancel(self, call_id: str, *, now: float) -> QueuedCall | None:
        """QUEUED -> CANCELLED; RUNNING -> cancel requested (it ends after its attempt);
        a finished call stays as it is. None: no such call."""

    async def queue_replay(self, call_id: str, *, now: float) -> QueuedCall | None:
        """A FAILED, DEAD or CANCELLED call is QUEUED again, due now, attempts reset."""

    async def queue_unannounced(self, *, limit: int = 100) -> list[QueuedCall]:
        """Finished calls whose outcome event is not yet appended."""

    async def queue_recover(self, *, now: float) -> int:
        """At start-up of the only process using this store: RUNNING calls (their
        process died mid-attempt) are due again now. Returns how many."""

    async def queue_list(self, *, state: QueuedState | None = None,
                         integration: str | None = None,
                         limit: int = 100) -> list[QueuedCall]: ...

    async def queue_counts(self) -> dict[tuple[str, str], int]:
        """(integration, state) -> calls."""

    async def queue_prune(self, *, before: float, limit: int = 1000) -> int:
        """Delete at most ``limit`` calls that finished before ``before`` (their
        idempotency keys are free again); how many went."""

    async def queue_overdue(self, *, now: float) -> dict[str, float]:
        """Integration -> the earliest due time of its QUEUED calls due by ``now``."""


def settled(new: QueuedCall, current: QueuedCall, now: float) -> QueuedCall:
    """What an attempt's outcome ``new`` becomes against the stored ``current``: a call
    whose cancel was requested during the attempt ends CANCELLED unless it finished."""
    if current.cancel_requested and not new.state.final:
        return new.moved(state=QueuedState.CANCELLED, next_attempt_at=None, finished_at=now,
                         cancel_requested=True)
    return new.moved(cancel_requested=current.cancel_requested)

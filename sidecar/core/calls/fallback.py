"""Last good GET responses per integration, served (marked stale) while a breaker is open."""

from __future__ import annotations

import collections

from sidecar.core.calls.models import CallResult


class LastGoodCache:
    """Bounded LRU of (url -> result, stored-at) entries."""

    def __init__(self, max_entries: int, max_age: float) -> None:
        self._max = max_entries
        self._max_age = max_age
        self._entries: collections.OrderedDict[str, tuple[CallResult, float]] = (
            collections.OrderedDict())

    def put(self, url: str, result: CallResult, now: float) -> None:
        self._entries[url] = (result, now)
        self._entries.move_to_end(url)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def get(self, url: str, now: float) -> CallResult | None:
        entry = self._entries.get(url)
        if entry is None:
            return None
        result, stored = entry
        if now - stored > self._max_age:
            del self._entries[url]
            return None
        self._entries.move_to_end(url)
        return result

    def __len__(self) -> int:
        return len(self._entries)

"""Who is connected to which room: connection and distinct-user counts per topic."""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class PresenceStats:
    topic: str
    connections: int
    users: int


class Presence:
    def __init__(self) -> None:
        # topic -> user -> number of that user's connections in the room
        self._rooms: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)

    def join(self, topic: str, user: str) -> None:
        self._rooms[topic][user] += 1

    def leave(self, topic: str, user: str) -> None:
        room = self._rooms.get(topic)
        if room is None:
            return
        room[user] -= 1
        if room[user] <= 0:
            del room[user]
        if not room:
            del self._rooms[topic]

    def stats(self, topic: str) -> PresenceStats:
        room = self._rooms.get(topic, collections.Counter())
        return PresenceStats(topic, sum(room.values()), len(room))

    def topics(self) -> list[PresenceStats]:
        return [self.stats(t) for t in sorted(self._rooms)]

"""Key names and value encodings of the Redis backend (layout: ``sidecar.storage.redis``).

Names and topics are escaped (``%`` ``:`` ``{`` ``}`` become ``%XX``) so ``:`` can
separate parts unambiguously; the Lua scripts escape the same way.
"""

from __future__ import annotations

import math
import re
from urllib.parse import unquote

_SPECIAL = re.compile(r"[%:{}]")
#: Seconds a record outlives its logical expiry: a call that outran its lease
#: can still store its answer (as with SQLite until the next prune), and
#: replicas whose clocks differ a little agree on what expired.
EXPIRY_GRACE = 300.0


def num(x: float) -> str:
    """A float as the scripts receive it: ``repr`` round-trips exactly."""
    return repr(float(x))


def ttl_ms(seconds: float) -> int:
    """The key TTL backing a logical lifetime of ``seconds``."""
    return max(1, math.ceil((seconds + EXPIRY_GRACE) * 1000))


def escape(part: str) -> str:
    return _SPECIAL.sub(lambda m: f"%{ord(m.group()):02X}", part)


def unescape(part: str) -> str:
    return unquote(part)


class RedisKeys:
    """Every key of one sidecar deployment starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.schema = f"{prefix}schema"
        self.topics = f"{prefix}topics"
        self.groups = f"{prefix}groups"
        self.idempotency_index = f"{prefix}idx:idem"
        self.webhook_index = f"{prefix}idx:wh"
        #: What index members are appended to, to name the record they stand for.
        self.idempotency_base = f"{prefix}idem:"
        self.webhook_base = f"{prefix}wh:"

    def stream(self, topic: str) -> str:
        return f"{self.prefix}log:{escape(topic)}"

    @staticmethod
    def member(first: str, second: str) -> str:
        """``first:second``, escaped: an index member naming one record."""
        return f"{escape(first)}:{escape(second)}"

    def group(self, group: str, suffix: str) -> str:
        return f"{self.prefix}g:{escape(group)}:{suffix}"

    def group_due(self, group: str, topic: str) -> str:
        return self.group(group, f"due:{escape(topic)}")

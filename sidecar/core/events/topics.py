"""Topic (room) names and event media types: one rule each, for every path.

A topic is what Publish, Subscribe, GetPresence, a webhook source and a WebSocket
client's rooms all name. The rooms a WebSocket client joins come from its token's
claims (``user:<sub>``, ``role:<role>``), and identity providers put anything in those:
``auth0|5f3a``, ``alice@example.com``, ``Org Admin``. So the grammar is wide: any
characters but control characters, up to :data:`MAX_TOPIC` of them; a claim value
that passes :func:`claim_value_problem` always makes an addressable room, and the app
publishes to it by writing the same ``user:`` + sub it reads from its own tokens.

Storage escapes what its own key syntax needs (Redis: ``%``, ``:``, ``{``, ``}``);
logs and pages escape hostile text where they show it; metrics never label a topic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sidecar.errors import FieldViolation

#: Longest topic name, in characters (a room of a claim value of MAX_CLAIM_VALUE fits).
MAX_TOPIC = 300
#: Longest ``sub`` or role a token may carry: each becomes part of a room name.
MAX_CLAIM_VALUE = 256
#: Most topics one Subscribe (or consumer group member) may name.
MAX_TOPICS = 100
USER_PREFIX = "user:"
ROLE_PREFIX = "role:"
BROADCAST = "broadcast"

#: C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators: they
#: would break log lines, frames and pages that show a topic.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
RULE = (f"must be 1 to {MAX_TOPIC} characters, none of them a control character "
        "(CR, LF, NUL, ...)")


def topic_problem(topic: str) -> str | None:
    """What is wrong with ``topic`` as a topic name, or None."""
    if not 0 < len(topic) <= MAX_TOPIC or _CONTROL.search(topic):
        return RULE
    return None


def claim_value_problem(value: str) -> str | None:
    """What is wrong with a token's ``sub`` or role as part of a room name, or None."""
    if not 0 < len(value) <= MAX_CLAIM_VALUE or _CONTROL.search(value):
        return (f"must be a non-empty string of at most {MAX_CLAIM_VALUE} characters "
                "without control characters")
    return None


def user_room(sub: str) -> str:
    """The room a WebSocket client with this token ``sub`` joins."""
    return USER_PREFIX + sub


def role_room(role: str) -> str:
    """The room every WebSocket client whose token lists this role joins."""
    return ROLE_PREFIX + role


def validate_topics(topics: Sequence[str], name: str = "topics") -> list[FieldViolation]:
    """Problems with a request's list of topics, each naming ``name[i]``."""
    problems = []
    if not topics:
        problems.append(FieldViolation(name, "at least one topic is required"))
    if len(topics) > MAX_TOPICS:
        problems.append(FieldViolation(name, f"at most {MAX_TOPICS} topics"))
    for i, topic in enumerate(topics[:MAX_TOPICS + 1]):
        problem = topic_problem(topic)
        if problem:
            problems.append(FieldViolation(f"{name}[{i}]", problem))
    return problems


def validate_topic(topic: str, name: str = "topic") -> list[FieldViolation]:
    """Problems with one topic field of a request."""
    problem = topic_problem(topic)
    return [FieldViolation(name, problem)] if problem else []


def topic_class(topic: str) -> str:
    """A bounded label for a topic (metrics never carry the name itself)."""
    if topic.startswith(USER_PREFIX):
        return "user"
    if topic.startswith(ROLE_PREFIX):
        return "role"
    if topic == BROADCAST:
        return "broadcast"
    if topic.startswith("webhooks."):
        return "webhooks"
    return "other"


def media_kind(content_type: str) -> str:
    """``json``, ``text`` or ``binary``, compared as RFC 9110 says: type and subtype
    case-insensitively, parameters (``; charset=...``) and white space ignored, and a
    ``+json`` structured suffix (``application/cloudevents+json``) is JSON."""
    essence = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = essence.partition("/")
    if not kind or not subtype:
        return "binary"
    if essence == "application/json" or subtype.endswith("+json"):
        return "json"
    if kind == "text":
        return "text"
    return "binary"

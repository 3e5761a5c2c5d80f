"""Client settings with named defaults: where the sidecar is, the API token, and the
deadline every unary call gets unless told otherwise."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

#: Where the sidecar listens by default (``server.grpc.address``).
DEFAULT_TARGET: Final = "127.0.0.1:50051"
#: Environment variable overriding the default target (``host:port`` or ``unix:///path``).
TARGET_ENV: Final = "SIDECAR_ADDRESS"
#: Environment variable holding the API token when none is passed (the name the
#: sidecar's example config uses for ``server.grpc.api_token_env``).
TOKEN_ENV: Final = "SIDECAR_API_TOKEN"  # noqa: S105 - a variable name, not a token
#: Seconds: the deadline of every unary call. It matches the sidecar's default total
#: timeout for an integration call, retries included, so the sidecar's own budget
#: rather than the client's decides by default.
DEFAULT_TIMEOUT: Final = 30.0

#: Bytes: the largest message the client accepts. grpc's default (4 MiB) is below
#: the sidecar's default ``max_response_bytes`` for a Call (16 MiB); the sidecar
#: bounds what it sends with ``server.grpc.max_message_bytes``.
MAX_RECEIVE_MESSAGE_BYTES: Final = 64 * 1024 * 1024

#: The sidecar runs next to the app: reconnect quickly after it restarts rather than
#: with grpc's default backoff (1 s growing to 120 s). Any of these can be replaced
#: through the clients' ``options``.
CHANNEL_OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
)


class _Default(enum.Enum):
    DEFAULT = "default"


#: Pass as ``timeout`` to use the client's default deadline (the default argument).
DEFAULT: Final = _Default.DEFAULT
#: A per-call deadline: seconds, None for no deadline, or DEFAULT.
Timeout = float | None | _Default


def resolve_target(target: str | None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return target or env.get(TARGET_ENV) or DEFAULT_TARGET


def resolve_token(token: str | None, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return token or env.get(TOKEN_ENV) or None


def channel_options(extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    names = {name for name, _ in extra}
    return [*extra, *(o for o in CHANNEL_OPTIONS if o[0] not in names)]


def deadline(timeout: Timeout, default: float | None) -> float | None:
    if isinstance(timeout, _Default):
        return default
    return timeout


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()

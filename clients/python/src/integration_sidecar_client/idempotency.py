"""Idempotency keys for ``call``, ``enqueue_call`` and ``publish``: random ones, and
deterministic ones derived from what identifies the operation (so a retry after a crash
reuses the key)."""

from __future__ import annotations

import hashlib
import uuid

#: Keys are 1 to 255 printable ASCII characters (the sidecar's rule).
MAX_KEY_LENGTH = 255


def new_idempotency_key() -> str:
    """A fresh random key (a UUID4); keep it with the operation to retry it safely."""
    return str(uuid.uuid4())


def idempotency_key_for(*parts: str | bytes | int) -> str:
    """A key that depends only on ``parts``, e.g. ``idempotency_key_for("refund", order_id)``.

    Each part is length-prefixed before hashing, so ``("ab", "c")`` and ``("a", "bc")``
    give different keys; the result is ``"ik-"`` and a SHA-256 in hex (67 characters).
    """
    if not parts:
        raise ValueError("idempotency_key_for needs at least one part")
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, str | bytes | int):
            raise TypeError(f"idempotency key parts must be str, bytes or int, not "
                            f"{type(part).__name__}")
        raw = part if isinstance(part, bytes) else str(part).encode()
        tag = b"b" if isinstance(part, bytes) else b"i" if isinstance(part, int) else b"s"
        digest.update(tag + len(raw).to_bytes(8, "big") + raw)
    return "ik-" + digest.hexdigest()

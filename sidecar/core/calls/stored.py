"""Idempotency: request fingerprints, and call results as stored bytes."""

from __future__ import annotations

import base64
import hashlib
import json

from sidecar.core.calls.models import CallResult, DeprecationInfo


def fingerprint(method: str, url: str, body: bytes, content_type: str) -> str:
    """What makes two requests "the same" for an idempotency key."""
    h = hashlib.sha256()
    for part in (method.encode(), url.encode(), content_type.encode()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    h.update(body)
    return h.hexdigest()


def encode_result(result: CallResult) -> bytes:
    dep = result.deprecation
    doc = {
        "status": result.status,
        "headers": [list(h) for h in result.headers],
        "body": base64.b64encode(result.body).decode(),
        "route": result.route,
        "deprecation": None if dep is None else {
            "deprecated": dep.deprecated, "deprecated_at": dep.deprecated_at,
            "sunset_at": dep.sunset_at, "link": dep.link,
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_result(data: bytes) -> CallResult:
    doc = json.loads(data)
    dep = doc.get("deprecation")
    return CallResult(
        status=int(doc["status"]),
        headers=tuple((str(k), str(v)) for k, v in doc["headers"]),
        body=base64.b64decode(doc["body"]),
        attempts=0,
        replayed=True,
        route=doc.get("route", ""),
        deprecation=None if dep is None else DeprecationInfo(**dep),
    )

"""A queued call as bytes, for the stores: JSON, with bodies in base64."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

from sidecar.core.calls.models import CallRequest
from sidecar.core.calls.queue.models import QueuedCall, QueuedState
from sidecar.core.calls.stored import decode_result, encode_result


def _pairs(pairs: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in pairs)


def encode_call(call: QueuedCall) -> bytes:
    req = call.request
    doc = {
        "id": call.id, "fingerprint": call.fingerprint, "created_at": call.created_at,
        "result_topic": call.result_topic, "ordering_key": call.ordering_key,
        "state": call.state.value, "attempts": call.attempts,
        "next_attempt_at": call.next_attempt_at, "finished_at": call.finished_at,
        "last_status": call.last_status, "last_error": call.last_error,
        "cancel_requested": call.cancel_requested, "announced": call.announced,
        "response": (None if call.response is None
                     else {**json.loads(encode_result(call.response)),
                           "duration": call.response.duration}),
        "request": {
            "integration": req.integration, "method": req.method, "path": req.path,
            "query": [list(q) for q in req.query], "headers": [list(h) for h in req.headers],
            "body": base64.b64encode(req.body).decode(), "idempotency_key": req.idempotency_key,
            "api_version": req.api_version,
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_call(data: bytes) -> QueuedCall:
    doc = json.loads(data)
    r = doc["request"]
    request = CallRequest(
        integration=r["integration"], method=r["method"], path=r["path"],
        query=_pairs(r["query"]), headers=_pairs(r["headers"]),
        body=base64.b64decode(r["body"]), idempotency_key=r["idempotency_key"],
        api_version=r["api_version"])
    response = doc.get("response")
    return QueuedCall(
        id=doc["id"], request=request, fingerprint=doc["fingerprint"],
        created_at=float(doc["created_at"]), result_topic=doc["result_topic"],
        ordering_key=doc["ordering_key"], state=QueuedState(doc["state"]),
        attempts=int(doc["attempts"]), next_attempt_at=doc["next_attempt_at"],
        finished_at=doc["finished_at"], last_status=int(doc["last_status"]),
        last_error=doc["last_error"], cancel_requested=bool(doc["cancel_requested"]),
        announced=bool(doc["announced"]),
        response=None if response is None else replace(
            decode_result(json.dumps(response).encode()), replayed=False,
            attempts=int(doc["attempts"]), duration=float(response.get("duration", 0.0))),
    )

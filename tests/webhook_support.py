"""Sign webhooks the way providers do (independently of the sidecar's verifiers)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
STRIPE_SECRET = "whsec_stripe_test_secret_value"
GITHUB_SECRET = "github-webhook-secret"


def standard_headers(body: bytes, secret: str = WHSEC, msg_id: str = "msg_1",
                     ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body,
                                    hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": f"v1,{sig}", "Content-Type": "application/json"}


def stripe_headers(body: bytes, secret: str = STRIPE_SECRET, ts: int | None = None
                   ) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={sig}", "Content-Type": "application/json"}


def github_headers(body: bytes, delivery: str, secret: str = GITHUB_SECRET) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={sig}", "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": "push", "Content-Type": "application/json"}


def stripe_event(event_id: str, kind: str = "invoice.paid") -> bytes:
    return json.dumps({"id": event_id, "type": kind, "data": {"object": {}}}).encode()


WEBHOOK_ENV = {"WHSEC": WHSEC, "STRIPE_WHSEC": STRIPE_SECRET, "GITHUB_SECRET": GITHUB_SECRET}


def webhook_sources(**extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sources: dict[str, dict[str, Any]] = {
        "stripe": {"scheme": "stripe", "secrets_env": ["STRIPE_WHSEC"]},
        "svix": {"scheme": "standard_webhooks", "secrets_env": ["WHSEC"]},
        "github": {"scheme": "github", "secrets_env": ["GITHUB_SECRET"]},
    }
    sources.update(extra)
    return sources

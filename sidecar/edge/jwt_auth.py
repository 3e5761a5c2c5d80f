"""JWT checks for WebSocket clients: algorithm allow-list, the right key for the
algorithm (no HS/RS confusion, never ``none``), exp/nbf, optional aud/iss.

The only module that imports PyJWT: tokens become ``Identity`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from sidecar.config import JwtConfig


@dataclass(frozen=True)
class Identity:
    user: str
    roles: tuple[str, ...]
    #: Topics (or ``prefix*`` patterns) the client may subscribe to beyond its rooms.
    topics: tuple[str, ...]
    #: Unix seconds the token expires, if it does.
    expires_at: float | None


class AuthError(Exception):
    """``reason`` is a bounded label for metrics; the message is safe to log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    if isinstance(value, list):
        return tuple(str(v) for v in value if isinstance(v, str | int))
    return ()


class TokenVerifier:
    def __init__(self, config: JwtConfig) -> None:
        self._config = config
        self._hmac = config.hs256_secret.value if config.hs256_secret else None
        self._public = config.rs256_public_key or None

    def verify(self, token: str, now: float) -> Identity:
        cfg = self._config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("malformed", "token is not a JWT") from None
        alg = str(header.get("alg", ""))
        if alg not in cfg.algorithms:
            raise AuthError("algorithm", f"algorithm {alg!r} is not allowed") from None
        # The key follows from the algorithm family: a public key is never used
        # as an HMAC secret, which is what algorithm confusion attacks rely on.
        key = self._hmac if alg.startswith("HS") else self._public
        if key is None:
            raise AuthError("algorithm", f"no key configured for {alg}")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg],
                audience=cfg.audience or None, issuer=cfg.issuer or None,
                leeway=cfg.leeway,
                options={"require": ["sub"], "verify_aud": bool(cfg.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("not_yet_valid", "token is not valid yet (nbf/iat)") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid_signature", "token signature is invalid") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError,
                jwt.MissingRequiredClaimError) as exc:
            raise AuthError("invalid_claims", f"token claims rejected: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError("malformed", f"token rejected: {type(exc).__name__}") from None
        exp = claims.get("exp")
        return Identity(
            user=str(claims["sub"]),
            roles=_strings(claims.get(cfg.roles_claim)),
            topics=_strings(claims.get(cfg.topics_claim)),
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )


def topic_allowed(identity: Identity, topic: str) -> bool:
    """A topic is allowed when it is one of the client's rooms or listed in its token."""
    if topic in (f"user:{identity.user}", "broadcast"):
        return True
    if topic.startswith("role:") and topic[5:] in identity.roles:
        return True
    for pattern in identity.topics:
        if pattern == topic or (pattern.endswith("*") and topic.startswith(pattern[:-1])):
            return True
    return False

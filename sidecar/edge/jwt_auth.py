"""JWT checks for WebSocket clients: algorithm allow-list, the right key for the
algorithm (no HS/RS confusion, never ``none``), exp/nbf, optional aud/iss.

The only module that imports PyJWT: tokens become ``Identity`` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jwt

from sidecar.config import JwtConfig
from sidecar.core.events.topics import (
    BROADCAST,
    ROLE_PREFIX,
    claim_value_problem,
    user_room,
)


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


#: Every reason a token is refused for (the 401 body says it upper-cased; docs/errors.md
#: lists each, and a test checks that they agree).
REASONS = ("missing", "malformed", "algorithm", "invalid_signature", "expired",
           "not_yet_valid", "invalid_claims")
#: Claim values beyond this are refused rather than trusted (Unix seconds: year 5138).
MAX_TIME = 1e11


def _strings(claims: dict[str, object], name: str) -> tuple[str, ...]:
    """A list claim: a JSON list of strings, or one string of space- or comma-separated
    names; absent is empty. Anything else is refused, not guessed at."""
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v)
    raise AuthError("invalid_claims", f"claim {name!r} must be a list of strings")


def _checked(claims: dict[str, object]) -> None:
    """Types PyJWT lets through that the sidecar would mis-handle later."""
    sub = claims.get("sub")
    problem = claim_value_problem(sub) if isinstance(sub, str) else "must be a string"
    if problem:
        raise AuthError("invalid_claims", f"claim 'sub' {problem}")
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or not 0 <= value <= MAX_TIME):
            raise AuthError("invalid_claims", f"claim {name!r} must be a time in Unix seconds")


class TokenVerifier:
    def __init__(self, config: JwtConfig) -> None:
        self._config = config
        self._hmac = config.hs256_secret.value if config.hs256_secret else None
        self._public = config.rs256_public_key or None

    def verify(self, token: str, now: float) -> Identity:
        """The token's identity, or AuthError with one of :data:`REASONS`; never anything
        else, whatever the token holds."""
        try:
            return self._verify(token)
        except AuthError:
            raise
        except Exception as exc:  # a library's surprise on hostile input is still a refusal
            raise AuthError("malformed", f"token rejected: {type(exc).__name__}") from None

    def _verify(self, token: str) -> Identity:
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
        _checked(claims)
        exp = claims.get("exp")
        roles = _strings(claims, cfg.roles_claim)
        for role in roles:  # each names a room: the same rule as the subject
            problem = claim_value_problem(role)
            if problem:
                raise AuthError("invalid_claims", f"each role in claim {cfg.roles_claim!r} "
                                                  f"{problem}")
        return Identity(
            user=str(claims["sub"]),
            roles=roles,
            topics=_strings(claims, cfg.topics_claim),
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )


def topic_allowed(identity: Identity, topic: str) -> bool:
    """A topic is allowed when it is one of the client's rooms or listed in its token."""
    if topic in (user_room(identity.user), BROADCAST):
        return True
    if topic.startswith(ROLE_PREFIX) and topic[len(ROLE_PREFIX):] in identity.roles:
        return True
    for pattern in identity.topics:
        if pattern == topic or (pattern.endswith("*") and topic.startswith(pattern[:-1])):
            return True
    return False

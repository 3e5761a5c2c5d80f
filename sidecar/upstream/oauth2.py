"""OAuth2 client credentials (RFC 6749 §4.4): one access token per integration, fetched
from its token endpoint with the integration's TLS settings, shared by every call
(one request at a time), renewed ``refresh_before`` ahead of its expiry.

Nothing the token endpoint answers reaches a log line or an error: its body may echo
the client secret. Failures become ``UpstreamAuthFailed`` with a short, fixed cause.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote_plus, urlencode, urlsplit

import aiohttp

from sidecar.clock import Clock
from sidecar.config import IntegrationConfig
from sidecar.core.calls.models import TransportError
from sidecar.core.spans import Span
from sidecar.errors import DeadlineExceeded, UpstreamAuthFailed
from sidecar.upstream.transport import USER_AGENT, read_capped, ssl_context_for

log = logging.getLogger("sidecar.oauth2")

#: A token answer is a few hundred bytes (a few KB for a JWT); more is not one.
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
#: Visible ASCII only: the token goes into a header as it is.
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")
#: After a failed token request, calls fail at once (UPSTREAM_AUTH_FAILED with
#: RetryInfo) for this long, doubling per failure up to the cap, instead of each
#: asking the identity provider again while it is down or refusing the client.
FAILURE_BACKOFF_INITIAL = 1.0
FAILURE_BACKOFF_MAX = 30.0
#: A token the upstream refuses (401) this soon after it was fetched is "fresh": when
#: fresh tokens are refused twice in a row, a new one will not help (wrong scopes, a
#: client the API does not know), so 401s are answered as they are, without fetching
#: again, for a pause that doubles like FAILURE_BACKOFF's.
FRESH_TOKEN_AGE = 10.0


class TokenObserver(Protocol):
    def token_requested(self, integration: str, result: str, expires_at: float | None) -> None:
        """``result``: ``ok`` or ``error``; ``expires_at``: Unix time, when known."""


@dataclass(frozen=True, slots=True)
class _Token:
    header: str
    fetched_at: float
    #: On the monotonic clock: from ``refresh_at`` a new token is fetched in the
    #: background while this one is still sent; from ``expires_at`` calls wait.
    refresh_at: float
    expires_at: float


class _FetchFailed(Exception):
    def __init__(self, cause: str, detail: str, status: int = 0) -> None:
        super().__init__(detail)
        self.cause, self.detail, self.status = cause, detail, status


class OAuth2TokenSource:
    """The ``CredentialSource`` of an integration with ``oauth2_client_credentials``."""

    def __init__(self, config: IntegrationConfig, clock: Clock,
                 observer: TokenObserver | None = None) -> None:
        oauth2, secret = config.auth.oauth2, config.auth.secret
        if oauth2 is None or secret is None:
            raise ValueError(f"integration {config.name!r} has no OAuth2 client credentials")
        self._name = config.name
        self._oauth2 = oauth2
        self._secret = secret.value
        self._tls = config.tls
        self._clock = clock
        self._observer = observer
        self._token: _Token | None = None
        self._fetch: asyncio.Task[_Token] | None = None
        #: Failed requests in a row; until ``_retry_at`` (monotonic) no new one is made.
        self._failures = 0
        self._retry_at = 0.0
        self._failure: tuple[str, dict[str, str]] = ("", {})
        #: Fresh tokens refused in a row; until ``_refetch_at`` a 401 fetches none.
        self._fresh_refusals = 0
        self._refetch_at = 0.0
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ CredentialSource

    async def authorization(self, deadline: float, span: Span | None = None) -> str:
        token = self._token
        now = self._clock.monotonic()
        if token is not None and now < token.refresh_at:
            return token.header
        if self._fetch is None and now < self._retry_at:
            if token is not None and now < token.expires_at:
                return token.header  # its refresh failed lately: keep it while it lasts
            message, meta = self._failure
            raise UpstreamAuthFailed(
                f"{message}; the next token request is in {self._retry_at - now:.3g}s",
                metadata=meta, retry_after=self._retry_at - now)
        fetch = self._start_fetch()
        if token is not None and now < token.expires_at:
            return token.header  # still good: its successor is on the way
        remaining = deadline - now
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before an access token was fetched",
                                   metadata={"integration": self._name})
        try:
            # Shielded: a caller whose deadline runs out leaves the fetch to the others.
            token = await asyncio.wait_for(asyncio.shield(fetch), remaining)
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed waiting for an access token",
                                   metadata={"integration": self._name}) from None
        if span is not None:
            span.event("sidecar.auth.token_fetched", {
                "sidecar.auth.wait_ms": round((self._clock.monotonic() - now) * 1000, 1)})
        return token.header

    def invalidate(self, value: str) -> bool:
        token = self._token
        if token is None or token.header != value:
            return True  # a newer one is there (or on its way): send again with it
        now = self._clock.monotonic()
        if now < self._refetch_at:
            return False
        if now - token.fetched_at < FRESH_TOKEN_AGE:
            self._fresh_refusals += 1
            if self._fresh_refusals >= 2:
                pause = min(FAILURE_BACKOFF_MAX,
                            FAILURE_BACKOFF_INITIAL * 2 ** (self._fresh_refusals - 2))
                self._refetch_at = now + pause
                log.warning("the upstream refuses new access tokens; not fetching another "
                            "for a while", extra={"integration": self._name,
                                                  "retry_in_s": pause})
                return False
        else:
            self._fresh_refusals = 0  # it served a while: revoked or expired early
        self._token = None
        return True

    async def wait_idle(self) -> None:
        """Until no token request is running (a refresh in the background included)."""
        while self._fetch is not None:
            await asyncio.wait({self._fetch})

    async def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ fetching

    def _start_fetch(self) -> asyncio.Task[_Token]:
        """The fetch in progress, or a new one: never two at a time."""
        if self._fetch is None:
            self._fetch = asyncio.get_running_loop().create_task(
                self._fetch_token(), name=f"oauth2-token:{self._name}")
            self._fetch.add_done_callback(self._fetch_done)
        return self._fetch

    def _fetch_done(self, task: asyncio.Task[_Token]) -> None:
        if self._fetch is task:
            self._fetch = None
        if not task.cancelled():
            task.exception()  # a background refresh has no waiter; it was logged

    async def _fetch_token(self) -> _Token:
        started = self._clock.monotonic()
        try:
            access_token, lifetime = await self._request()
        except _FetchFailed as exc:
            self._report("error", None)
            self._failures += 1
            pause = min(FAILURE_BACKOFF_MAX,
                        FAILURE_BACKOFF_INITIAL * 2 ** (self._failures - 1))
            self._retry_at = self._clock.monotonic() + pause
            log.warning("access token request failed", extra={
                "integration": self._name, "cause": exc.cause, "detail": exc.detail,
                "retry_in_s": pause})
            meta = {"integration": self._name, "cause": exc.cause}
            if exc.status:
                meta["status"] = str(exc.status)
            message = f"no access token for {self._name!r}: {exc.detail}"
            self._failure = (message, meta)
            raise UpstreamAuthFailed(message, metadata=meta, retry_after=pause) from None
        o = self._oauth2
        token = _Token(header=f"Bearer {access_token}", fetched_at=started,
                       refresh_at=started + max(lifetime - o.refresh_before, lifetime / 2),
                       expires_at=started + lifetime)
        self._token = token
        self._failures, self._retry_at = 0, 0.0
        self._report("ok", self._clock.time() + lifetime)
        log.info("access token fetched", extra={"integration": self._name,
                                                "expires_in": round(lifetime, 1)})
        return token

    def _report(self, result: str, expires_at: float | None) -> None:
        if self._observer is not None:
            self._observer.token_requested(self._name, result, expires_at)

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Off the event loop: loading a CA bundle takes tens of milliseconds.
            ctx: ssl.SSLContext | bool = await asyncio.to_thread(
                ssl_context_for, self._oauth2.token_url, self._tls)
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=ctx, limit=2, keepalive_timeout=30),
                    cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",))
        return self._session

    def _form(self) -> tuple[str, dict[str, str]]:
        o = self._oauth2
        form = [("grant_type", "client_credentials")]
        if o.scopes:
            form.append(("scope", " ".join(o.scopes)))
        if o.audience:
            form.append(("audience", o.audience))
        form += o.params
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT,
                   "Content-Type": "application/x-www-form-urlencoded"}
        if o.client_auth == "basic":
            # RFC 6749 §2.3.1: each part form-urlencoded, then HTTP Basic.
            pair = f"{quote_plus(o.client_id)}:{quote_plus(self._secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form += [("client_id", o.client_id), ("client_secret", self._secret)]
        return urlencode(form), headers

    async def _request(self) -> tuple[str, float]:
        """The access token and its lifetime in seconds."""
        o = self._oauth2
        body, headers = self._form()
        host = urlsplit(o.token_url).netloc
        try:
            session = await self._get_session()
            async with session.post(o.token_url, data=body, headers=headers,
                                    allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=o.timeout)) as resp:
                if not 200 <= resp.status < 300:
                    raise _FetchFailed("status", f"the token endpoint answered {resp.status}",
                                       resp.status)
                raw = await read_capped(resp, MAX_TOKEN_RESPONSE_BYTES)
        except _FetchFailed:
            raise
        except TransportError as exc:
            raise _FetchFailed("invalid_response", exc.detail) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise _FetchFailed("timeout", f"no answer from {host} within "
                                          f"{o.timeout:g}s") from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise _FetchFailed("tls", f"TLS with {host} failed: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _FetchFailed("connect", f"cannot reach {host}: {type(exc).__name__}") from None
        return self._parse(raw)

    def _parse(self, raw: bytes) -> tuple[str, float]:
        # The messages name what is wrong, never what was sent.
        try:
            doc = json.loads(raw)
        except ValueError:
            raise _FetchFailed("invalid_response", "the token endpoint's answer is not "
                                                   "JSON") from None
        if not isinstance(doc, dict):
            raise _FetchFailed("invalid_response", "the token endpoint's answer is not a "
                                                   "JSON object")
        token = doc.get("access_token")
        if not isinstance(token, str) or not _TOKEN_CHARS.match(token):
            raise _FetchFailed("invalid_response", "the answer has no usable access_token")
        token_type = doc.get("token_type", "Bearer")  # required by RFC 6749, often left out
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise _FetchFailed("token_type", "the token is not a bearer token")
        expires_in = doc.get("expires_in")
        lifetime = self._oauth2.default_lifetime
        if isinstance(expires_in, str):
            try:
                expires_in = float(expires_in)
            except ValueError:
                expires_in = None
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) \
                and 0 < expires_in < float("inf"):
            lifetime = float(expires_in)
        return token, lifetime

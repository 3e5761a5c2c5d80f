"""aiohttp transport for one integration: pooled keep-alive connections, TLS
verification (custom CA, client certificates), no redirects, bounded bodies.

aiohttp's exceptions are translated here into ``TransportError`` kinds, so the
core decides retries and breaker outcomes without knowing aiohttp.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import aiohttp
import yarl

from sidecar import __version__
from sidecar.config import IntegrationConfig, TlsConfig
from sidecar.core.calls.models import (
    TransportError,
    TransportErrorKind,
    UpstreamRequest,
    UpstreamResponse,
)
from sidecar.fast_paths import without_hidden_resend

#: Connection-level headers (RFC 9110 §7.6.1) never forwarded in either direction.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-connection",
})
USER_AGENT = f"integration-sidecar/{__version__}"
_CHUNK = 64 * 1024


def build_ssl_context(config: IntegrationConfig) -> ssl.SSLContext | bool:
    return ssl_context_for(config.base_url, config.tls)


def ssl_context_for(url: str, tls: TlsConfig) -> ssl.SSLContext | bool:
    """The integration's TLS settings for connections to ``url``."""
    # Verify unless the URL is explicitly plain http: never fail open.
    if urlsplit(url).scheme.lower() == "http":
        return False
    if not tls.verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=tls.ca_file or None)
    if tls.client_cert_file:
        ctx.load_cert_chain(tls.client_cert_file, tls.client_key_file or None)
    return ctx


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or ``TransportError(TOO_LARGE)`` as soon as it passes ``limit`` bytes."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise TransportError(TransportErrorKind.TOO_LARGE,
                                 f"response body is over the {limit}-byte limit")
    return bytes(body)


class AiohttpTransport:
    def __init__(self, config: IntegrationConfig, *, max_connections: int) -> None:
        self._config = config
        self._ssl = build_ssl_context(config)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeout_key: tuple[float, float] | None = None
        self._timeout_obj = aiohttp.ClientTimeout()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ssl=self._ssl,
                ttl_dns_cache=60, keepalive_timeout=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Bytes pass through untouched: the app gets exactly what the
                # upstream sent, with its Content-Encoding.
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            # Every attempt must be counted: no hidden resend (see fast_paths).
            without_hidden_resend(self._session)
        return self._session

    def _timeout(self, total: float, connect: float) -> aiohttp.ClientTimeout:
        # Most attempts ask for the same limits: reuse the (attrs) object.
        key = (total, connect)
        if key != self._timeout_key:
            self._timeout_key = key
            self._timeout_obj = aiohttp.ClientTimeout(total=total, sock_connect=connect)
        return self._timeout_obj

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        headers = request.headers
        for name, _ in headers:
            if name.lower() == "user-agent":
                break
        else:
            headers = (*headers, ("User-Agent", USER_AGENT))
        limit = self._config.max_response_bytes
        try:
            async with self._get_session().request(
                # As built and checked (sidecar.core.calls.paths): sent byte for byte,
                # never re-encoded or normalised again.
                request.method, yarl.URL(request.url, encoded=True), headers=headers,
                data=request.body if request.body or request.method not in ("GET", "HEAD")
                else None,
                allow_redirects=False,
                timeout=self._timeout(request.timeout, request.connect_timeout),
            ) as resp:
                length = resp.content_length
                if length is not None and length > limit:
                    raise TransportError(TransportErrorKind.TOO_LARGE,
                                         f"response of {length} bytes is over "
                                         f"the {limit}-byte limit")
                if length is not None:
                    body = await resp.read()  # length known and within the limit
                else:
                    body = await read_capped(resp, limit)
                raw = resp.headers
                # Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
                dropped = HOP_BY_HOP
                if "Connection" in raw:
                    dropped = HOP_BY_HOP | {t.strip().lower() for v in raw.getall("Connection")
                                            for t in v.split(",")}
                out_headers = tuple((k, v) for k, v in raw.items()
                                    if k.lower() not in dropped)
                return UpstreamResponse(resp.status, out_headers, body)
        except TransportError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise TransportError(TransportErrorKind.TIMEOUT,
                                 f"no complete answer within {request.timeout:.3g}s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(TransportErrorKind.TLS,
                                 f"certificate verification failed: {exc.certificate_error}"
                                 ) from None
        except aiohttp.ClientSSLError as exc:
            raise TransportError(TransportErrorKind.TLS, f"TLS handshake failed: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(TransportErrorKind.CONNECT,
                                 f"cannot connect to {exc.host}:{exc.port}: "
                                 f"{exc.os_error.strerror or exc.os_error}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                ConnectionResetError) as exc:
            raise TransportError(TransportErrorKind.RESET,
                                 f"connection closed mid-exchange: {type(exc).__name__}") from None
        except aiohttp.ClientResponseError as exc:
            raise TransportError(TransportErrorKind.PROTOCOL,
                                 f"malformed HTTP answer: {exc.message}") from None
        except aiohttp.ClientOSError as exc:
            raise TransportError(TransportErrorKind.RESET,
                                 f"connection error: {exc.strerror or exc}") from None
        except aiohttp.ClientError as exc:
            raise TransportError(TransportErrorKind.PROTOCOL, type(exc).__name__) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


"""Runs an aiohttp application on one TCP listener inside the shared event loop."""

from __future__ import annotations

import logging
import ssl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sidecar.config import ServerTlsConfig
from sidecar.config.model import DEFAULT_EDGE_HEADER_TIMEOUT as DEFAULT_HEADER_TIMEOUT
from sidecar.server_tls import TlsMaterial, load_chain, read_material, server_context

#: Seconds a refused request's remaining body is read and discarded before closing.
LINGER = 1.0


class MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse (a line or header too long, a bad
    chunked body, NUL bytes) as an ERROR with a traceback, though it has answered 400
    and nothing in the sidecar failed: on an edge facing the internet that is noise an
    attacker controls. Such records become one WARNING line naming the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            reason = str(getattr(exc, "message", "") or type(exc).__name__)
            record.msg = "malformed HTTP request refused with 400: %s"
            record.args = (reason.splitlines()[0][:200],)
            record.exc_info = None
            record.exc_text = None
        return True


_MALFORMED = MalformedRequests()
logging.getLogger("aiohttp.server").addFilter(_MALFORMED)


class HttpListener:
    """Explicit lifecycle: ``start`` binds, ``stop`` closes the socket, then drains."""

    def __init__(self, app: web.Application, host: str, port: int, *, name: str,
                 shutdown_timeout: float, tls: ServerTlsConfig | None = None,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> None:
        self.name = name
        self._host, self._port = host, port
        self._tls = tls
        self._ssl: ssl.SSLContext | None = None
        # handle_signals=False: the wiring owns signals for every listener.
        # aiohttp's keep-alive timer runs from the connection's start (or the last
        # answer) and data arriving does not reset it: a client gets header_timeout
        # seconds for a request's headers, however slowly it trickles them.
        # A request refused before its body was read (413, 408) is closed after at most
        # LINGER seconds of discarding what the client still sends (aiohttp's default
        # is 10 s, which a slow client would use to hold the connection).
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=shutdown_timeout,
                                     keepalive_timeout=header_timeout,
                                     lingering_time=min(LINGER, header_timeout))
        self.address = ""

    async def start(self) -> str:
        if self._tls is not None:
            self._ssl = server_context(read_material(self._tls, self.tls_field))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_port=False,
                           ssl_context=self._ssl)
        await site.start()
        # The bound address (the port, when 0 was asked for), from the public API.
        bound = self._runner.addresses
        if bound:
            host, port = bound[0][:2]
            if ":" in host:
                host = f"[{host}]"
            self.address = f"{host}:{port}"
        return self.address

    @property
    def tls_field(self) -> str:
        return f"server.{self.name}.tls"

    def reload_tls(self, material: TlsMaterial) -> None:
        """Later handshakes use ``material``: loaded into the context the socket serves."""
        if self._ssl is not None:
            load_chain(self._ssl, material)

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the timeout, close."""
        await self._runner.cleanup()

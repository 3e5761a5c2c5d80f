"""Runs the real ``serve`` entry point with one extra slow RPC, for shutdown tests.

``/test.Slow/Sleep`` takes the number of seconds to sleep as its raw request
body and logs ``slow rpc started`` when it begins, so a test can send SIGTERM
while it is in flight without guessing with sleeps. ``/test.Slow/Stubborn`` never
ends and ignores every cancellation: the shutdown's last resort has to end it.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import grpc

from sidecar.cli import _run
from sidecar.config import load_config
from sidecar.logs import configure_logging

log = logging.getLogger("test.slow")


async def _sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    seconds = float(request.decode())
    log.info("slow rpc started", extra={"seconds": seconds})
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        log.info("slow rpc cancelled")
        raise
    log.info("slow rpc finished")
    return b"done"


async def _stubborn(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    log.info("stubborn rpc started")
    forever = asyncio.Event()
    while True:
        try:
            await forever.wait()
        except asyncio.CancelledError:
            log.info("stubborn rpc ignored a cancellation")


def _register(server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        "test.Slow", {"Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
                      "Stubborn": grpc.unary_unary_rpc_method_handler(_stubborn)}
    )
    server.add_generic_rpc_handlers((handler,))


def main() -> int:
    from sidecar.app import serve

    config = load_config(sys.argv[1])
    configure_logging("info", "json")
    return _run(serve(config, extra_services=[_register]))


if __name__ == "__main__":
    sys.exit(main())

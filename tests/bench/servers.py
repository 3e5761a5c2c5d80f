"""The benchmark's helper servers, each run as its own process on uvloop.

``python -m tests.bench.servers upstream``
    an aiohttp server answering ``GET /ok`` with a small 200 body;
``python -m tests.bench.servers floor --upstream URL``
    the "floor": a bare grpc.aio ``SidecarService`` whose ``Call`` makes one
    aiohttp request to the upstream and returns status, headers and body (no
    retries, breaker, rate limit, metrics, logging, health or reflection).

Both bind port 0 on 127.0.0.1, print one JSON line ``{"ready": true,
"address": "host:port"}`` on stdout and run until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from tests.bench.loop import run_on_uvloop

#: What the upstream answers on ``GET /ok``; clients check they got exactly this.
BODY = b'{"ok":true}'
OK_PATH = "/ok"


def _announce(address: str) -> None:
    sys.stdout.write(json.dumps({"ready": True, "address": address}) + "\n")
    sys.stdout.flush()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def upstream() -> None:
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get(OK_PATH, ok)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    host, port = runner.addresses[0][:2]
    _announce(f"{host}:{port}")
    try:
        await _until_signalled()
    finally:
        await runner.cleanup()


async def floor(upstream_url: str) -> None:
    import aiohttp
    import grpc
    from integration_sidecar.v1 import sidecar_pb2 as pb

    # The same client settings as the sidecar's transport, so the floor differs
    # from the sidecar only by the sidecar's features.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=0, keepalive_timeout=30),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    async def call(request: pb.CallRequest, context: grpc.aio.ServicerContext
                   ) -> pb.CallResponse:
        async with session.request(request.method or "GET", upstream_url + request.path,
                                   allow_redirects=False) as resp:
            body = await resp.read()
            return pb.CallResponse(
                status=resp.status,
                headers=[pb.Header(name=k, value=v) for k, v in resp.headers.items()],
                body=body, attempts=1)

    # Registered like the generated add_SidecarServiceServicer_to_server does it,
    # but only Call (the other RPCs answer UNIMPLEMENTED); no interceptors, no
    # health, no reflection.
    service = pb.DESCRIPTOR.services_by_name["SidecarService"].full_name
    handlers = {"Call": grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=pb.CallRequest.FromString,
        response_serializer=pb.CallResponse.SerializeToString)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _announce(f"127.0.0.1:{port}")
    try:
        await _until_signalled()
    finally:
        await server.stop(0.5)
        await session.close()


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.servers")
    sub = parser.add_subparsers(dest="which", required=True)
    sub.add_parser("upstream", help="aiohttp upstream answering GET /ok")
    fl = sub.add_parser("floor", help="minimal gRPC pass-through proxy")
    fl.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    if args.which == "upstream":
        run_on_uvloop(upstream)
    else:
        run_on_uvloop(lambda: floor(args.upstream.rstrip("/")))
    return 0


if __name__ == "__main__":
    sys.exit(cli())

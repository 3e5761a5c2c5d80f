"""The README's grpcurl examples, run as written against a real sidecar.

Each ```sh block of "## Try every RPC with grpcurl" runs under ``bash -euo
pipefail`` with tests/grpcurl_standin.py as ``grpcurl`` on PATH, against a sidecar
loaded from deploy/config/sidecar.example.yaml (what ``make run`` uses) edited only
as the README says, plus free loopback ports, a temporary data directory and the
``payments`` integration pointed at a local upstream, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
import yaml
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.config import Config, parse_config
from tests.certs import make_pki
from tests.conftest import make_config
from tests.system_tools import require_binary
from tests.upstream import Upstream, reply

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE = ROOT / "deploy" / "config" / "sidecar.example.yaml"
STANDIN = ROOT / "tests" / "grpcurl_standin.py"
SECTION = "## Try every RPC with grpcurl"
SERVICE = "integration_sidecar.v1.SidecarService"
JWT_SECRET = "readme-example-jwt-secret-0123456789abcdef"
CHARGES = {"data": [{"id": "ch_1", "amount": 1200}], "has_more": False}
GITHUB_BODY = b'{"zen": "Keep it logically awesome."}'
DEADLINE_EXIT = 64 + 4  # grpcurl: 64 + DEADLINE_EXCEEDED


def readme_blocks() -> tuple[str, list[str]]:
    """The section's prose and its ```sh blocks, or a failure saying what is missing."""
    text = README.read_text(encoding="utf-8")
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        pytest.fail(f"README.md has no '{SECTION}' section: the test runs its examples")
    body = text[start + len(SECTION) + 2:]
    nxt = re.search(r"^## ", body, flags=re.MULTILINE)
    body = body[:nxt.start()] if nxt else body
    blocks = re.findall(r"^```sh\n(.*?)^```$", body, flags=re.MULTILINE | re.DOTALL)
    if len(blocks) != 3:
        pytest.fail(f"README '{SECTION}' should have 3 ```sh blocks (the RPCs on the example "
                    f"config, GetPresence with the /ws edge, webhooks); found {len(blocks)}")
    return body, blocks


# ------------------------------------------------------------------ the config, as a user edits it


def uncomment(text: str, key: str) -> str:
    """Uncomment the commented-out ``key:`` block (the line and its deeper comment lines),
    as a user following the README would."""
    lines = text.split("\n")
    pattern = re.compile(r"^(\s*)# ?(\s*)(\S.*)$")
    starts = [i for i, line in enumerate(lines)
              if (m := pattern.match(line)) and m.group(3) == f"{key}:"]
    assert len(starts) == 1, f"the example config should hold one commented '{key}:' block"
    i = starts[0]
    first = pattern.match(lines[i])
    assert first is not None
    depth = len(first.group(1)) + len(first.group(2))
    lines[i] = " " * depth + first.group(3)
    i += 1
    while i < len(lines) and (m := pattern.match(lines[i])) and \
            len(m.group(1)) + len(m.group(2)) > depth and \
            len(m.group(1)) == len(first.group(1)):
        lines[i] = m.group(1) + m.group(2) + m.group(3)
        i += 1
    return "\n".join(lines)


def example_config(tmp_path: Path, upstream_url: str, edit: Callable[[str], str] = str,
                   env: dict[str, str] | None = None) -> Config:
    raw = yaml.safe_load(edit(EXAMPLE.read_text(encoding="utf-8")))
    raw["server"]["grpc"]["address"] = "127.0.0.1:0"
    raw["server"]["edge"].update(host="127.0.0.1", port=0)
    raw["server"]["admin"].update(host="127.0.0.1", port=0)
    raw["storage"]["data_dir"] = str(tmp_path / "data")
    payments = raw["integrations"]["payments"]
    assert payments["base_url"].endswith("/v1"), payments["base_url"]
    payments.update(base_url=f"{upstream_url}/v1", allow_insecure_http=True)
    return parse_config(raw, env or {}, source=str(EXAMPLE), base_dir=EXAMPLE.parent)


async def started(stack: AsyncExitStack, config: Config) -> Sidecar:
    """A sidecar on ``config``, stopped when ``stack`` closes."""
    sc = Sidecar(config)
    await sc.start()
    stack.push_async_callback(sc.stop)
    return sc


# ------------------------------------------------------------------------------ running blocks


@dataclass
class Invocation:
    args: list[str]
    stdout: str
    stderr: str
    code: int
    seconds: float

    @property
    def method(self) -> str:
        return self.args[-1].rpartition("/")[2]

    def messages(self) -> list[dict[str, Any]]:
        """The JSON messages printed on stdout, one after the other."""
        decoder, text, out = json.JSONDecoder(), self.stdout, []
        pos = 0
        while text[pos:].strip():
            pos += len(text[pos:]) - len(text[pos:].lstrip())
            value, pos = decoder.raw_decode(text, pos)
            out.append(value)
        return out


class Shell:
    """Runs README blocks with a ``grpcurl`` on PATH that records every invocation."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.log = tmp_path / "grpcurl-log"
        self.bin.mkdir()
        self.log.mkdir()
        wrapper = self.bin / "grpcurl"
        # Records argv, output and exit status per call, then replays the output.
        wrapper.write_text(f"""#!/bin/bash
n=$(( $(ls "$GRPCURL_STANDIN_LOG" | grep -c '\\.code$') + 1 ))
log="$GRPCURL_STANDIN_LOG/$(printf '%03d' "$n")"
printf '%s\\0' "$@" > "$log.args"
start=$(date +%s.%N)
code=0
{shlex.quote(sys.executable)} {shlex.quote(str(STANDIN))} "$@" > "$log.out" 2> "$log.err" || code=$?
echo "$code $(date +%s.%N) $start" > "$log.code"
cat "$log.out"
cat "$log.err" >&2
exit "$code"
""")
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        self.seen = 0

    async def run(self, block: str, target: str) -> list[Invocation]:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", block, cwd=self.log.parent,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}",
                 "GRPCURL_STANDIN_TARGET": target, "GRPCURL_STANDIN_LOG": str(self.log)})
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, (
            f"README block failed (exit {proc.returncode}):\n{block}\n--- stdout\n"
            f"{out.decode()}\n--- stderr\n{err.decode()}")
        calls = []
        for code_file in sorted(self.log.glob("*.code"))[self.seen:]:
            base = code_file.with_suffix("")
            code, end, start = code_file.read_text().split()
            calls.append(Invocation(
                args=base.with_suffix(".args").read_bytes().decode().split("\0")[:-1],
                stdout=base.with_suffix(".out").read_text(),
                stderr=base.with_suffix(".err").read_text(),
                code=int(code), seconds=float(end) - float(start)))
        self.seen += len(calls)
        return calls


def one(calls: list[Invocation], method: str) -> Invocation:
    found = [c for c in calls if c.method == method or c.args[-1:] == [method]]
    assert len(found) == 1, f"expected one grpcurl call of {method}, got {[c.args for c in calls]}"
    return found[0]


def ok(call: Invocation) -> dict[str, Any]:
    assert call.code == 0 and call.stderr == "", (call.args, call.code, call.stderr)
    [message] = call.messages()
    return message


def streamed_until_deadline(call: Invocation) -> list[dict[str, Any]]:
    max_time = float(call.args[call.args.index("-max-time") + 1])
    assert call.code == DEADLINE_EXIT, (call.code, call.stderr)
    assert call.stderr == ("ERROR:\n  Code: DeadlineExceeded\n"
                           "  Message: context deadline exceeded\n"), call.stderr
    # The stream stayed open until the deadline (then ended: the status above).
    assert call.seconds >= max_time - 0.05, call.seconds
    return [m["event"] for m in call.messages() if "event" in m]


def b64json(data: str) -> Any:
    return json.loads(base64.b64decode(data))


# ---------------------------------------------------------------------------------------- tests


def test_every_block_parses_with_bash() -> None:
    require_binary("bash")
    _, blocks = readme_blocks()
    for block in blocks:
        done = subprocess.run(["bash", "-n", "-c", block], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, f"bash -n rejects:\n{block}\n{done.stderr}"


async def test_readme_grpcurl_examples_run_as_written(tmp_path: Path) -> None:
    for tool in ("bash", "openssl", "base64", "jq"):
        require_binary(tool)
    prose, (core, presence, webhooks) = readme_blocks()
    # The edits below are the ones the prose asks for.
    words = " ".join(prose.split())
    for step in ("uncomment `jwt` under `realtime.websocket`",
                 "uncomment `github` under `webhooks.sources`",
                 "drop the `{}` after `sources:`", "GITHUB_WEBHOOK_SECRET=s3cret make run"):
        assert step in words, f"the README no longer says {step!r}: update this test"
    shell = Shell(tmp_path)
    upstream = await Upstream(default=reply(200, json.dumps(CHARGES).encode(),
                                            {"Content-Type": "application/json"})).start()
    async with AsyncExitStack() as outer:
        outer.push_async_callback(upstream.stop)
        # The example config as `make run` loads it.
        async with AsyncExitStack() as stack:
            sc = await started(stack, example_config(tmp_path, upstream.url))
            calls = await shell.run(core, sc.grpc.address)
        check_core(calls, upstream)

        # GetPresence: the /ws edge on, one WebSocket client in alice's room.
        async with AsyncExitStack() as stack:
            sc = await started(stack, example_config(
                tmp_path, upstream.url, lambda text: uncomment(text, "jwt"),
                {"SIDECAR_JWT_SECRET": JWT_SECRET}))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            token = jwt.encode({"sub": "alice", "aud": "my-app", "exp": int(time.time()) + 60},
                               JWT_SECRET, algorithm="HS256")
            ws = await session.ws_connect(f"http://{sc.edge.address}/ws",
                                          headers={"Authorization": f"Bearer {token}"})
            await joined(ws, {"user:alice", "broadcast"})
            calls = await shell.run(presence, sc.grpc.address)
            await ws.close()
        assert ok(one(calls, "GetPresence")) == {"topic": "user:alice", "connections": 1,
                                                 "users": 1}

        # Webhooks: the github source uncommented, its secret in the environment.
        def github_on(text: str) -> str:
            return uncomment(text, "github").replace("  sources: {}\n", "  sources:\n", 1)

        async with AsyncExitStack() as stack:
            sc = await started(stack, example_config(tmp_path, upstream.url, github_on,
                                                     {"GITHUB_WEBHOOK_SECRET": "s3cret"}))
            calls = await shell.run(webhooks, sc.grpc.address)
            check_webhooks(calls)
            await nothing_left(sc, "orders", "webhooks.github")


async def nothing_left(sc: Sidecar, group: str, topic: str) -> None:
    """The group has nothing to deliver: the ack really settled the event."""
    async with grpc.aio.insecure_channel(sc.grpc.address) as channel:
        stream = pb_grpc.SidecarServiceStub(channel).Subscribe(
            pb.SubscribeRequest(topics=[topic], group=group), timeout=0.5)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for message in stream:
                assert not message.HasField("event"), message
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def joined(ws: aiohttp.ClientWebSocketResponse, rooms: set[str]) -> None:
    got: set[str] = set()
    while got != rooms:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if frame.get("control") == "subscribed":
            got.add(frame["topic"])


def check_core(calls: list[Invocation], upstream: Upstream) -> None:
    listed = ok_lines(one(calls, "list"))
    assert listed == ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                      SERVICE]
    described = one(calls, SERVICE)
    assert described.code == 0, described.stderr
    assert described.stdout.startswith(f"{SERVICE} is a service:\nservice SidecarService {{\n")
    for method, request, response in [
            ("Ack", "AckRequest", "AckResponse"), ("Call", "CallRequest", "CallResponse"),
            ("GetPresence", "GetPresenceRequest", "GetPresenceResponse"),
            ("Publish", "PublishRequest", "PublishResponse"),
            ("Subscribe", "SubscribeRequest", "stream .integration_sidecar.v1.SubscribeResponse"),
            ("VerifyWebhook", "VerifyWebhookRequest", "VerifyWebhookResponse")]:
        returns = response if response.startswith("stream") else \
            f".integration_sidecar.v1.{response}"
        assert (f"  rpc {method} ( .integration_sidecar.v1.{request} ) returns ( {returns} );"
                in described.stdout), (method, described.stdout)

    assert ok(one(calls, "Check")) == {"status": "SERVING"}

    called = ok(one(calls, "Call"))
    assert called["status"] == 200 and called["attempts"] == 1, called
    assert b64json(called["body"]) == CHARGES
    [seen] = upstream.seen
    assert (seen.method, seen.path, seen.query) == ("GET", "/v1/charges", "limit=3")
    assert seen.headers["Api-Version"] == "2024-06-01"
    assert seen.headers["Accept"] == "application/json"

    published = ok(one(calls, "Publish"))
    assert published["eventId"] and int(published["offset"]) >= 1, published
    [event] = streamed_until_deadline(one(calls, "Subscribe"))
    assert event["id"] == published["eventId"]
    assert (event["topic"], event["type"]) == ("user:alice", "order.shipped")
    assert b64json(event["data"]) == {"id": 1}


def ok_lines(call: Invocation) -> list[str]:
    assert call.code == 0 and call.stderr == "", (call.code, call.stderr)
    return call.stdout.splitlines()


def check_webhooks(calls: list[Invocation]) -> None:
    verdict = ok(one(calls, "VerifyWebhook"))
    assert verdict["result"] == "VERIFY_RESULT_VALID", verdict
    assert verdict["recorded"] is True and verdict["eventId"] == "d-1", verdict
    assert verdict["eventType"] == "ping"
    [event] = streamed_until_deadline(one(calls, "Subscribe"))
    assert event["topic"] == "webhooks.github"
    assert base64.b64decode(event["data"]) == GITHUB_BODY
    assert event["attributes"]["provider_event_id"] == "d-1"
    ack = one(calls, "Ack")
    request = json.loads(ack.args[ack.args.index("-d") + 1])
    assert request["event_ids"] == [event["id"]], "Ack must name the event the stream printed"
    assert ok(ack) == {"settled": 1}


async def standin(target: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(STANDIN), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GRPCURL_STANDIN_TARGET": target})
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_standin_sends_headers_and_reports_errors_like_grpcurl(tmp_path: Path) -> None:
    """-H reaches reflection and the call; failures print and exit as grpcurl's do."""
    token = "readme-api-token-0123456789"
    config = make_config(tmp_path, {"server": {"grpc": {"api_token_env": "SIDECAR_API_TOKEN"}}},
                         env={"SIDECAR_API_TOKEN": token})
    auth = f"authorization: Bearer {token}"
    presence = f"{SERVICE}/GetPresence"
    async with AsyncExitStack() as stack:
        sc = await started(stack, config)
        addr = sc.grpc.address
        code, _, err = await standin(addr, "-plaintext", "localhost:50051", "list")
        assert (code, err.split(" desc = ")[0]) == (
            1, "Failed to list services: rpc error: code = Unauthenticated"), err
        code, out, err = await standin(addr, "-plaintext", "-H", auth, "localhost:50051", "list")
        assert code == 0 and SERVICE in out.splitlines(), (code, err)
        # Not configured: UNIMPLEMENTED (64 + 12) with the google.rpc details.
        code, out, err = await standin(addr, "-plaintext", "-H", auth, "-d",
                                       '{"topic": "user:alice"}', "localhost:50051", presence)
        assert (code, out) == (76, "")
        head, _, details = err.partition("  Details:\n")
        assert head.startswith("ERROR:\n  Code: Unimplemented\n  Message: GetPresence is not "
                               "implemented"), err
        assert details.startswith('  1)\t{\n    \t  "@type": "type.googleapis.com/google.rpc.'
                                  'ErrorInfo",\n'), err
        assert '"reason": "NOT_IMPLEMENTED"' in details, err
        # Unknown request fields are refused before anything is sent, as grpcurl does.
        code, out, err = await standin(addr, "-plaintext", "-H", auth, "-d", '{"topik": "x"}',
                                       "localhost:50051", presence)
        assert code == 1 and err.startswith(
            f'Error invoking method "{presence}": error getting request data: '), err
        code, _, err = await standin(addr, "-plaintext", "-H", auth, "localhost:50051",
                                     "no.such.Service/Method")
        assert (code, err) == (1, 'Error invoking method "no.such.Service/Method": target '
                                  'server does not expose service "no.such.Service"\n')
        code, _, err = await standin(addr, "-plaintext", "localhost:50051")
        assert code == 2 and err.startswith("Too few arguments.\n"), err


async def test_standin_verifies_tls_with_cacert_and_reads_data_from_stdin(
        tmp_path: Path) -> None:
    require_binary("openssl")
    pki = make_pki(tmp_path / "pki")
    config = make_config(tmp_path, {"server": {"grpc": {"tls": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}}}})
    check = ["localhost:50051", "grpc.health.v1.Health/Check"]
    async with AsyncExitStack() as stack:
        sc = await started(stack, config)
        code, out, err = await standin(sc.grpc.address, "-cacert", str(pki.ca_cert), "-d", "@",
                                       *check, stdin=b'{"service": "readiness"}')
        assert (code, json.loads(out)) == (0, {"status": "SERVING"}), err
        # Without the CA the server's certificate is not trusted: no connection.
        code, out, err = await standin(sc.grpc.address, "-connect-timeout", "0.5", *check)
        assert (code, out) == (1, ""), err
        assert err.startswith('Failed to dial target host "localhost:50051"'), err

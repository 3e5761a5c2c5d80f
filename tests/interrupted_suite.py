"""A one-test suite for ``test_process_reaping.py`` to run in a child pytest and then
interrupt: its fixtures start the suite's real processes (a sidecar process, a private
``redis-server``, Node.js running a sidecar through the Node client's test support,
and Chromium through Playwright); the test writes every pid as one JSON line to the
file descriptor named by ``READY_FD`` (a pipe no grandchild inherits, unlike stdout) and
waits until pytest is stopped. Not collected by the suite (no ``test_`` prefix).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from tests.clients.conftest import (
    SidecarProcess,
    sidecar_process,  # noqa: F401 - a fixture
)
from tests.redis_support import redis_url  # noqa: F401 - a fixture
from tests.system_tools import CHROMIUM_ARGS, chromium_path, require_binary

ROOT = Path(__file__).resolve().parent.parent
READY_FD = "REAPING_TEST_READY_FD"
#: Seconds any one process may take to start.
START = 60.0

# Starts a sidecar the way the Node client's tests do, then stays up until stopped.
NODE_SCRIPT = """
const { SidecarProcess } = require(process.argv[1]);
const sidecar = new SidecarProcess();
sidecar.start().then(() => {
  console.log(JSON.stringify({ node: process.pid, node_sidecar: sidecar.child.pid }));
  setInterval(() => {}, 1 << 30);
}, (err) => { console.error(err); process.exit(1); });
"""


@pytest.fixture
async def node_with_sidecar() -> AsyncIterator[dict[str, int]]:
    node = require_binary("node")
    support = ROOT / "clients" / "node" / "test" / "support" / "sidecar.js"
    proc = await asyncio.create_subprocess_exec(
        node, "-e", NODE_SCRIPT, str(support), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START)
        assert line, "node exited before its sidecar was ready"
        yield json.loads(line)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@pytest.fixture
async def chromium() -> AsyncIterator[list[int]]:
    """A headless Chromium; yields the pids of its processes (browser, GPU, renderer...)."""
    executable = chromium_path()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto("about:blank")
            cdp = await browser.new_browser_cdp_session()
            info: dict[str, Any] = await cdp.send("SystemInfo.getProcessInfo")
            yield [int(p["id"]) for p in info["processInfo"]]
        finally:
            await browser.close()


async def test_waits_until_interrupted(
        sidecar_process: SidecarProcess,  # noqa: F811 - the imported fixture
        redis_url: str,  # noqa: F811 - the imported fixture
        node_with_sidecar: dict[str, int], chromium: list[int]) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        redis_pid = int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()
    assert sidecar_process.proc is not None
    pids = {"sidecar": [sidecar_process.proc.pid], "redis-server": [redis_pid],
            "node": [node_with_sidecar["node"]],
            "node's sidecar": [node_with_sidecar["node_sidecar"]], "chromium": chromium}
    os.write(int(os.environ[READY_FD]), json.dumps(pids).encode() + b"\n")
    await asyncio.Event().wait()

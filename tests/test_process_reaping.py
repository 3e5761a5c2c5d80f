"""However pytest is stopped, no process it started survives it (tests/process_reaper.py).

A child pytest runs ``tests/interrupted_suite.py``, whose fixtures start the suite's
real processes: a sidecar process, a redis-server, Node.js running a sidecar of its
own, and Chromium. Once they are all up (the child says so), the child gets SIGINT,
SIGTERM or SIGKILL; then not one process of its tree may be left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.interrupted_suite import READY_FD
from tests.process_reaper import alive, descendants, stop
from tests.redis_support import require
from tests.system_tools import chromium_path, require_binary

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "interrupted_suite.py"
#: Seconds the child may take to start its processes, and to exit once signalled.
START = 90.0
EXIT = 60.0
#: Seconds the watchdog may take to stop what a SIGKILLed pytest left.
WATCHDOG = 20.0

pytestmark = pytest.mark.slow


async def _gone(pids: set[int], timeout: float) -> None:
    """Wait until every one of ``pids`` has exited (or ``timeout``): pidfds, which work
    for processes that are not our children."""
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fd = os.pidfd_open(pid)
            fds.append(fd)
            done: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _resolve, done)
            waits.append(done)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _argv(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
async def test_no_process_outlives_a_stopped_pytest(sig: int, tmp_path: Path) -> None:
    require_binary("node")
    chromium_path()
    if shutil.which("redis-server") is None:
        require()
    log = tmp_path / "child.log"
    ready_r, ready_w = os.pipe()
    # Output to a file: a survivor holding a pipe would keep asyncio's wait() waiting.
    with log.open("wb") as out:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pytest", str(SUITE), "-q", "-p", "no:cacheprovider",
            f"--basetemp={tmp_path / 'child'}", cwd=ROOT, pass_fds=(ready_w,),
            env={**{k: v for k, v in os.environ.items() if k != "REDIS_URL"},  # own redis
                 READY_FD: str(ready_w)},
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
    os.close(ready_w)
    loop = asyncio.get_running_loop()
    ready = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(ready), os.fdopen(ready_r, "rb"))
    tree: set[int] = set()
    try:
        line = await asyncio.wait_for(ready.readline(), START)
        assert line, f"the child pytest ended before its processes were up:\n{log.read_text()}"
        started: dict[str, list[int]] = json.loads(line)
        tree = descendants(child.pid)
        # Every process the fixtures started is in the tree watched below.
        assert {pid for pids in started.values() for pid in pids} <= tree, (started, tree)
        child.send_signal(sig)
        code = await asyncio.wait_for(child.wait(), EXIT)
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
            await _gone(tree, WATCHDOG)  # nothing in pytest ran: its watchdog stops them
        survivors = {pid: _argv(pid) for pid in tree if alive(pid)}
        assert not survivors, (f"{len(survivors)} of {len(tree)} processes survived "
                               f"{signal.Signals(sig).name}: {survivors}\n{log.read_text()}")
        if sig != signal.SIGKILL:
            # pytest's own interrupted path: its finalizers ran, then its sweep
            assert code == pytest.ExitCode.INTERRUPTED, log.read_text()
            assert f"KeyboardInterrupt: {signal.Signals(sig).name}" in log.read_text()
    finally:
        transport.close()
        if child.returncode is None:
            child.kill()
            await child.wait()
        stop({pid for pid in tree if alive(pid)})

"""A test stuck in an ``await`` fails with where it waits, unwinds before its fixtures
stop what they started, and the run goes on (tests/async_timeouts.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HUNG = '''
import asyncio
import contextlib

import pytest


@pytest.fixture
async def child():
    proc = await asyncio.create_subprocess_exec("sleep", "600")
    yield proc
    proc.kill()
    print(f"fixture stopped {proc.pid}: exit {await proc.wait()}")


async def stuck():
    await asyncio.Event().wait()


async def test_stuck_in_an_await(child):
    print(f"child {child.pid}")
    try:
        await stuck()
    finally:
        print("test unwound")


async def test_swallows_the_cancellation():
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(600)


def test_after_them():
    pass
'''


async def test_a_stuck_await_fails_with_its_await_chain_and_the_run_goes_on(
        tmp_path: Path) -> None:
    module = tmp_path / "test_hung.py"
    module.write_text(HUNG)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", str(module), "-s", "-p", "no:cacheprovider",
        "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
        "-p", "tests.async_timeouts", "-o", "timeout=1", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 1, out
    assert "2 failed, 1 passed" in out, out
    failures = out[out.index("= FAILURES ="):out.index("= short test summary info =")]
    stuck, swallowed = failures.split("_ test_swallows_the_cancellation _")
    timeout = "Timeout (>1s) from pytest-timeout: cancelled while awaiting\n"
    assert timeout in stuck and timeout in swallowed, out
    # The whole chain, down to the line that waits.
    assert "in test_stuck_in_an_await\n    await stuck()\n" in stuck, out
    assert "in stuck\n    await asyncio.Event().wait()\n" in stuck, out
    # The test unwound first, then its fixture stopped the process it started.
    child = out.split("child ", 1)[1].split()[0]
    assert out.index("test unwound") < out.index(f"fixture stopped {child}: exit -9"), out

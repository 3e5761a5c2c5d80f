"""pytest-timeout's signal method, taught to end a hung ``await`` (a pytest plugin).

Raised from the SIGALRM handler, pytest-timeout's failure lands in the event loop's
``select()``: the report points there, and the test's own ``finally`` blocks run only
when the loop closes, after its fixtures are gone. Here a test (or async fixture set-up)
waiting in the loop is cancelled instead: it unwinds in order, and fails with the
``await`` chain it was stuck in, even if it swallowed the cancellation. Code blocked
outside the loop, a task that does not unwind within ``UNWIND_GRACE`` seconds, and
teardown get pytest-timeout's own exception where they are. pytest-timeout stops its
timer at a test's first failure; here teardown then gets a fresh budget, so a fixture
that cannot stop what it started does not hang the suite either.
"""

from __future__ import annotations

import asyncio
import gc
import linecache
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import pytest_timeout  # type: ignore[import-untyped]

#: Seconds a cancelled test has to unwind before it is interrupted wherever it is.
UNWIND_GRACE = 10.0


class AwaitTimeout:
    """The SIGALRM timer of one test item."""

    def __init__(self, item: pytest.Item, timeout: float,
                 disable_debugger_detection: bool) -> None:
        self.item = item
        self.timeout = timeout
        self.disable_debugger_detection = disable_debugger_detection
        self.phase = "setup"
        self.cancelled: str | None = None  # the await chain of the task cancelled
        self.expired = False
        self.armed = False

    def arm(self, seconds: float) -> None:
        signal.signal(signal.SIGALRM, self.on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        self.armed = True

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        self.armed = False

    def on_alarm(self, signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True
        if not self.disable_debugger_detection and pytest_timeout.is_debugging():
            return
        self.expired = True
        task = _waiting_task(frame)
        waiting = _await_chain(task, self.item.config.rootpath) if task else ""
        if task is not None and self.phase != "teardown" and self.cancelled is None:
            self.cancelled = waiting
            task.cancel(f"timeout after {self.timeout:g} s")
            # The signal only interrupted select(), which resumes its wait: wake it.
            task.get_loop().call_soon_threadsafe(lambda: None)
            self.arm(UNWIND_GRACE)
            return
        self.arm(self.timeout)  # whatever runs after this (teardown) is bounded too
        if self.phase != "teardown" and self.cancelled is not None:
            pytest.fail(f"{self.message()}\nand it did not unwind within {UNWIND_GRACE:g} s "
                        "of being cancelled", pytrace=False)
        title = f"Timeout (>{self.timeout:g}s) from pytest-timeout"
        if self.phase == "teardown":
            title += " in teardown"
        if waiting:
            pytest.fail(f"{title}, awaiting\n{waiting}", pytrace=False)
        terminal = self.item.config.get_terminal_writer()
        terminal.sep("+", title="Timeout")
        pytest_timeout.dump_stacks(terminal)
        pytest.fail(f"{title}.")

    def message(self) -> str:
        return (f"Timeout (>{self.timeout:g}s) from pytest-timeout: cancelled while "
                f"awaiting\n{self.cancelled}")


def _waiting_task(frame: FrameType | None) -> asyncio.Task[Any] | None:
    """The task the event loop on this stack is running for, if the loop is waiting
    (no task step in progress): found in ``run_until_complete``'s frame, the only
    place that knows it whichever runner called it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if asyncio.current_task(loop) is not None:
        return None  # a step is running: blocked outside the loop's control
    code = asyncio.BaseEventLoop.run_until_complete.__code__
    while frame is not None:
        if frame.f_code is code:
            task = frame.f_locals.get("future")
            return task if isinstance(task, asyncio.Task) and not task.done() else None
        frame = frame.f_back
    return None


def _await_chain(task: asyncio.Task[Any], root: Path) -> str:
    """Where ``task`` waits: each coroutine (or async generator) down its ``await`` chain."""
    lines = []
    awaited: Any = task.get_coro()
    for _ in range(100):
        frame = (getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
                 or getattr(awaited, "gi_frame", None))
        if frame is None:
            # An async generator's asend() hides the generator from Python, not from
            # the collector. Anything else is the future the line above awaits.
            inner = [o for o in gc.get_referents(awaited) if hasattr(o, "ag_frame")]
            if not inner:
                break
            awaited = inner[0]
            continue
        path = Path(frame.f_code.co_filename)
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        lines.append(f"  {shown}:{frame.f_lineno} in {frame.f_code.co_name}")
        source = linecache.getline(str(path), frame.f_lineno).strip()
        if source:
            lines.append(f"    {source}")
        awaited = (getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
                   or getattr(awaited, "gi_yieldfrom", None))
        if awaited is None:
            break
    return "\n".join(lines)


_TIMER = pytest.StashKey[AwaitTimeout]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own implementation
    timer = AwaitTimeout(item, settings.timeout, settings.disable_debugger_detection)
    item.stash[_TIMER] = timer
    timer.arm(settings.timeout)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    """At the end of the item, and (pytest-timeout's choice, for pdb) as soon as a phase
    fails: the timer stays in the stash, so teardown can be bounded again."""
    timer = item.stash.get(_TIMER, None)
    if timer is None:
        return None
    timer.disarm()
    return True


def _phase(item: pytest.Item, phase: str) -> Generator[None, None, None]:
    """Around one phase: a cancelled task fails with where it waited (even if it
    swallowed the cancellation); teardown after a failure or a timeout gets a fresh
    budget (pytest-timeout would leave it unbounded)."""
    timer = item.stash.get(_TIMER, None)
    if timer is None:
        yield
        return
    timer.phase = phase
    if phase == "teardown" and (timer.expired or not timer.armed):
        timer.arm(timer.timeout)
    try:
        yield
    except asyncio.CancelledError:
        if timer.cancelled is None or phase == "teardown":
            raise
    if timer.cancelled is not None and phase != "teardown":
        pytest.fail(timer.message(), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    yield from _phase(item, "setup")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield from _phase(item, "call")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield from _phase(item, "teardown")

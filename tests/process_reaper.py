"""No process the suite starts outlives it, however pytest ends (a pytest plugin).

Fixtures stop what they start, but only if their finalizers run: SIGTERM ended pytest
on the spot, and Ctrl-C only cancelled the awaited task, which a hung test could
swallow. So, on Linux:

- pytest is a child subreaper: orphaned grandchildren (Chromium's helpers, the sidecar
  of a killed Node.js process) are re-parented to it instead of to init, so they stay
  its descendants;
- SIGINT and SIGTERM raise KeyboardInterrupt (in a waiting event loop: from its next
  callback, where no task can swallow it), pytest's interrupted path, on which every
  fixture finalizer runs; a second signal, or ``INTERRUPT_GRACE`` seconds without an
  exit, stops every descendant and exits at once;
- after the session (naming what was left), on that hard path and at exit, every
  descendant still running gets SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds;
- if pytest itself is SIGKILLed nothing in it runs, so every process started under it
  inherits this run's token in ``RUN_TOKENS`` and a watchdog process stops those (and
  their children) once pytest is gone; ``die_with_parent`` covers the programs that
  overwrite their environment (redis-server).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import NoReturn

import pytest

#: Seconds a process has to exit after SIGTERM before it gets SIGKILL.
STOP_GRACE = 1.0
#: Seconds the interrupted path (fixture finalizers) may take before the hard exit.
INTERRUPT_GRACE = 30.0
#: Environment variable every descendant inherits: the tokens of the runs above it.
RUN_TOKENS = "SIDECAR_TEST_RUN_TOKENS"

LINUX = sys.platform.startswith("linux")
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
ROOT = Path(__file__).resolve().parent.parent


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name is in parentheses and may hold anything: split after the last.
    state, ppid = raw[raw.rindex(b")") + 2:].split()[:2]
    return int(ppid), state.decode()


def _alive() -> dict[int, int]:
    """Every running (not zombie) process: pid -> parent pid."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[1] != "Z":
            out[int(entry)] = st[0]
    return out


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z"


def descendants(*roots: int) -> set[int]:
    """Running processes whose chain of parents leads to one of ``roots``."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _alive().items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def tagged(token: str) -> set[int]:
    """Running processes whose environment carries ``token`` in ``RUN_TOKENS``."""
    marker = f"{RUN_TOKENS}=".encode()
    found = set()
    for pid in _alive():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        for var in environ.split(b"\0"):
            if var.startswith(marker) and token.encode() in var[len(marker):].split(b":"):
                found.add(pid)
    return found


def stop(pids: Iterable[int], grace: float = STOP_GRACE) -> set[int]:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; returns the pids that were
    running. Waits on pidfds: works for processes that are not our children, and never
    signals a recycled pid."""
    fds: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fds[os.pidfd_open(pid)] = pid
    try:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            poller = select.poll()
            pending = set(fds)
            for fd in fds:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, sig)
                poller.register(fd, select.POLLIN)
            deadline = time.monotonic() + wait
            while pending and (left := deadline - time.monotonic()) > 0:
                for fd, _ in poller.poll(left * 1000):
                    pending.discard(fd)
                    poller.unregister(fd)
            if not pending:
                break
        return set(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the kernel SIGKILLs the child when the thread that
    started it ends, even by SIGKILL. That is the *thread*, so None off the main thread
    (and off Linux): a worker thread's end would kill the child early."""
    if not LINUX or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)

    return preexec


def _describe(pids: Iterable[int]) -> str:
    lines = []
    for pid in sorted(pids):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            argv = "?"
        lines.append(f"  {pid} {argv[:160].strip()}")
    return "\n".join(lines)


class ProcessReaper:
    """One pytest run: its token, its watchdog, the signals it got."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.token = f"{self.pid}-{secrets.token_hex(4)}"
        self.signals = 0
        self.watchdog: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        inherited = os.environ.get(RUN_TOKENS)
        os.environ[RUN_TOKENS] = f"{inherited}:{self.token}" if inherited else self.token
        # Its own session: a Ctrl-C in the terminal reaches pytest, not the watchdog.
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", __name__, self.token], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, start_new_session=True)
        self.install_handlers()
        atexit.register(self.sweep)

    def install_handlers(self) -> None:
        """(Again, if a test replaced them: asyncio's remove_signal_handler resets a
        signal to its default.)"""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) != self.on_signal:
                signal.signal(sig, self.on_signal)

    def stop_watchdog(self) -> None:
        """Close its stdin: it looks for leftovers once more, then exits."""
        if self.watchdog is not None and self.watchdog.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(timeout=5)

    def leftovers(self) -> set[int]:
        own = {self.pid} | ({self.watchdog.pid} if self.watchdog else set())
        return (descendants(self.pid) | tagged(self.token)) - own

    def sweep(self) -> set[int]:
        """Stop every descendant still running; returns the ones that were."""
        if os.getpid() != self.pid:  # a forked child inherited the atexit hook
            return set()
        stopped: set[int] = set()
        for _ in range(3):  # a dying parent may still start a child: look again
            found = self.leftovers()
            if not found:
                break
            stopped |= stop(found)
        return stopped

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a forked child: die as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals > 1:
            self.hard_exit(signum, f"{name} again")
        timer = threading.Timer(INTERRUPT_GRACE, self.hard_exit,
                                (signum, f"no exit {INTERRUPT_GRACE:g} s after {name}"))
        timer.daemon = True
        timer.start()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise KeyboardInterrupt(name) from None
        if asyncio.current_task(loop) is not None:
            raise KeyboardInterrupt(name)
        # The loop is between callbacks (most likely waiting in select): raising here
        # could leave it half-way through its bookkeeping. Its next callback is a safe
        # point, and no task can catch what is raised there.
        loop.call_soon_threadsafe(_raise_keyboard_interrupt, name)

    def hard_exit(self, signum: int, why: str) -> NoReturn:
        stopped = self.sweep()
        self.stop_watchdog()
        sys.stderr.write(f"\nprocess_reaper: {why}: stopped {len(stopped)} processes, "
                         "exiting now\n")
        sys.stderr.flush()
        os._exit(128 + signum)


def _raise_keyboard_interrupt(name: str) -> None:
    raise KeyboardInterrupt(name)


_REAPER = pytest.StashKey[ProcessReaper]()


def pytest_configure(config: pytest.Config) -> None:
    if LINUX:
        reaper = ProcessReaper()
        reaper.start()
        config.stash[_REAPER] = reaper


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if (reaper := item.config.stash.get(_REAPER, None)) is not None:
        reaper.install_handlers()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After every fixture's teardown, anything still running is a leak: say what."""
    reaper = session.config.stash.get(_REAPER, None)
    if reaper is None or not (leftovers := reaper.leftovers()):
        return
    message = (f"process_reaper: stopped {len(leftovers)} processes left running after "
               f"the tests:\n{_describe(leftovers)}")
    reaper.sweep()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, yellow=True)
    else:
        sys.stderr.write(message + "\n")


def pytest_unconfigure(config: pytest.Config) -> None:
    reaper = config.stash.get(_REAPER, None)
    if reaper is not None:
        reaper.sweep()
        reaper.stop_watchdog()


def watch(token: str) -> None:
    """The watchdog: wait for the run to end (our stdin closes however pytest ended),
    then stop every process that carries its token, and their children."""
    sys.stdin.buffer.read()
    found = tagged(token)
    stopped = stop((found | descendants(*found)) - {os.getpid()})
    if stopped:
        sys.stderr.write(f"process_reaper watchdog: the test run is gone; stopped "
                         f"{len(stopped)} processes it left\n")


if __name__ == "__main__":
    watch(sys.argv[1])

"""Child processes for the benchmark: start, wait until ready, measure, stop.

Every child's stdout and stderr are drained by a thread (so a chatty child can
never block on a full pipe) and the last lines are kept for error reports.
On Linux each child also gets SIGTERM if the benchmark process dies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env() -> dict[str, str]:
    """This environment minus SIDECAR_* overrides, with the repo on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'generated'}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A port that was free a moment ago (for listeners that cannot report theirs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_cpu(path: str) -> float:
    stat = Path(path).read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def self_cpu_seconds() -> float:
    """User + system CPU time of this process (every thread) so far."""
    return _stat_cpu("/proc/self/stat")


def machine_busy_seconds() -> float:
    """CPU time every CPU of the machine spent not idle so far (all processes)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


async def until_at_rest(*children: Child, quiet: float = 0.2, timeout: float = 5.0) -> None:
    """Until none of ``children`` has used CPU for ``quiet`` seconds (at most ``timeout``):
    a memory reading then sees servers at rest, not finishing their set-up."""
    deadline = time.monotonic() + timeout
    last = [c.cpu_seconds() for c in children]
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = [c.cpu_seconds() for c in children]
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return


class ChildError(RuntimeError):
    pass


class Child:
    """One child process whose output is drained and remembered."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.line_count = 0
        self.announced: dict[str, Any] | None = None
        self._announced = threading.Event()
        self.proc = subprocess.Popen(  # fixed argv built by the benchmark
            self.argv, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        self._thread = threading.Thread(target=self._drain, name=f"drain-{name}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self.line_count += 1
            if self.announced is None and line.startswith("{"):
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict) and obj.get("ready"):
                        self.announced = obj
                        self._announced.set()
        self._announced.set()  # EOF: wake any waiter

    def tail(self, n: int = 20) -> str:
        return "\n".join(list(self.lines)[-n:])

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise ChildError(f"{self.name} exited with code {code}; its last output:\n"
                             f"{self.tail()}")

    async def wait_announced(self, timeout: float) -> dict[str, Any]:
        """Wait for the child's ``{"ready": true, ...}`` line."""
        deadline = time.monotonic() + timeout
        while not self._announced.is_set():
            if time.monotonic() > deadline:
                raise ChildError(f"{self.name} did not start within {timeout:g}s; its output:\n"
                                 f"{self.tail()}")
            await asyncio.sleep(0.02)
        if self.announced is None:
            self.check_alive()
            raise ChildError(f"{self.name} closed its output without starting:\n{self.tail()}")
        return self.announced

    # ------------------------------------------------------------------ /proc

    def _status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise ChildError(f"no {field} in /proc/{self.pid}/status")

    def rss_mb(self) -> float:
        """Resident set size now (VmRSS), in MiB."""
        return self._status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """Highest resident set size so far (VmHWM), in MiB."""
        return self._status_kb("VmHWM") / 1024

    def private_rss_mb(self) -> float:
        """Anonymous (not file-backed, not shared) resident memory (RssAnon), in MiB."""
        return self._status_kb("RssAnon") / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time of every thread of the process so far."""
        return _stat_cpu(f"/proc/{self.pid}/stat")

    # ------------------------------------------------------------------ stopping

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code (None if killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._thread.join(1.0)
                return None
        self._thread.join(1.0)
        return self.proc.returncode

"""examples/orders end to end: run_demo.py starts a sidecar process, the fake
gateway and the orders service, runs the whole flow (Call with an idempotency key,
a signed webhook through a durable group, Publish to the buyer's room) and checks
that a headless Chromium page shows the order paid, live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system_tools import CHROMIUM_ARGS, chromium_path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "orders" / "run_demo.py"

STEPS = [
    "sidecar ready",
    "fake gateway on",
    "order ord_",
    "page open: status 'created', badge 'live'",
    "paid through Call: charge ch_",
    "paying the same order again replays the stored answer",
    "gateway sent webhook evt_",
    "through durable group 'orders' (1 delivery) and acked it: completed",
    "service published order:status_changed to user:u_ada: created -> payment_pending -> paid",
    "page shows 'paid' live (created -> payment_pending -> paid), badge 'live'",
    "sidecar stopped cleanly on SIGTERM (exit 0)",
]


def run_demo(*args: str, limit: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the demo in its own session: on a hang, the sidecar it started goes down
    with it; when it ends, nothing it started may be left running."""
    proc = subprocess.Popen([sys.executable, str(DEMO), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the demo hung:\n{out}")
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # the sidecar process is gone too
    return proc.returncode, out


@pytest.mark.slow
def test_orders_demo_passes_every_step_and_the_page_shows_paid() -> None:
    chromium = chromium_path()
    code, out = run_demo("--browser", chromium,
                         *(f"--browser-arg={arg}" for arg in CHROMIUM_ARGS),
                         "--timeout", "45", limit=60)
    assert code == 0, out
    lines = out.splitlines()
    step_lines = [line for line in lines if line.startswith("ok    ")]
    assert len(step_lines) == len(STEPS), out
    for line, expected in zip(step_lines, STEPS, strict=True):
        assert expected in line, (expected, out)
    assert lines[-1] == "all steps passed"


@pytest.mark.slow
def test_a_failed_step_exits_nonzero_with_the_sidecars_log() -> None:
    # A configuration error: the sidecar exits 2 at start-up and the first step fails.
    code, out = run_demo("--timeout", "30", limit=40, env={"SIDECAR_LOG_LEVEL": "loud"})
    assert code == 1, out
    lines = out.splitlines()
    assert lines[0] == "FAIL  the sidecar exited with 2", out
    assert lines[1] == "--- sidecar log (last lines) ---"
    assert any("SIDECAR_LOG_LEVEL" in line for line in lines[2:]), out

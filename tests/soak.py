"""Repetition as a tool: rerun the stream, shutdown, replica and client tests N times.

``make soak SOAK=20`` (``python -m tests.soak --runs 20``) runs the set below N times,
each run a fresh pytest process and fresh ``node --test`` processes, exactly like CI,
and prints every test's pass rate. Anything below N/N is a bug to find, in the product
or in the test, never a reason for a retry decorator. A process that hangs is killed
with its whole process group at ``--run-timeout``; the tests it had not finished count as
failures of that run.

Loaded into pytest with ``-p tests.soak``, this module is also the plugin that streams
each test's outcome to a file as it finishes: pytest writes ``--junitxml`` only at the
end of a session, and a killed session must still say which tests had finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parent.parent

# The tests where races live: live and durable streams (gRPC, WebSocket, the live
# fan-out core, webhook delivery, publish durability), shutdown and process lifecycle
# (SIGTERM, SIGKILL and restart, reload of a real process, reaping), replicas on Redis
# (shared server, Sentinel failover, Cluster) and the Python and browser clients.
# Globs, so shutdown and reaping tests added later are included without an edit here.
PYTEST_SET = (
    "tests/contract/test_live_subscribed.py",
    "tests/contract/test_redis_specific.py",
    "tests/contract/test_sentinel_failover.py",
    "tests/core/test_live_*.py",
    "tests/test_realtime_grpc.py",
    "tests/test_websocket.py",
    "tests/test_webhook_delivery.py",
    "tests/test_webhooks_crash.py",
    "tests/test_publish_durability.py",
    "tests/test_lifecycle.py",
    "tests/test_shutdown*.py",
    "tests/test_*reap*.py",
    "tests/test_reload_process.py",
    "tests/test_replicas.py",
    "tests/test_replicas_redis_cluster.py",
    "tests/test_fanout_properties.py",
    "tests/core/test_feed_*.py",
    "tests/test_queued_calls*.py",
    "tests/contract/test_queue_*.py",
    "tests/clients",
)
# And the whole Node.js client suite, one `node --test` process per file, so each
# test is known by its file (Node 20's JUnit reporter does not name the file).
NODE_DIR = ROOT / "clients" / "node"
NODE_TESTS = "test/*.test.js"
NODE_TEST_TIMEOUT_MS = 120_000  # as `npm test` in clients/node/package.json

# A run's pytest takes 2-3 minutes on two busy cores, each node file seconds: a process
# still running after this hangs.
DEFAULT_TIMEOUT = 900.0
# A process of a run's group still alive this long after its leader exited was not
# reaped by the tests: a bug of its own, reported, then killed.
LEFTOVER_GRACE = 2.0
EVENTS_ENV = "SOAK_EVENTS"  # where the plugin streams outcomes

Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Outcome:
    """One test in one run; ``message`` is the first line of why it failed or skipped."""

    status: Status
    message: str = ""


@dataclass
class UnitRun:
    """What one process (pytest, or node on one file) reported in one run.

    ``note`` says why tests may be missing (e.g. the process was killed): a test the
    same unit reported in another run but not in this one did not finish.
    """

    outcomes: dict[str, Outcome]
    note: str = ""


@dataclass
class Tally:
    """One test across all runs."""

    runs: int = 0
    passed: int = 0
    skipped: int = 0
    failures: dict[str, list[int]] = field(default_factory=dict)  # message -> run numbers

    @property
    def perfect(self) -> bool:
        return self.passed == self.runs


def first_line(text: str | None, limit: int = 200) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


# --- JUnit XML (pytest's --junitxml, node's junit reporter) --------------------------


def _outcome(case: ET.Element) -> Outcome:
    for bad in (*case.iter("failure"), *case.iter("error")):
        return Outcome("failed", first_line(bad.get("message")) or first_line(bad.text)
                       or bad.tag)
    skipped = case.find("skipped")
    if skipped is not None:
        return Outcome("skipped", first_line(skipped.get("message")) or first_line(skipped.text))
    return Outcome("passed")


def junit_nodeid(classname: str, name: str) -> str:
    """``tests.core.test_x.TestY`` + ``test_z[1]`` -> ``tests/core/test_x.py::TestY::test_z[1]``.

    Trailing parts that start with ``Test`` are classes (pytest's default
    ``python_classes``); a collection error has no classname and the module as name.
    """
    if not classname:
        return name.replace(".", "/") + ".py"
    parts = classname.split(".")
    split = len(parts)
    while split > 1 and parts[split - 1].startswith("Test"):
        split -= 1
    return "::".join(["/".join(parts[:split]) + ".py", *parts[split:], name])


def parse_pytest_junit(text: str) -> dict[str, Outcome]:
    """Test id -> outcome from pytest's ``--junitxml``. A test that errored in teardown
    may appear twice, passed and with an ``<error>``: it failed."""
    outcomes: dict[str, Outcome] = {}
    for case in ET.fromstring(text).iter("testcase"):
        test_id = junit_nodeid(case.get("classname", ""), case.get("name", ""))
        if outcomes.get(test_id, Outcome("passed")).status != "failed":
            outcomes[test_id] = _outcome(case)
    return outcomes


# Node reports tests left out by --test-name-pattern as skipped; they were never run.
NODE_NOT_SELECTED = "test name does not match pattern"


def parse_node_junit(text: str, file: str) -> dict[str, Outcome]:
    """Test id (``file::suite > test``) -> outcome from ``node --test-reporter=junit``."""
    outcomes: dict[str, Outcome] = {}

    def walk(element: ET.Element, path: tuple[str, ...]) -> None:
        for child in element:
            if child.tag == "testsuite":
                walk(child, (*path, child.get("name", "")))
            elif child.tag == "testcase":
                outcome = _outcome(child)
                if outcome.message != NODE_NOT_SELECTED:
                    outcomes[f"{file}::{' > '.join((*path, child.get('name', '')))}"] = outcome

    walk(ET.fromstring(text), ())
    return outcomes


# --- the pytest plugin: outcomes streamed as tests finish ----------------------------


def pytest_runtest_logstart(nodeid: str) -> None:
    _stream({"id": nodeid, "when": "start"})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _stream({"id": report.nodeid, "when": report.when, "outcome": report.outcome,
             "message": _message(report)})


def _message(report: pytest.TestReport) -> str:
    """The first line of what pytest's --junitxml says for the same report."""
    if report.passed:
        return ""
    if report.skipped:
        xfail = getattr(report, "wasxfail", None)
        if xfail is not None:
            return first_line(str(xfail).removeprefix("reason: "))
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        return first_line(reason.removeprefix("Skipped: "))
    crash = getattr(report.longrepr, "reprcrash", None)
    reason = crash.message if crash is not None else str(report.longrepr)
    if report.when != "call":
        reason = f'failed on {report.when} with "{reason}"'
    return first_line(reason)


def _stream(event: dict[str, str | None]) -> None:
    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(event) + "\n")


def parse_stream(text: str) -> tuple[dict[str, Outcome], list[str]]:
    """Outcomes of the tests that finished (their teardown was reported), and the tests
    that had started but not finished, from the plugin's stream."""
    phases: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            phases.setdefault(event["id"], []).append(event)
    outcomes: dict[str, Outcome] = {}
    running: list[str] = []
    for test_id, events in phases.items():
        if not any(e["when"] == "teardown" for e in events):
            running.append(test_id)
            continue
        failed = [e for e in events if e.get("outcome") == "failed"]
        skipped = [e for e in events if e.get("outcome") == "skipped"]
        if failed:
            outcomes[test_id] = Outcome("failed", failed[0]["message"] or "failed")
        elif skipped:
            outcomes[test_id] = Outcome("skipped", skipped[0]["message"])
        else:
            outcomes[test_id] = Outcome("passed")
    return outcomes, running


# --- aggregation and report ----------------------------------------------------------


def aggregate(runs: Sequence[dict[str, UnitRun]]) -> dict[str, Tally]:
    """Per test id over all runs. A test missing from a run while its unit reported it in
    another run did not finish: a failure of that run."""
    known: dict[str, set[str]] = {}
    for run in runs:
        for unit, unit_run in run.items():
            known.setdefault(unit, set()).update(unit_run.outcomes)
    tallies: dict[str, Tally] = {}
    for number, run in enumerate(runs, start=1):
        for unit, test_ids in known.items():
            unit_run = run.get(unit, UnitRun({}, "not run"))
            for test_id in test_ids:
                tally = tallies.setdefault(test_id, Tally())
                tally.runs += 1
                outcome = unit_run.outcomes.get(test_id) or Outcome(
                    "failed", f"did not finish ({unit_run.note or 'missing from the results'})")
                if outcome.status == "passed":
                    tally.passed += 1
                elif outcome.status == "skipped":
                    tally.skipped += 1
                else:
                    tally.failures.setdefault(outcome.message, []).append(number)
    return tallies


def ordered(tallies: dict[str, Tally]) -> list[tuple[str, Tally]]:
    """Failures first (lowest pass rate first), then the skipped, then the rest, by name."""
    return sorted(tallies.items(), key=lambda item: (
        not item[1].failures, item[1].perfect, item[1].passed / item[1].runs, item[0]))


def _runs(numbers: list[int]) -> str:
    return ("run " if len(numbers) == 1 else "runs ") + ", ".join(map(str, numbers))


def text_table(tallies: dict[str, Tally]) -> str:
    lines = []
    for test_id, tally in ordered(tallies):
        skipped = f" ({tally.skipped} skipped)" if tally.skipped else ""
        lines.append(f"{tally.passed:>3}/{tally.runs:<3} {test_id}{skipped}")
        lines.extend(f"{'':8}{_runs(numbers)}: {message}"
                     for message, numbers in tally.failures.items())
    return "\n".join(lines)


def markdown_table(tallies: dict[str, Tally], summary: str) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("`", "'")

    rows = ["# Soak report", "", summary, "",
            "| test | passed | skipped | failures |", "| --- | --- | --- | --- |"]
    for test_id, tally in ordered(tallies):
        failures = "<br>".join(f"{_runs(numbers)}: `{cell(message)}`"
                               for message, numbers in tally.failures.items())
        rows.append(f"| `{cell(test_id)}` | {tally.passed}/{tally.runs} | "
                    f"{tally.skipped or ''} | {failures} |")
    return "\n".join(rows) + "\n"


# --- running -------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """How a bounded process ended: its exit code, or None when it had to be killed."""

    returncode: int | None
    leftovers: tuple[str, ...] = ()  # its group's processes still alive after it exited


def _group_members(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group, as "pid command line"."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(f"{proc.name} {cmdline.strip()[:120]}")
    return members


def run_bounded(cmd: Sequence[str], cwd: Path, log: Path, timeout: float,
                env: dict[str, str] | None = None) -> Finished:
    """Run ``cmd`` in a process group of its own and kill the whole group when it is
    done, past ``timeout``, or when the soak itself is stopped: nothing outlives it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        try:
            returncode: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return Finished(None)
        deadline = time.monotonic() + LEFTOVER_GRACE
        while (leftovers := _group_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return Finished(returncode, tuple(leftovers))
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + LEFTOVER_GRACE  # SIGKILL is delivered, not awaited
        while _group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def process_outcome(finished: Finished, timeout: float, ok_codes: set[int]) -> Outcome:
    """The process itself as one more test: killed, crashed, or leaving processes behind."""
    if finished.returncode is None:
        return Outcome("failed", f"killed: still running after {timeout:.0f}s")
    if finished.returncode not in ok_codes:
        return Outcome("failed", f"exit code {finished.returncode}")
    if finished.leftovers:
        return Outcome("failed", f"left {len(finished.leftovers)} process(es) running, "
                       f"e.g. {finished.leftovers[0]}")
    return Outcome("passed")


def files_to_run() -> list[str]:
    found: list[str] = []
    for pattern in PYTEST_SET:
        found.extend(sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern)))
    return list(dict.fromkeys(found))


def run_pytest(workdir: Path, number: int, files: list[str], extra: list[str],
               timeout: float) -> UnitRun:
    xml, events = workdir / f"pytest-{number}.xml", workdir / f"pytest-{number}.jsonl"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.soak", "-q",
           f"--junitxml={xml}", *extra, *files]
    finished = run_bounded(cmd, ROOT, workdir / f"pytest-{number}.log", timeout,
                           {EVENTS_ENV: str(events)})
    note = ""
    if xml.exists():
        outcomes = parse_pytest_junit(xml.read_text(encoding="utf-8"))
    else:  # killed or crashed: what had finished, from the stream
        outcomes, running = parse_stream(events.read_text(encoding="utf-8")
                                         if events.exists() else "")
        note = (f"killed after {timeout:.0f}s" if finished.returncode is None
                else f"pytest exited with code {finished.returncode}")
        if running:
            note += " while running " + ", ".join(running)
        outcomes.update((test_id, Outcome("failed", f"did not finish ({note})"))
                        for test_id in running)
    failed = any(o.status == "failed" for o in outcomes.values())
    # 0 all passed, 1 some failed, 5 none selected (-k); anything else is pytest's own.
    outcomes["pytest process"] = process_outcome(finished, timeout, {1} if failed else {0, 5})
    return UnitRun(outcomes, note)


def run_node_file(workdir: Path, number: int, test_file: str, pattern: str | None,
                  timeout: float) -> UnitRun:
    stem = f"node-{number}-{Path(test_file).name}"
    xml = workdir / f"{stem}.xml"
    cmd = ["node", "--test", f"--test-timeout={NODE_TEST_TIMEOUT_MS}",
           "--test-reporter=junit", f"--test-reporter-destination={xml}",
           *([f"--test-name-pattern={pattern}"] if pattern else []), test_file]
    finished = run_bounded(cmd, NODE_DIR, workdir / f"{stem}.log", timeout)
    label = f"clients/node/{test_file}"
    outcomes: dict[str, Outcome] = {}
    note = f"killed after {timeout:.0f}s" if finished.returncode is None else ""
    with contextlib.suppress(OSError, ET.ParseError):  # killed mid-write: nothing finished
        outcomes = parse_node_junit(xml.read_text(encoding="utf-8"), label)
    failed = any(o.status == "failed" for o in outcomes.values())
    outcomes[f"{label} process"] = process_outcome(finished, timeout, {1} if failed else {0})
    return UnitRun(outcomes, note)


def node_ready() -> str:
    """Empty when the Node.js suite can run (its modules installed first), else why not."""
    if not (shutil.which("node") and shutil.which("npm")):
        return "node and npm are not on PATH (Debian: apt-get install nodejs npm)"
    if not (NODE_DIR / "node_modules" / ".installed").exists():
        # The Makefile's own rule for it: `npm ci` from the lockfile.
        done = subprocess.run(["make", "--no-print-directory",
                               "clients/node/node_modules/.installed"], cwd=ROOT, check=False)
        if done.returncode != 0:
            return "installing clients/node's modules (npm ci) failed"
    return ""


def run_once(args: argparse.Namespace, extra: list[str], workdir: Path, number: int,
             files: list[str], node_files: list[str]) -> dict[str, UnitRun]:
    started = time.monotonic()
    run: dict[str, UnitRun] = {}
    if files:
        selection = ["-k", args.expr] if args.expr else []
        run["pytest"] = run_pytest(workdir, number, files, selection + extra, args.run_timeout)
    for test_file in node_files:
        run[test_file] = run_node_file(workdir, number, test_file, args.expr, args.run_timeout)
    statuses = [o.status for unit in run.values() for o in unit.outcomes.values()]
    notes = "".join(f"; {unit}: {u.note}" for unit, u in run.items() if u.note)
    print(f"run {number}/{args.runs}: passed {statuses.count('passed')}, "
          f"failed {statuses.count('failed')}, skipped {statuses.count('skipped')}, "
          f"{time.monotonic() - started:.0f}s{notes}", flush=True)
    return run


# --- command line --------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The soak's own options, and the pytest arguments after ``--``."""
    own, extra = list(argv), []
    if "--" in own:
        cut = own.index("--")
        own, extra = own[:cut], own[cut + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", epilog="Arguments after -- go to pytest.",
        description="Rerun the stream, shutdown, replica and client tests; print pass rates.")
    parser.add_argument("--runs", type=int, default=20, help="how many runs (default 20)")
    parser.add_argument("--only", choices=("pytest", "node"), help="one suite only")
    parser.add_argument("-k", dest="expr", metavar="EXPR",
                        help="pytest's -k EXPR; node's --test-name-pattern=EXPR")
    parser.add_argument("--run-timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds one process may take (default {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--report", type=Path, default=Path("soak-report.md"),
                        help="the Markdown report (default soak-report.md)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep each run's JUnit files, outcome streams and logs in DIR")
    args = parser.parse_args(own)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args, extra


@contextlib.contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            yield Path(tmp)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Stopped(Exception):
    """SIGTERM to the soak: stop as on Ctrl-C."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    files = files_to_run() if args.only != "node" else []
    node_files: list[str] = []
    if args.only != "pytest":
        why = node_ready()
        if not why:
            node_files = sorted(str(p.relative_to(NODE_DIR)) for p in NODE_DIR.glob(NODE_TESTS))
        elif os.environ.get("CI") == "true" or args.only == "node":
            print(f"soak: FAILED: {why}", file=sys.stderr)
            return 2
        else:
            print(f"soak: SKIPPED the Node.js client suite: {why}", flush=True)
    print(f"soak: {_count(args.runs, 'run')} of {_count(len(files), 'pytest file')} and "
          f"{_count(len(node_files), 'Node.js test file')}", flush=True)
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    runs: list[dict[str, UnitRun]] = []
    stopped, run_time = "", 0.0  # run_time: until the last complete run
    with workdir(args.keep) as path:
        try:
            for number in range(1, args.runs + 1):
                runs.append(run_once(args, extra, path, number, files, node_files))
                run_time = time.monotonic() - started
        except (KeyboardInterrupt, Stopped):
            stopped = f"; stopped during run {len(runs) + 1}, which is left out"
    wall = time.monotonic() - started
    tallies = aggregate(runs)
    perfect = sum(t.perfect for t in tallies.values())
    per_run = f" ({_duration(run_time / len(runs))} a run)" if runs else ""
    summary = (f"soak: {_count(len(tallies), 'test')}, {_count(len(runs), 'run')}, "
               f"{_duration(wall)} wall{per_run}; "
               f"{perfect} passed every run, {len(tallies) - perfect} did not{stopped}")
    print(text_table(tallies))
    print(summary)
    args.report.write_text(markdown_table(tallies, summary), encoding="utf-8")
    print(f"soak: report in {args.report}")
    if stopped:
        return 130
    return 0 if tallies and perfect == len(tallies) else 1


if __name__ == "__main__":
    sys.exit(main())

"""tests/soak.py on small hand-written inputs: JUnit parsing, the outcome stream, the
pass-rate table and the did-not-finish accounting; and that its process groups die."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import soak
from tests.soak import Outcome, UnitRun

PYTEST_JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="2" failures="1" skipped="1" tests="6">
  <testcase classname="tests.test_a" name="test_ok" time="0.1"/>
  <testcase classname="tests.test_a" name="test_bad[redis]" time="0.1">
    <failure message="assert 1 == 2&#10;  where 1 = f()">long traceback</failure>
  </testcase>
  <testcase classname="tests.test_a" name="test_teardown" time="0.1"/>
  <testcase classname="tests.test_a" name="test_teardown" time="0.1">
    <error message="failed on teardown with &quot;RuntimeError: leak&quot;">tb</error>
  </testcase>
  <testcase classname="tests.core.test_b.TestGroup" name="test_skip" time="0">
    <skipped type="pytest.skip" message="needs redis-server">skip</skipped>
  </testcase>
  <testcase classname="" name="tests.test_broken" time="0">
    <error message="collection failure">ImportError: nope</error>
  </testcase>
</testsuite></testsuites>
"""

NODE_JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testsuite name="gaps" tests="3" failures="1" skipped="1">
    <testcase name="yields every offset" classname="test"/>
    <testsuite name="slow consumer">
      <testcase name="gets a gap" classname="test">
        <failure type="testCodeFailure" message="offset 7 lost&#10;more">
AssertionError: offset 7 lost</failure>
      </testcase>
    </testsuite>
    <testcase name="filtered out" classname="test">
      <skipped type="skipped" message="test name does not match pattern"/>
    </testcase>
    <testcase name="todo one" classname="test"><skipped type="todo" message="later"/></testcase>
  </testsuite>
  <testcase name="top level" classname="test"/>
</testsuites>
"""


def test_pytest_junit_gives_nodeids_and_one_outcome_per_test() -> None:
    assert soak.parse_pytest_junit(PYTEST_JUNIT) == {
        "tests/test_a.py::test_ok": Outcome("passed"),
        "tests/test_a.py::test_bad[redis]": Outcome("failed", "assert 1 == 2"),
        # pytest writes a second testcase for a teardown error: the test failed.
        "tests/test_a.py::test_teardown": Outcome(
            "failed", 'failed on teardown with "RuntimeError: leak"'),
        "tests/core/test_b.py::TestGroup::test_skip": Outcome("skipped", "needs redis-server"),
        "tests/test_broken.py": Outcome("failed", "collection failure"),
    }


def test_node_junit_names_tests_by_file_and_suites_and_drops_unselected() -> None:
    file = "clients/node/test/gap.test.js"
    assert soak.parse_node_junit(NODE_JUNIT, file) == {
        f"{file}::gaps > yields every offset": Outcome("passed"),
        f"{file}::gaps > slow consumer > gets a gap": Outcome("failed", "offset 7 lost"),
        f"{file}::gaps > todo one": Outcome("skipped", "later"),
        f"{file}::top level": Outcome("passed"),
    }


def test_stream_keeps_finished_tests_and_names_the_running_one() -> None:
    lines = [
        '{"id": "t.py::a", "when": "start"}',
        '{"id": "t.py::a", "when": "setup", "outcome": "passed", "message": ""}',
        '{"id": "t.py::a", "when": "call", "outcome": "passed", "message": ""}',
        '{"id": "t.py::a", "when": "teardown", "outcome": "failed", "message": "leak"}',
        '{"id": "t.py::b", "when": "start"}',
        '{"id": "t.py::b", "when": "setup", "outcome": "skipped", "message": "no redis"}',
        '{"id": "t.py::b", "when": "teardown", "outcome": "passed", "message": ""}',
        '{"id": "t.py::c", "when": "start"}',
        '{"id": "t.py::c", "when": "setup", "outcome": "passed", "message": ""}',
        '{"id": "t.py::c", "when": "ca',  # killed mid-write
    ]
    outcomes, running = soak.parse_stream("\n".join(lines))
    assert outcomes == {"t.py::a": Outcome("failed", "leak"),
                        "t.py::b": Outcome("skipped", "no redis")}
    assert running == ["t.py::c"]


def test_the_plugin_stream_agrees_with_pytests_junit(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture
        def leaky():
            yield
            raise RuntimeError("leak")

        def test_ok(): pass
        def test_bad(): assert 1 == 2
        def test_teardown(leaky): pass
        @pytest.mark.parametrize("n", [1, 2])
        def test_param(n): pass
        class TestGroup:
            def test_skip(self): pytest.skip("needs redis-server")
    """))
    events, xml = tmp_path / "events.jsonl", tmp_path / "out.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.soak", "-q",
         "-c", str(tmp_path / "pytest.ini"), f"--junitxml={xml}", str(tmp_path)],
        cwd=soak.ROOT, env={**os.environ, soak.EVENTS_ENV: str(events)},
        capture_output=True, check=False, timeout=120)
    streamed, running = soak.parse_stream(events.read_text())
    assert running == []
    assert streamed == soak.parse_pytest_junit(xml.read_text())
    assert streamed["test_sample.py::test_bad"] == Outcome("failed", "assert 1 == 2")
    assert streamed["test_sample.py::TestGroup::test_skip"].status == "skipped"


def _runs() -> list[dict[str, UnitRun]]:
    ok, bad = Outcome("passed"), Outcome("failed", "offset 7 lost")
    return [
        {"pytest": UnitRun({"t.py::a": ok, "t.py::b": ok, "t.py::s": Outcome("skipped", "x")}),
         "gap.js": UnitRun({"gap.js::g": ok})},
        {"pytest": UnitRun({"t.py::a": ok, "t.py::b": bad, "t.py::s": ok}),
         "gap.js": UnitRun({"gap.js::g": bad})},
        # Killed while running t.py::b: a is in, b and s did not finish; gap.js not reached.
        {"pytest": UnitRun({"t.py::a": ok}, "killed after 60s while running t.py::b")},
    ]


def test_pass_rates_count_skips_apart_and_missing_tests_as_did_not_finish() -> None:
    tallies = soak.aggregate(_runs())
    assert {k: (t.passed, t.skipped, t.runs) for k, t in tallies.items()} == {
        "t.py::a": (3, 0, 3), "t.py::b": (1, 0, 3), "t.py::s": (1, 1, 3), "gap.js::g": (1, 0, 3)}
    assert tallies["t.py::b"].failures == {
        "offset 7 lost": [2],
        "did not finish (killed after 60s while running t.py::b)": [3]}
    assert tallies["gap.js::g"].failures == {"offset 7 lost": [2],
                                             "did not finish (not run)": [3]}
    assert [t.perfect for t in tallies.values()].count(True) == 1


def test_tables_put_failures_first_with_their_messages_and_runs() -> None:
    tallies = soak.aggregate(_runs())
    assert [test_id for test_id, _ in soak.ordered(tallies)] == [
        "gap.js::g", "t.py::b", "t.py::s", "t.py::a"]
    text = soak.text_table(tallies)
    assert text.splitlines()[:3] == ["  1/3   gap.js::g", "        run 2: offset 7 lost",
                                     "        run 3: did not finish (not run)"]
    assert "  1/3   t.py::s (1 skipped)" in text
    assert text.splitlines()[-1] == "  3/3   t.py::a"
    markdown = soak.markdown_table(tallies, "soak: 4 tests")
    assert "| `t.py::b` | 1/3 |  | run 2: `offset 7 lost`<br>run 3: `did not finish" in markdown
    assert "| `t.py::s` | 1/3 | 1 | run 3: `did not finish" in markdown


def test_the_process_is_a_test_of_its_own() -> None:
    assert soak.process_outcome(soak.Finished(None), 60, {0}) == Outcome(
        "failed", "killed: still running after 60s")
    assert soak.process_outcome(soak.Finished(3), 60, {0, 5}) == Outcome("failed", "exit code 3")
    assert soak.process_outcome(soak.Finished(1), 60, {1}) == Outcome("passed")
    left = soak.process_outcome(soak.Finished(0, ("42 sleep 60",)), 60, {0})
    assert left == Outcome("failed", "left 1 process(es) running, e.g. 42 sleep 60")


def test_arguments_after_the_double_dash_go_to_pytest() -> None:
    args, extra = soak.parse_args(["--runs", "3", "-k", "gap", "--", "-x", "--timeout=5"])
    assert (args.runs, args.expr, args.only, extra) == (3, "gap", None, ["-x", "--timeout=5"])


SPAWNS_A_CHILD = ("import subprocess, sys, time; c = subprocess.Popen(['sleep', '60']); "
                  "print(c.pid, flush=True); time.sleep(float(sys.argv[1]))")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("parent_sleeps", [0.0, 30.0])
def test_a_run_leaves_nothing_behind(tmp_path: Path, parent_sleeps: float,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(soak, "LEFTOVER_GRACE", 0.3)
    log = tmp_path / "log"
    finished = soak.run_bounded([sys.executable, "-c", SPAWNS_A_CHILD, str(parent_sleeps)],
                                tmp_path, log, timeout=2)
    child = int(log.read_text().split()[0])
    if parent_sleeps:  # a hang: killed at the timeout, with its child
        assert finished == soak.Finished(None)
    else:  # exited, but its child was not reaped: reported, then killed
        assert finished.returncode == 0
        assert [line.split()[1:] for line in finished.leftovers] == [["sleep", "60"]]
    assert not _alive(child)

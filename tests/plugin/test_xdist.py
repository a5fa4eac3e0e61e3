"""pytest-xdist: results are sent once, from the controller, with their tags."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.plugin.helpers import by_nodeid, clean_env, stored, summary_lines
from tests.support.collector import CollectorProcess

SUITE = """
import pytest

pytestmark = pytest.mark.testengine(team="core")

@pytest.mark.parametrize("i", range(40))
def test_many(i, testengine_tags):
    testengine_tags(parity=i % 2)
    if i == 7:
        assert False, "seven"

@pytest.mark.skip(reason="skipped on purpose")
def test_skip():
    pass

@pytest.mark.xfail(reason="expected")
def test_xfail():
    assert False

@pytest.fixture
def broken():
    yield
    raise RuntimeError("teardown")

def test_teardown_error(broken):
    pass
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def _run(
    pytester: pytest.Pytester, collector: CollectorProcess, suite: str, *args: str
) -> tuple[pytest.RunResult, list[dict[str, Any]]]:
    pytester.makeconftest(
        """
        def pytest_testengine_tags(item):
            return {"hook": "yes"}
        """
    )
    pytester.makepyfile(test_xd=SUITE)
    run = pytester.runpytest_subprocess(
        "--testengine",
        "--testengine-url",
        collector.url,
        "--testengine-suite",
        suite,
        "-p",
        "no:cacheprovider",
        *args,
    )
    return run, stored(collector, 43, suite=suite)


def test_xdist_sends_each_result_once_with_tags_and_counts_match_a_serial_run(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    serial_run, serial = _run(pytester, collector, "serial", "-p", "no:xdist")
    xdist_run, parallel = _run(pytester, collector, "parallel", "-n", "2")
    for run in (serial_run, xdist_run):
        run.assert_outcomes(passed=40, failed=1, skipped=1, xfailed=1, errors=1)
        assert run.ret == pytest.ExitCode.TESTS_FAILED
    assert len(serial) == len(parallel) == 43
    serial_by_id, parallel_by_id = by_nodeid(serial), by_nodeid(parallel)  # each stored once
    assert set(serial_by_id) == set(parallel_by_id)
    for nodeid, result in parallel_by_id.items():
        assert result["outcome"] == serial_by_id[nodeid]["outcome"], nodeid
        assert result["when"] == serial_by_id[nodeid]["when"], nodeid
        assert result["tags"] == serial_by_id[nodeid]["tags"], nodeid
        assert result["worker"] in ("gw0", "gw1")
    assert {r["worker"] for r in serial} == {None}
    assert Counter(r["outcome"] for r in parallel) == Counter(r["outcome"] for r in serial)
    assert parallel_by_id["test_xd.py::test_many[3]"]["tags"] == {
        "team": "core",
        "hook": "yes",
        "parity": "1",
    }
    assert parallel_by_id["test_xd.py::test_many[7]"]["message"].count("seven") >= 1
    assert len({r["run_id"] for r in parallel}) == 1  # one session, one run
    assert summary_lines(xdist_run.outlines) == [f"[testengine] sent 43 results to {collector.url}"]


def test_workers_tag_reports_without_importing_the_sender(pytester: pytest.Pytester) -> None:
    # a worker only puts tags on its reports: the sender is the controller's, and writing an
    # output file needs neither the transport (http.client) nor the model (imports are most of
    # what recording costs a run)
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            # not PYTEST_XDIST_WORKER: a controller run by an xdist worker inherits it
            workerinput = getattr(session.config, "workerinput", None)
            worker = workerinput["workerid"] if workerinput else "controller"
            loaded = [m for m in ("pytest_testengine.sender", "pytest_testengine.transport",
                                  "pytest_testengine.model", "pytest_testengine.tagging")
                      if m in sys.modules]
            with open(f"modules-{worker}.txt", "w") as out:
                out.write(" ".join(loaded))
        """
    )
    pytester.makepyfile(
        test_w="""
        import pytest

        @pytest.mark.testengine(team="core")
        @pytest.mark.parametrize("i", range(4))
        def test_w(i):
            pass
        """
    )
    out = pytester.path / "results.jsonl"
    run = pytester.runpytest_subprocess("-n", "2", f"--testengine-output={out}")
    run.assert_outcomes(passed=4)
    for worker in ("gw0", "gw1"):
        assert (pytester.path / f"modules-{worker}.txt").read_text() == "pytest_testengine.tagging"
    assert (pytester.path / "modules-controller.txt").read_text().split() == [
        "pytest_testengine.sender",
        "pytest_testengine.tagging",
    ]
    lines = out.read_bytes().splitlines()[1:]
    assert len(lines) == 4
    assert all(b'"team":"core"' in line for line in lines)

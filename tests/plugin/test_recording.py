"""What a run records, as stored by a real collector."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.plugin.helpers import by_nodeid, clean_env, stored, summary_lines
from tests.support.collector import CollectorProcess

SUITE = """
import pytest

def test_passes():
    pass

def test_fails():
    assert 1 == 2, "numbers differ"

@pytest.mark.skip(reason="not on this platform")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known bug", strict=False)
def test_xfailed():
    assert False

@pytest.mark.xfail(reason="fixed meanwhile", strict=False)
def test_xpassed():
    pass

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup broke")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")

def test_setup_error(broken_setup):
    pass

def test_teardown_error(broken_teardown):
    pass

class TestGroup:
    class TestInner:
        @pytest.mark.parametrize("n, s", [(1, "a"), (2, "b::c")])
        def test_param(self, n, s):
            pass
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, collector: CollectorProcess) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("TESTENGINE_URL", collector.url)


def test_every_outcome_is_recorded_with_its_phase(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makepyfile(test_outcomes=SUITE)
    run = pytester.runpytest_subprocess("--testengine", "-p", "no:cacheprovider")
    run.assert_outcomes(
        passed=4, failed=1, skipped=1, xfailed=1, xpassed=1, errors=2
    )  # the teardown error counts as passed + error
    assert run.ret == pytest.ExitCode.TESTS_FAILED
    results = by_nodeid(stored(collector, 9))
    assert len(results) == 9  # pytest counts test_teardown_error twice: passed and error
    expected = {
        "test_outcomes.py::test_passes": ("passed", None),
        "test_outcomes.py::test_fails": ("failed", "call"),
        "test_outcomes.py::test_skipped": ("skipped", "setup"),
        "test_outcomes.py::test_xfailed": ("xfailed", "call"),
        "test_outcomes.py::test_xpassed": ("xpassed", "call"),
        "test_outcomes.py::test_setup_error": ("error", "setup"),
        "test_outcomes.py::test_teardown_error": ("error", "teardown"),
        "test_outcomes.py::TestGroup::TestInner::test_param[1-a]": ("passed", None),
        "test_outcomes.py::TestGroup::TestInner::test_param[2-b::c]": ("passed", None),
    }
    for nodeid, (outcome, when) in expected.items():
        assert (results[nodeid]["outcome"], results[nodeid]["when"]) == (outcome, when), nodeid
    assert "numbers differ" in results["test_outcomes.py::test_fails"]["message"]
    assert results["test_outcomes.py::test_skipped"]["message"] == "not on this platform"
    assert results["test_outcomes.py::test_xfailed"]["message"] == "known bug"
    assert "setup broke" in results["test_outcomes.py::test_setup_error"]["message"]
    assert "teardown broke" in results["test_outcomes.py::test_teardown_error"]["message"]
    assert summary_lines(run.outlines) == [f"[testengine] sent 9 results to {collector.url}"]


def test_location_timing_and_identity_fields(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makepyfile(test_outcomes=SUITE)
    sub = pytester.mkpydir("sub")
    (sub / "test_nested.py").write_text("def test_in_sub():\n    pass\n")
    run = pytester.runpytest_subprocess("--testengine", "-p", "no:cacheprovider")
    results = by_nodeid(stored(collector, 10))
    param = results["test_outcomes.py::TestGroup::TestInner::test_param[2-b::c]"]
    assert param["file"] == "test_outcomes.py"
    assert (param["scope"], param["name"], param["params"]) == (
        "TestGroup::TestInner",
        "test_param",
        "2-b::c",
    )
    source = (pytester.path / "test_outcomes.py").read_text().splitlines()
    decorator = next(i for i, line in enumerate(source, 1) if "parametrize" in line)
    assert param["line"] == decorator  # pytest reports a decorated function at its decorator
    nested = results["sub/test_nested.py::test_in_sub"]
    assert (nested["file"], nested["line"], nested["scope"]) == ("sub/test_nested.py", 1, "")
    for result in results.values():
        assert min(result["setup"], result["call"], result["teardown"]) >= 0
        assert result["duration"] == pytest.approx(
            result["setup"] + result["call"] + result["teardown"]
        )
        assert result["start"] <= result["stop"]
        assert (result["worker"], result["attempt"]) == (None, 1)
        assert len(result["id"]) == 32
    assert len({r["id"] for r in results.values()}) == 10
    assert len({r["run_id"] for r in results.values()}) == 1
    assert run.ret == pytest.ExitCode.TESTS_FAILED


def test_tags_from_marker_fixture_hook_and_run(
    pytester: pytest.Pytester, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(
        """
        def pytest_testengine_tags(item):
            return {"area": "from-hook", "module": item.module.__name__}
        """
    )
    pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.testengine(team="module-team", level="module")

        @pytest.mark.testengine(tags={"team": "payments", "size": "small"})
        def test_marked():
            pass

        def test_fixture(testengine_tags):
            testengine_tags(area="from-fixture", attempt_no=1)
            testengine_tags("single", "value")

        def test_plain():
            pass
        """
    )
    monkeypatch.setenv("TESTENGINE_TAGS", "team=run-env,stage=ci")
    run = pytester.runpytest_subprocess(
        "--testengine", "--testengine-tag", "team=run-cli", "-p", "no:cacheprovider"
    )
    run.assert_outcomes(passed=3)
    results = by_nodeid(stored(collector, 3))
    mod = "test_tags_from_marker_fixture_hook_and_run"
    assert results[f"{mod}.py::test_marked"]["tags"] == {
        "team": "payments",
        "level": "module",
        "size": "small",
        "area": "from-hook",
        "module": mod,
    }
    assert results[f"{mod}.py::test_fixture"]["tags"] == {
        "team": "module-team",
        "level": "module",
        "area": "from-fixture",
        "module": mod,
        "attempt_no": "1",
        "single": "value",
    }
    (run_info,) = collector.runs()
    assert run_info["tags"]["team"] == "run-cli"
    assert run_info["tags"]["stage"] == "ci"
    for key in ("host.os", "host.arch", "python.version", "ci.provider", "pytest.version"):
        assert run_info["tags"][key], key
    assert run_info["tags"]["ci.provider"] == "none"


def test_tag_limits_leave_tags_out_with_a_message_not_a_failure(
    pytester: pytest.Pytester, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        def test_many(testengine_tags):
            for i in range(5):
                testengine_tags(f"k{i}", i)
            testengine_tags("long", "x" * 50)
        """
    )
    monkeypatch.setenv("TESTENGINE_MAX_TAGS", "3")
    monkeypatch.setenv("TESTENGINE_MAX_TAG_LENGTH", "20")
    run = pytester.runpytest_subprocess("--testengine", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
    (result,) = stored(collector, 1)
    assert result["tags"] == {"k0": "0", "k1": "1", "k2": "2"}
    mod = "test_tag_limits_leave_tags_out_with_a_message_not_a_failure"
    assert summary_lines(run.outlines) == [
        f"[testengine] sent 1 result to {collector.url}; tags left out for 1 test "
        f"({mod}.py::test_many: 2 over the limit of 3 tags (TESTENGINE_MAX_TAGS) and 1 longer "
        "than 20 characters (TESTENGINE_MAX_TAG_LENGTH))"
    ]


def test_collection_errors_are_recorded(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makepyfile(
        test_ok="def test_ok():\n    pass\n",
        test_broken="import does_not_exist_anywhere\n",
    )
    run = pytester.runpytest_subprocess(
        "--testengine", "--continue-on-collection-errors", "-p", "no:cacheprovider"
    )
    run.assert_outcomes(passed=1, errors=1)
    results = by_nodeid(stored(collector, 2))
    broken = results["test_broken.py"]
    assert (broken["outcome"], broken["when"], broken["file"]) == (
        "error",
        "collect",
        "test_broken.py",
    )
    assert "does_not_exist_anywhere" in broken["message"]
    assert results["test_ok.py::test_ok"]["outcome"] == "passed"


def test_failure_messages_are_truncated_at_the_limit(
    pytester: pytest.Pytester, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        def test_long():
            raise ValueError("x" * 10000 + "THE END")
        """
    )
    monkeypatch.setenv("TESTENGINE_MESSAGE_LIMIT", "500")
    pytester.runpytest_subprocess("--testengine", "-p", "no:cacheprovider").assert_outcomes(
        failed=1
    )
    (result,) = stored(collector, 1)
    assert len(result["message"]) == 500
    assert "THE END" in result["message"][-100:]  # the end, where the exception is, is kept
    assert result["message"].startswith("def test_long():")
    assert "characters truncated" in result["message"]


def test_output_file_works_without_a_collector(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makepyfile(test_outcomes=SUITE)
    run = pytester.runpytest_subprocess(
        "--testengine-output", "out/results.jsonl", "-p", "no:cacheprovider"
    )
    out = pytester.path / "out" / "results.jsonl"
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert lines[0]["schema"] == 1
    assert lines[0]["run"]["suite"] == "default"
    outcomes = sorted(line["result"]["outcome"] for line in lines[1:])
    assert outcomes == sorted(
        ["passed", "passed", "passed", "failed", "skipped", "xfailed", "xpassed", "error", "error"]
    )
    assert summary_lines(run.outlines) == [f"[testengine] wrote 9 results to {out}"]
    assert collector.results() == []  # not enabled: nothing was sent


def test_output_file_and_collector_get_the_same_results(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makepyfile(test_outcomes=SUITE)
    run = pytester.runpytest_subprocess(
        "--testengine", "--testengine-output", "results.jsonl", "-p", "no:cacheprovider"
    )
    lines = (pytester.path / "results.jsonl").read_bytes().splitlines()
    from_file = {orjson.loads(line)["result"]["id"] for line in lines[1:]}
    from_collector = {r["id"] for r in stored(collector, 9)}
    assert from_file == from_collector
    assert len(from_file) == 9
    assert summary_lines(run.outlines) == [
        f"[testengine] sent 9 results to {collector.url}; wrote 9 results to "
        f"{Path(pytester.path, 'results.jsonl')}"
    ]


def test_reruns_are_recorded_as_attempts_with_their_own_ids(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(
        """
        import itertools

        calls = itertools.count()

        def test_flaky():
            assert next(calls) > 0, "fails the first time"

        def test_steady():
            pass
        """
    )
    run = pytester.runpytest_subprocess("--testengine", "--reruns", "2", "-p", "no:cacheprovider")
    assert run.parseoutcomes() == {"passed": 2, "rerun": 1}
    results = stored(collector, 3)
    flaky = sorted(
        (r for r in results if r["nodeid"].endswith("::test_flaky")), key=lambda r: r["attempt"]
    )
    assert [(r["attempt"], r["outcome"]) for r in flaky] == [(1, "failed"), (2, "passed")]
    assert "fails the first time" in flaky[0]["message"]
    assert len({r["id"] for r in results}) == 3
    (steady,) = (r for r in results if r["nodeid"].endswith("::test_steady"))
    assert steady["attempt"] == 1


@pytest.mark.skipif(
    int(pytest.__version__.split(".")[0]) < 9, reason="the subtests fixture is pytest >= 9"
)
@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_subtests_count_as_pytest_counts_them_and_their_failures_are_kept(
    pytester: pytest.Pytester, collector: CollectorProcess, xdist: list[str]
) -> None:
    pytester.makepyfile(
        """
        import unittest

        import pytest

        def test_checks(subtests):
            for i in range(3):
                with subtests.test(msg="value", i=i):
                    assert i != 1, f"value was {i}"

        def test_skips_one(subtests):
            with subtests.test(i=0):
                pytest.skip("not here")
            with subtests.test(i=1):
                pytest.xfail("known")

        class TestCase(unittest.TestCase):
            def test_sub(self):  # pytest counts it passed, and its subtest failed
                for i in range(2):
                    with self.subTest(i=i):
                        self.assertEqual(i, 0)
        """
    )
    run = pytester.runpytest_subprocess("--testengine", "-p", "no:cacheprovider", *xdist)
    assert run.ret == pytest.ExitCode.TESTS_FAILED
    results = by_nodeid(stored(collector, 3))
    mod = "test_subtests_count_as_pytest_counts_them_and_their_failures_are_kept.py"
    assert {nodeid: r["outcome"] for nodeid, r in results.items()} == {
        f"{mod}::test_checks": "failed",
        f"{mod}::test_skips_one": "passed",  # as pytest counts it: PASSED, SUBSKIPPED, SUBXFAIL
        f"{mod}::TestCase::test_sub": "failed",  # the run failed: its one result must say so
    }
    unittest_case = results[f"{mod}::TestCase::test_sub"]
    assert unittest_case["message"].startswith("contains 1 failed subtest\n\nsubtest (i=")
    assert "AssertionError: 1 != 0" in unittest_case["message"]
    checks = results[f"{mod}::test_checks"]
    message = checks["message"]
    assert "contains 1 failed subtest\n\nsubtest [value] (i=" in message  # xdist: (i='1')
    assert "AssertionError: value was 1" in message
    assert "value was 0" not in message
    assert "value was 2" not in message


def test_a_broken_tags_hook_becomes_an_error_tag_not_a_failure(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makeconftest(
        """
        def pytest_testengine_tags(item):
            raise RuntimeError("no tags today")
        """
    )
    pytester.makepyfile("def test_one():\n    pass\n")
    run = pytester.runpytest_subprocess("--testengine", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
    assert run.ret == pytest.ExitCode.OK
    (result,) = stored(collector, 1)
    assert result["outcome"] == "passed"
    assert result["tags"] == {"testengine.error": "tags: RuntimeError: no tags today"}


def test_an_unwritable_output_file_is_reported_and_the_results_still_sent(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makepyfile("def test_one():\n    pass\n")
    out = pytester.mkdir("results.jsonl")  # a directory where the file should go
    run = pytester.runpytest_subprocess(
        "--testengine", "--testengine-output", str(out), "-p", "no:cacheprovider"
    )
    assert run.ret == pytest.ExitCode.OK
    assert summary_lines(run.outlines) == [
        f"[testengine] sent 1 result to {collector.url}; wrote 0 results to {out}; "
        f"could not write {out} ([Errno 21] Is a directory: '{out}')"
    ]
    assert len(stored(collector, 1)) == 1


def test_marker_tags_of_classes_params_and_markers_added_at_collection(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                if item.name == "test_added":
                    item.add_marker(pytest.mark.testengine(origin="conftest"))
        """
    )
    pytester.makepyfile(
        test_tags="""
        import pytest

        @pytest.mark.testengine(level="class")
        class TestGroup:
            @pytest.mark.testengine(level="method", size="small")
            def test_method(self):
                pass

            def test_inherits(self):
                pass

        @pytest.mark.parametrize(
            "n", [1, pytest.param(2, marks=pytest.mark.testengine(param="two"))]
        )
        def test_param(n):
            pass

        def test_added():
            pass

        def test_none(testengine_tags):
            pass
        """
    )
    out = pytester.path / "results.jsonl"
    run = pytester.runpytest_subprocess("--testengine-output", str(out), "-p", "no:cacheprovider")
    run.assert_outcomes(passed=6)
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    tags = {line["result"]["nodeid"]: line["result"]["tags"] for line in lines[1:]}
    assert tags == {
        "test_tags.py::TestGroup::test_method": {"level": "method", "size": "small"},
        "test_tags.py::TestGroup::test_inherits": {"level": "class"},
        "test_tags.py::test_param[1]": {},
        "test_tags.py::test_param[2]": {"param": "two"},
        "test_tags.py::test_added": {"origin": "conftest"},
        "test_tags.py::test_none": {},
    }


TAGGER_PROBE = """
def pytest_sessionfinish(session):
    with open("hooktagger.txt", "w") as out:
        out.write(str(session.config.pluginmanager.has_plugin("testengine-hook-tagger")))
"""


@pytest.mark.parametrize("implemented", [False, True], ids=["no-hook", "hook"])
def test_the_tags_hook_is_asked_only_when_a_plugin_implements_it(
    pytester: pytest.Pytester, implemented: bool
) -> None:
    hook = "\ndef pytest_testengine_tags(item):\n    return {'k': 'v'}\n" if implemented else ""
    pytester.makeconftest(TAGGER_PROBE + hook)
    pytester.makepyfile("def test_one():\n    pass\n")
    out = pytester.path / "results.jsonl"
    run = pytester.runpytest_subprocess(f"--testengine-output={out}", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
    assert (pytester.path / "hooktagger.txt").read_text() == str(implemented)
    (line,) = out.read_bytes().splitlines()[1:]
    assert orjson.loads(line)["result"]["tags"] == ({"k": "v"} if implemented else {})


def test_reports_take_one_hook_of_the_plugin_and_tags_one_more_once_a_test_has_tags(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        def pytest_unconfigure(config):
            with open("after.txt", "w") as out:
                out.write(repr(hooks_of(config)))

        def hooks_of(config):
            impls = config.hook.pytest_runtest_logreport.get_hookimpls()
            return sorted(i.plugin_name for i in impls if i.plugin_name.startswith("testengine"))
        """
    )
    pytester.makepyfile(
        """
        from conftest import hooks_of

        def test_untagged(request):
            assert hooks_of(request.config) == ["testengine-feeder"]

        def test_tagged(request, testengine_tags):
            testengine_tags(k="v")
            assert hooks_of(request.config) == ["testengine-feeder", "testengine-report-tagger"]

        def test_after(request):
            assert hooks_of(request.config) == ["testengine-feeder", "testengine-report-tagger"]
        """
    )
    out = pytester.path / "results.jsonl"
    run = pytester.runpytest_subprocess(f"--testengine-output={out}", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=3)
    assert (pytester.path / "after.txt").read_text() == "['testengine-report-tagger']"
    tags = [orjson.loads(line)["result"]["tags"] for line in out.read_bytes().splitlines()[1:]]
    assert tags == [{}, {"k": "v"}, {}]


def test_a_marker_added_while_the_test_runs_is_not_a_tag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_late(request, testengine_tags):
            request.node.add_marker(pytest.mark.testengine(late="yes"))
            testengine_tags(fixture="yes")
        """
    )
    out = pytester.path / "results.jsonl"
    run = pytester.runpytest_subprocess(f"--testengine-output={out}", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
    (line,) = out.read_bytes().splitlines()[1:]
    assert orjson.loads(line)["result"]["tags"] == {"fixture": "yes"}  # markers: at collection

"""Splitting a suite across shards, against a real collector process: the summary line,
deselection, empty shards, the fallbacks with the collector down, usage errors, dynamic mode,
and the plan id each shard reports with its results."""

from __future__ import annotations

import re

import orjson
import pytest

from pytest_testengine.splitting import fallback_plan
from tests.plugin.helpers import clean_env, output_file, stored, summary_lines
from tests.support.collector import CollectorProcess, free_port

SUITE = {
    "test_one": "import pytest\n\n@pytest.mark.parametrize('i', range(5))\ndef test_a(i):\n"
    "    pass\n",
    "test_two": "def test_b():\n    pass\n\ndef test_c():\n    pass\n\ndef test_d():\n    pass\n",
    "test_three": "import pytest\n\n@pytest.mark.parametrize('i', range(4))\ndef test_e(i):\n"
    "    pass\n",
}
TESTS = 12
BUILD = "build-42"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def shard(
    pytester: pytest.Pytester, url: str, index: int, total: int, *args: str
) -> pytest.RunResult:
    """One shard of build ``BUILD`` with results sent to ``url``."""
    write_suite(pytester)
    return pytester.runpytest_subprocess(
        "--testengine", *split_args(url, index, total), "--testengine-flush-deadline", "2", *args
    )


def split_args(url: str, index: int, total: int) -> list[str]:
    """Shard ``index`` of ``total`` of build ``BUILD``, planned by the collector at ``url``."""
    return [
        "--testengine-url",
        url,
        "--testengine-build-id",
        BUILD,
        "--split-index",
        str(index),
        "--split-total",
        str(total),
        "-p",
        "no:cacheprovider",
    ]


def write_suite(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")  # the rootdir, so node ids start at the test files
    pytester.makepyfile(**SUITE)


def error_line(run: pytest.RunResult) -> str:
    """The usage error pytest printed (other plugins may warn on stderr before it)."""
    return next(line for line in run.errlines if line.startswith("ERROR:"))


def all_ids(pytester: pytest.Pytester) -> list[str]:
    write_suite(pytester)
    run = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    return [line for line in run.outlines if "::" in line]


def test_each_shard_runs_its_share_reports_the_plan_and_the_union_is_exact(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    counts = []
    for index in range(3):
        run = shard(pytester, collector.url, index, 3)
        assert run.ret == pytest.ExitCode.OK
        (line, sent) = summary_lines(run.outlines)
        match = re.fullmatch(
            rf"\[testengine\] shard {index + 1}/3: (\d+) of 12 tests, estimated (\d+\.\d) s, "
            r"12 without history \(plan ([0-9a-f]{8})…\)",
            line,
        )
        assert match, line
        ran = int(match.group(1))
        run.assert_outcomes(passed=ran, deselected=TESTS - ran)
        assert float(match.group(2)) == pytest.approx(ran * 1.001, abs=0.05)
        counts.append((ran, match.group(3)))
        assert sent == f"[testengine] sent {ran} result{'s' if ran != 1 else ''} to {collector.url}"
    assert sum(ran for ran, _ in counts) == TESTS
    assert len({prefix for _, prefix in counts}) == 1

    results = stored(collector, TESTS)
    collected = all_ids(pytester)
    assert sorted(r["nodeid"] for r in results) == sorted(collected)
    position = {nodeid: n for n, nodeid in enumerate(collected)}
    for run_info in collector.runs():  # each shard ran its share in collection order
        ran_order = [position[r["nodeid"]] for r in collector.results(run_id=run_info["run_id"])]
        assert ran_order == sorted(ran_order)
    build = collector.get(f"/v1/suites/default/builds/{BUILD}").json()
    (plan_id,) = build["plans_reported"]
    assert plan_id.startswith(counts[0][1])
    assert (build["one_plan"], build["shards_reported"], build["not_run_count"]) == (
        True,
        [0, 1, 2],
        0,
    )
    runs = collector.runs()
    assert sorted((r["shard_index"], r["shard_total"], r["plan_id"]) for r in runs) == [
        (0, 3, plan_id),
        (1, 3, plan_id),
        (2, 3, plan_id),
    ]
    assert {r["run_id"]: r["total"] for r in runs} == {
        r["run_id"]: ran
        for r, (ran, _) in zip(sorted(runs, key=lambda r: r["shard_index"]), counts, strict=True)
    }


def test_a_shard_without_tests_exits_0_with_a_message(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    run = shard(pytester, collector.url, 12, 13)
    assert run.ret == pytest.ExitCode.OK
    run.assert_outcomes(deselected=TESTS)
    lines = summary_lines(run.outlines)
    assert lines[0].startswith("[testengine] shard 13/13: 0 of 12 tests, estimated 0.0 s")
    assert lines[1] == (
        "[testengine] shard 13/13 has no tests to run: the plan gives all 12 collected "
        "tests to other shards (exit status 0)"
    )
    build = collector.get(f"/v1/suites/default/builds/{BUILD}").json()
    assert build["plans"][0]["asked_by"] == [12]


def test_an_empty_collection_still_exits_5(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makepyfile(test_none="")
    run = pytester.runpytest_subprocess(*split_args(collector.url, 0, 2))
    assert run.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert summary_lines(run.outlines) == []
    assert collector.get(f"/v1/suites/default/builds/{BUILD}").status_code == 404


def test_collector_down_every_shard_computes_the_same_local_plan(
    pytester: pytest.Pytester,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    durations = "durations.json"  # paths inside the rootdir (paths outside would move it)
    known = dict.fromkeys(all_ids(pytester), 0.1)
    (pytester.path / durations).write_bytes(orjson.dumps({**known, "test_one.py::test_a[0]": 3.0}))
    plan_ids, ran = set(), []
    for index in range(3):
        output = f"shard{index}.jsonl"
        run = shard(
            pytester,
            url,
            index,
            3,
            "--testengine-durations",
            durations,
            "--testengine-output",
            output,
        )
        assert run.ret == pytest.ExitCode.OK
        warning, line, *_ = summary_lines(run.outlines)
        plan_id = re.search(r"local fallback plan (local-[0-9a-f]{16})", warning)
        assert plan_id, warning
        assert warning == (
            f"[testengine] no split plan from the collector: could not reach the collector at "
            f"{url} (connection refused); using the local fallback plan {plan_id.group(1)}, "
            f"which every shard computes alike from the collected tests and {durations}; "
            "see docs/troubleshooting.md#no-split-plan"
        )
        run_info, ids = output_file(pytester.path / output)
        assert (run_info["plan_id"], run_info["shard_index"]) == (plan_id.group(1), index)
        assert line.endswith(f"(plan {plan_id.group(1)[:14]}…)")
        plan_ids.add(plan_id.group(1))
        ran.append(ids)
    assert len(plan_ids) == 1
    assert ran[0] == ["test_one.py::test_a[0]"]  # the 3 s test has a shard of its own
    flat = [test_id for ids in ran for test_id in ids]
    assert sorted(flat) == sorted(all_ids(pytester))


def test_collector_down_fallback_all_runs_everything(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    collector.stop()
    run = shard(pytester, collector.url, 1, 3, "--testengine-split-fallback", "all")
    assert run.ret == pytest.ExitCode.OK
    run.assert_outcomes(passed=TESTS)
    warning, line, *_ = summary_lines(run.outlines)
    assert warning == (
        "[testengine] no split plan from the collector: could not reach the collector at "
        f"{collector.url} (connection refused); this shard runs every test "
        "(--testengine-split-fallback (command line) is all); "
        "see docs/troubleshooting.md#no-split-plan"
    )
    assert line == "[testengine] shard 2/3: 12 of 12 tests (no plan: every test)"


def test_collector_down_fallback_fail_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("TESTENGINE_SPLIT_FALLBACK", "fail")
    run = shard(pytester, url, 0, 2)
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert "passed" not in run.stdout.str()
    assert error_line(run) == (
        "ERROR: [testengine] no split plan from the collector: could not reach the collector "
        f"at {url} (connection refused); no tests run because TESTENGINE_SPLIT_FALLBACK (env) "
        "is fail: to run anyway, pass --testengine-split-fallback local (every shard computes "
        "the same plan) or all (every shard runs every test); "
        "see docs/troubleshooting.md#no-split-plan"
    )
    assert "Traceback" not in run.stderr.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--split-index", "1", "--testengine-build-id", "b"],
            "ERROR: [testengine] --split-index (command line) is 1 but the shard count is "
            "missing: expected --split-total N (or TESTENGINE_SPLIT_TOTAL) with it; "
            "see docs/troubleshooting.md#split-settings",
            id="index-only",
        ),
        pytest.param(
            ["--split-index", "4", "--split-total", "4", "--testengine-build-id", "b"],
            "ERROR: [testengine] invalid value 4 for --split-index (command line): expected a "
            "shard index from 0 to 3, as --split-total (command line) is 4 (the index is "
            "0-based); see docs/troubleshooting.md#split-settings",
            id="out-of-range",
        ),
        pytest.param(
            ["--split-index", "0", "--split-total", "4"],
            "ERROR: [testengine] splitting needs a build id shared by every shard of the build, "
            "and none was found: expected --testengine-build-id ID or TESTENGINE_BUILD_ID set "
            "to the same value on every shard (Buildkite, GitHub Actions, CircleCI, GitLab and "
            "Jenkins give one); see docs/troubleshooting.md#no-build-id",
            id="no-build-id",
        ),
        pytest.param(
            [
                *("--split-index", "0", "--split-total", "2", "--testengine-build-id", "b"),
                *("--split-mode", "dynamic", "-n", "2"),
            ],
            "ERROR: [testengine] --split-mode (command line) is dynamic, which does not work "
            "with pytest-xdist (-n): expected --split-mode static with -n, or no -n; "
            "see docs/splitting.md#dynamic-mode",
            id="dynamic-with-xdist",
        ),
        pytest.param(
            ["--split-index", "x"],
            "ERROR: [testengine] invalid value 'x' for --split-index (command line): "
            "expected an integer, 0 or more",
            id="not-a-number",
        ),
    ],
)
def test_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    write_suite(pytester)
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert error_line(run) == message


def test_dynamic_shard_takes_every_chunk_then_the_next_one_finds_the_queue_done(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    first = shard(pytester, collector.url, 0, 2, "--split-mode", "dynamic")
    first.assert_outcomes(passed=TESTS)
    line = summary_lines(first.outlines)[0]
    match = re.fullmatch(
        r"\[testengine\] shard 1/2: ran 12 of 12 tests in (\d+) chunks?, estimated \d+\.\d s "
        r"\(plan ([0-9a-f]{8})…\)",
        line,
    )
    assert match, line
    second = shard(pytester, collector.url, 1, 2, "--split-mode", "dynamic")
    assert second.ret == pytest.ExitCode.OK
    second.assert_outcomes()
    assert summary_lines(second.outlines)[0] == (
        f"[testengine] shard 2/2: ran 0 of 12 tests in 0 chunks (plan {match.group(2)}…)"
    )
    stored(collector, TESTS)
    build = collector.get(f"/v1/suites/default/builds/{BUILD}").json()
    assert build["dynamic"]["completed"] == build["dynamic"]["chunks"] == int(match.group(1))
    assert (build["one_plan"], build["ran"], build["ran_more_than_once"]) == (True, TESTS, 0)


def test_splitting_without_testengine_plans_but_sends_no_results(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    write_suite(pytester)
    run = pytester.runpytest_subprocess(*split_args(collector.url, 0, 2))
    assert run.ret == pytest.ExitCode.OK
    (line,) = summary_lines(run.outlines)
    assert line.startswith("[testengine] shard 1/2: 6 of 12 tests")
    build = collector.get(f"/v1/suites/default/builds/{BUILD}").json()
    assert (build["plans"][0]["asked_by"], build["shards_reported"]) == ([0], [])


def test_dynamic_collector_dies_mid_run_the_shard_runs_the_rest_of_its_local_share(
    pytester: pytest.Pytester, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert collector.proc is not None
    monkeypatch.setenv("COLLECTOR_PID", str(collector.proc.pid))
    pytester.makeconftest(
        "import os, signal\n\n"
        "def pytest_runtest_setup(item):\n"
        "    pid = int(os.environ.pop('COLLECTOR_PID', '0'))\n"
        "    if pid:  # the collector dies during the first test\n"
        "        os.kill(pid, signal.SIGKILL)\n"
    )
    run = shard(
        pytester,
        collector.url,
        0,
        2,
        "--split-mode",
        "dynamic",
        "--testengine-output",
        "out.jsonl",
    )
    assert run.ret == pytest.ExitCode.OK
    collector.kill()  # reap the process
    run_info, ran = output_file(pytester.path / "out.jsonl")
    assert len(ran) == len(set(ran))
    plan, _ = fallback_plan(all_ids(pytester), 2)
    share = set(plan.shards[0].test_ids)
    assert share <= set(ran)
    warning = next(line for line in summary_lines(run.outlines) if "fallback" in line)
    assert warning.startswith(
        "[testengine] no split plan from the collector: could not reach the collector at "
        f"{collector.url} (connection refused); using the local fallback plan local-"
    )
    left = re.search(r"\((\d+) tests left for this shard\)$", warning)
    assert left, warning
    first_chunk = ran[: len(ran) - int(left.group(1))]
    assert first_chunk  # ran before the collector died
    assert set(ran[len(first_chunk) :]) == share - set(first_chunk)
    assert run_info["plan_id"] is not None
    assert not run_info["plan_id"].startswith("local-")  # the results belong to the dynamic plan


def test_split_by_file_keeps_each_file_on_one_shard(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    files_of_shard = []
    for index in range(2):
        output = f"by-file-{index}.jsonl"
        run = shard(
            pytester, collector.url, index, 2, "--split-by", "file", "--testengine-output", output
        )
        assert run.ret == pytest.ExitCode.OK
        _, ids = output_file(pytester.path / output)
        files_of_shard.append({test_id.split("::")[0] for test_id in ids})
    assert files_of_shard[0].isdisjoint(files_of_shard[1])
    assert files_of_shard[0] | files_of_shard[1] == {f"{name}.py" for name in SUITE}
    (plan,) = collector.get(f"/v1/suites/default/builds/{BUILD}").json()["plans"]
    assert (plan["by"], plan["asked_by"]) == ("file", [0, 1])


def test_collect_only_lists_exactly_what_the_shard_runs(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    write_suite(pytester)
    listed = pytester.runpytest_subprocess("--collect-only", "-q", *split_args(collector.url, 1, 3))
    assert listed.ret == pytest.ExitCode.OK
    listed_ids = [line for line in listed.outlines if "::" in line]
    ran = shard(pytester, collector.url, 1, 3, "-v")
    ran_ids = [line.split(" ")[0] for line in ran.outlines if " PASSED" in line]
    assert listed_ids == ran_ids  # the same share, in the same (collection) order
    assert 0 < len(ran_ids) < TESTS
    build = collector.get(f"/v1/suites/default/builds/{BUILD}").json()
    assert len(build["plans"]) == 1  # both runs got the one cached plan

"""Splitting with pytest-xdist: the controller makes the one plan request of the shard, its
workers run only the shard's tests, and the results carry the plan id."""

from __future__ import annotations

import pytest

from tests.plugin.helpers import clean_env, stored, summary_lines
from tests.plugin.test_splitting import BUILD, TESTS, all_ids, shard
from tests.support.collector import CollectorProcess, free_port


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def test_xdist_shards_split_once_on_the_controller(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    counts = []
    for index in range(2):
        run = shard(pytester, collector.url, index, 2, "-n", "2")
        assert run.ret == pytest.ExitCode.OK
        line = summary_lines(run.outlines)[0]
        assert line.startswith(f"[testengine] shard {index + 1}/2: ")
        ran = int(line.split(": ")[1].split(" of ")[0])
        run.assert_outcomes(passed=ran)
        assert f"2 workers [{ran} items]" in run.stdout.str()
        counts.append(ran)
    assert sum(counts) == TESTS
    results = stored(collector, TESTS)
    assert sorted(r["nodeid"] for r in results) == sorted(all_ids(pytester))
    build = collector.get(f"/v1/suites/default/builds/{BUILD}").json()
    assert (len(build["plans"]), build["one_plan"], build["shards_reported"]) == (1, True, [0, 1])
    (plan_id,) = build["plans_reported"]
    assert {(r["plan_id"], r["shard_total"]) for r in collector.runs()} == {(plan_id, 2)}


def test_xdist_empty_shard_exits_0_and_fail_fallback_exits_4(pytester: pytest.Pytester) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    empty = shard(pytester, url, 12, 13, "-n", "2")
    assert empty.ret == pytest.ExitCode.OK
    warning, line, empty_line, *_ = summary_lines(empty.outlines)
    assert "using the local fallback plan local-" in warning
    assert line.startswith("[testengine] shard 13/13: 0 of 12 tests, estimated 0.0 s, ")
    assert empty_line == (
        "[testengine] shard 13/13 has no tests to run: the plan gives all 12 collected tests "
        "to other shards (exit status 0)"
    )
    failed = shard(pytester, url, 0, 2, "-n", "2", "--testengine-split-fallback", "fail")
    assert failed.ret == pytest.ExitCode.USAGE_ERROR
    assert "passed" not in failed.stdout.str()
    assert summary_lines(failed.outlines)[0].startswith(
        "[testengine] no split plan from the collector: could not reach the collector at "
    )

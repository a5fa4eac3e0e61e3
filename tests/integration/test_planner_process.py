"""The planner in a real collector process: the plan cache survives a restart, concurrent shards
agree on one plan, and a dynamic queue re-leases the chunk of a shard that stopped asking."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_testengine.model import Batch, Result, RunInfo, new_id
from tests.plugin.helpers import stored
from tests.support.collector import CollectorFactory, CollectorProcess, collector_env

TESTS = [f"tests/test_{i % 7}.py::test_{i}" for i in range(300)]
DEADLINE = 60.0  # seconds any polling loop below may take before the test fails


def post(collector: CollectorProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client(timeout=30.0) as client:
        response = client.post(collector.url + path, json=body, headers=collector.headers())
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def plan(collector: CollectorProcess, index: int, **fields: Any) -> dict[str, Any]:
    body = {"build_id": "ci-42", "total": 4, "index": index, "tests": TESTS, **fields}
    return post(collector, "/v1/plans", body)


def history(collector: CollectorProcess, durations: dict[str, float]) -> None:
    """Passing results of an earlier build, stored before the test goes on."""
    run = RunInfo(run_id=new_id(), build_id="earlier")
    results = [
        Result(
            id=new_id(), nodeid=t, file=t.partition("::")[0], name=t, outcome="passed", duration=d
        )
        for t, d in durations.items()
    ]
    assert collector.post_batch(Batch(run, results)).status_code == 202
    stored(collector, len(results))  # and their durations merged (the processor caught up)


def test_plan_cache_survives_a_restart(collector: CollectorProcess) -> None:
    history(collector, {t: 0.01 * (i % 13 + 1) for i, t in enumerate(TESTS)})
    with ThreadPoolExecutor(4) as pool:  # four shards at once: one plan is made
        answers = list(pool.map(lambda i: plan(collector, i), range(4)))
    assert len({a["plan_id"] for a in answers}) == 1
    assert sorted(a["cached"] for a in answers) == [False, True, True, True]
    made = next(a for a in answers if not a["cached"])
    assert made["estimate_sources"]["history"] == len(TESTS)
    collector.kill()  # no shutdown code: the plan was durable when it was answered
    collector.start()
    again = plan(collector, 2)
    assert again["cached"] is True
    assert {**again, "cached": False} == made
    report = collector.get("/v1/suites/default/builds/ci-42").json()
    assert report["plans"][0]["asked_by"] == [0, 1, 2, 3]


def test_a_stopped_shard_only_delays_its_chunk(collector_factory: CollectorFactory) -> None:
    env = {
        "TESTENGINE_COLLECTOR_LEASE_SECONDS": "0.5",
        "TESTENGINE_COLLECTOR_LEASE_MARGIN": "0",
    }
    collector = collector_factory(env=env)
    tests = TESTS[:40]
    # 6 s of work: chunks of about 1 s (the smallest), leased for about 3 s each
    history(collector, dict.fromkeys(tests, 0.15))
    made = plan(collector, 0, total=3, mode="dynamic", tests=tests)
    plan_id, chunks = made["plan_id"], made["chunks"]
    next_path = f"/v1/plans/{plan_id}/next"
    ran: dict[int, list[int]] = {0: [], 1: [], 2: []}
    tests_ran: list[str] = []
    lock = threading.Lock()
    stopped = threading.Event()
    failures: list[BaseException] = []

    def shard(index: int, stop_after: int | None) -> None:
        try:
            completed: list[int] = []
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                answer = post(collector, next_path, {"index": index, "completed": completed})
                completed = []
                if answer["done"]:
                    return
                chunk = answer["chunk"]
                if chunk is None:
                    time.sleep(answer["retry_after"])  # polling, bounded by the deadline
                    continue
                with lock:
                    ran[index].append(chunk["id"])
                    tests_ran.extend(chunk["tests"])
                if stop_after is not None and len(ran[index]) == stop_after:
                    stopped.set()
                    return  # dies holding this chunk: never completes it
                completed = [chunk["id"]]
            raise AssertionError(f"shard {index} not done after {DEADLINE} s")
        except BaseException as exc:
            failures.append(exc)

    dying = threading.Thread(target=shard, args=(0, 1))
    dying.start()
    assert stopped.wait(DEADLINE)  # shard 0 holds the first (longest) chunk and stops
    healthy = [threading.Thread(target=shard, args=(i, None)) for i in (1, 2)]
    for thread in healthy:
        thread.start()
    for thread in (dying, *healthy):
        thread.join(DEADLINE + 5)
    assert not failures, failures
    assert ran[0] == [0]
    handed = sorted(ran[1] + ran[2])
    assert handed == list(range(chunks))  # chunk 0 once more, after its lease expired
    assert set(ran[1]).isdisjoint(ran[2])
    assert sorted(set(tests_ran)) == sorted(tests)
    report = collector.get("/v1/suites/default/builds/ci-42").json()
    assert report["dynamic"] == {
        "chunks": chunks,
        "completed": chunks,
        "leased": 0,
        "expired_leases": 0,
        "re_leased": 1,
    }


SUITE = """
import pytest

@pytest.mark.parametrize("i", range(12))
def test_param(i):
    assert i >= 0

def test_plain():
    pass
"""


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_plugin_shards_run_every_test_once(
    collector: CollectorProcess, tmp_path: Path, mode: str
) -> None:
    """Three real pytest shards with the plugin: one plan, every planned test run exactly once."""
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in "abcd":
        (suite / f"test_{name}.py").write_text(SUITE)
    env = collector_env({"TESTENGINE_URL": collector.url})
    shards = [
        subprocess.Popen(
            [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                "--testengine", "--testengine-build-id", f"e2e-{mode}",
                "--split-index", str(index), "--split-total", "3", "--split-mode", mode,
                "--testengine-split-fallback", "fail",
            ],
            cwd=suite,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(3)
    ]  # fmt: skip
    outputs = [shard.communicate(timeout=DEADLINE)[0] for shard in shards]
    for shard, output in zip(shards, outputs, strict=True):
        assert shard.returncode == 0, output
    collector.wait_for_results(52)
    report = collector.get(f"/v1/suites/default/builds/e2e-{mode}").json()
    assert len(report["plans"]) == 1, report
    assert report["plans"][0]["asked_by"] == [0, 1, 2]
    assert report["plans"][0]["mode"] == mode
    assert report["one_plan"] is True
    assert report["plans_reported"] == [report["plans"][0]["plan_id"]]
    assert report["shards_reported"] == [0, 1, 2] or mode == "dynamic"
    assert (report["planned"], report["ran"], report["not_run"]) == (52, 52, [])
    assert report["ran_more_than_once"] == 0
    assert len(collector.results()) == 52

"""The client side of splitting: settings and CI detection, the plan client against an
in-test fake of the plan endpoints, the fallback decisions, dynamic runs, message texts."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_testengine.ci import detect
from pytest_testengine.config import ConfigError, resolve
from pytest_testengine.leasing import DynamicRun
from pytest_testengine.sharding import (
    PlanAnswer,
    PlanClient,
    PlanUnavailable,
    Selection,
    SplitSpec,
    durations_for_fallback,
    empty_shard_line,
    fallback_selection,
    lease_from_answer,
    load_durations,
    plan_from_answer,
    short_id,
    split_spec,
    summary_line,
)
from pytest_testengine.splitting import dynamic_chunks, plan_tests
from pytest_testengine.transport import Rejected, Reply, Retry

IDS = [f"tests/test_{f}.py::test_{t}" for f in "abcd" for t in range(5)]


def spec(**kw: Any) -> SplitSpec:
    values: dict[str, Any] = {
        "index": 0,
        "total": 4,
        "by": "test",
        "mode": "static",
        "fallback": "local",
        "suite": "default",
        "build_id": "b1",
    }
    values.update(kw)
    return SplitSpec(**values)


def resolved(
    cli: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    ini: Mapping[str, object] | None = None,
    *,
    xdist: bool = False,
) -> SplitSpec | None:
    environ = dict(env or {})
    settings = resolve(dict(cli or {}), environ, dict(ini or {}), detect(environ))
    return split_spec(settings, xdist=xdist)


# -- settings, precedence, CI detection ------------------------------------------------------

BUILD = {"build_id": "b1"}
BUILDKITE = {
    "BUILDKITE": "true",
    "BUILDKITE_BUILD_ID": "bk-1",
    "BUILDKITE_PARALLEL_JOB": "2",
    "BUILDKITE_PARALLEL_JOB_COUNT": "5",
}


@pytest.mark.parametrize(
    ("cli", "env", "ini", "expected"),
    [
        pytest.param({}, {}, {}, None, id="not-a-shard"),
        pytest.param({"split_index": "1", "split_total": "4", **BUILD}, {}, {}, (1, 4), id="cli"),
        pytest.param(
            {**BUILD},
            {"TESTENGINE_SPLIT_INDEX": "2", "TESTENGINE_SPLIT_TOTAL": "3"},
            {},
            (2, 3),
            id="env",
        ),
        pytest.param(
            {**BUILD},
            {},
            {"testengine_split_index": "0", "testengine_split_total": "2"},
            (0, 2),
            id="ini",
        ),
        pytest.param(
            {"split_index": "0", **BUILD},
            {"TESTENGINE_SPLIT_INDEX": "1", "TESTENGINE_SPLIT_TOTAL": "3"},
            {"testengine_split_index": "2", "testengine_split_total": "9"},
            (0, 3),
            id="cli-over-env-over-ini",
        ),
        pytest.param({"enabled": True}, BUILDKITE, {}, (2, 5), id="buildkite-with-testengine"),
        pytest.param({}, BUILDKITE, {}, None, id="buildkite-without-testengine-no-split"),
        pytest.param(
            {},
            {**BUILDKITE, "TESTENGINE_SPLIT_INDEX": "4"},
            {},
            (4, 5),
            id="env-index-over-buildkite-turns-it-on",
        ),
        pytest.param(
            {"enabled": True, "split_total": "2"},
            {**BUILDKITE, "BUILDKITE_PARALLEL_JOB": "1"},
            {},
            (1, 2),
            id="cli-total-over-ci-total",
        ),
        pytest.param(
            {"enabled": True},
            {
                "CIRCLECI": "true",
                "CIRCLE_WORKFLOW_ID": "w",
                "CIRCLE_NODE_INDEX": "0",
                "CIRCLE_NODE_TOTAL": "4",
            },
            {},
            (0, 4),
            id="circleci",
        ),
        pytest.param(
            {"enabled": True},
            {
                "GITLAB_CI": "true",
                "CI_PIPELINE_ID": "77",
                "CI_NODE_INDEX": "3",
                "CI_NODE_TOTAL": "3",
            },
            {},
            (2, 3),
            id="gitlab-1-based",
        ),
        pytest.param(
            {"enabled": True},
            {
                "CIRCLECI": "true",
                "CIRCLE_WORKFLOW_ID": "w",
                "CIRCLE_NODE_INDEX": "0",
                "CIRCLE_NODE_TOTAL": "1",
            },
            {},
            None,
            id="circleci-without-parallelism-no-split",
        ),
        pytest.param(
            {"enabled": True},
            {"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "9"},
            {},
            None,
            id="github-has-no-parallel-variables",
        ),
    ],
)
def test_precedence_and_ci_detection(
    cli: dict[str, object], env: dict[str, str], ini: dict[str, object], expected: Any
) -> None:
    found = resolved(cli, env, ini)
    assert (None if found is None else (found.index, found.total)) == expected


def test_build_id_from_the_ci_and_the_other_settings() -> None:
    found = resolved(
        {"enabled": True, "split_by": "FILE", "split_mode": "dynamic"},
        {**BUILDKITE, "TESTENGINE_SPLIT_FALLBACK": "all", "TESTENGINE_SUITE": "api"},
        {"testengine_durations": ".test_durations"},
    )
    assert found == SplitSpec(
        index=2,
        total=5,
        by="file",
        mode="dynamic",
        fallback="all",
        suite="api",
        build_id="bk-1",
        durations=".test_durations",
        fallback_source="TESTENGINE_SPLIT_FALLBACK (env)",
    )


@pytest.mark.parametrize(
    ("cli", "env", "xdist", "message"),
    [
        pytest.param(
            {"split_index": "2", **BUILD},
            {},
            False,
            "[testengine] --split-index (command line) is 2 but the shard count is missing: "
            "expected --split-total N (or TESTENGINE_SPLIT_TOTAL) with it; "
            "see docs/troubleshooting.md#split-settings",
            id="index-only",
        ),
        pytest.param(
            {**BUILD},
            {"TESTENGINE_SPLIT_TOTAL": "8"},
            False,
            "[testengine] TESTENGINE_SPLIT_TOTAL (env) is 8 but the shard index is missing: "
            "expected --split-index I (or TESTENGINE_SPLIT_INDEX), 0-based, with it; "
            "see docs/troubleshooting.md#split-settings",
            id="total-only",
        ),
        pytest.param(
            {"split_index": "8", "split_total": "8", **BUILD},
            {},
            False,
            "[testengine] invalid value 8 for --split-index (command line): expected a shard "
            "index from 0 to 7, as --split-total (command line) is 8 (the index is 0-based); "
            "see docs/troubleshooting.md#split-settings",
            id="index-out-of-range",
        ),
        pytest.param(
            {"split_total": "2", "enabled": True},
            BUILDKITE,
            False,
            "[testengine] invalid value 2 for buildkite parallel job variables (CI detection): "
            "expected a shard index from 0 to 1, as --split-total (command line) is 2 (the "
            "index is 0-based); see docs/troubleshooting.md#split-settings",
            id="ci-index-out-of-range-of-cli-total",
        ),
        pytest.param(
            {"split_index": "0", "split_total": "2"},
            {},
            False,
            "[testengine] splitting needs a build id shared by every shard of the build, and "
            "none was found: expected --testengine-build-id ID or TESTENGINE_BUILD_ID set to "
            "the same value on every shard (Buildkite, GitHub Actions, CircleCI, GitLab and "
            "Jenkins give one); see docs/troubleshooting.md#no-build-id",
            id="no-build-id",
        ),
        pytest.param(
            {"split_index": "0", "split_total": "2", "split_mode": "dynamic", **BUILD},
            {},
            True,
            "[testengine] --split-mode (command line) is dynamic, which does not work with "
            "pytest-xdist (-n): expected --split-mode static with -n, or no -n; "
            "see docs/splitting.md#dynamic-mode",
            id="dynamic-with-xdist",
        ),
    ],
)
def test_usage_errors(
    cli: dict[str, object], env: dict[str, str], xdist: bool, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolved(cli, env, xdist=xdist)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param("TESTENGINE_SPLIT_INDEX", "-1", "an integer, 0 or more", id="index"),
        pytest.param("TESTENGINE_SPLIT_TOTAL", "0", "a positive integer", id="total"),
        pytest.param("TESTENGINE_SPLIT_BY", "class", "one of test, file", id="by"),
        pytest.param("TESTENGINE_SPLIT_MODE", "fast", "one of static, dynamic", id="mode"),
        pytest.param("TESTENGINE_SPLIT_FALLBACK", "x", "one of local, all, fail", id="fallback"),
    ],
)
def test_invalid_values_name_setting_value_source_and_expectation(
    name: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve({}, {name: value}, {})
    assert str(caught.value) == (
        f"[testengine] invalid value {value!r} for {name} (env): expected {expected}"
    )


# -- an in-test fake of the plan endpoints -----------------------------------------------------


@dataclass
class FakeCollector:
    """``POST /v1/plans`` and ``/next`` in memory; ``fail`` scripts answers per call."""

    url: str = "http://fake"
    durations: dict[str, float] = field(default_factory=dict)
    fail: list[Retry | Rejected | None] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    chunks: dict[int, tuple[str, ...]] = field(default_factory=dict)
    leased: dict[int, int] = field(default_factory=dict)
    completed: set[int] = field(default_factory=set)

    def call(self, path: str, payload: Any, *, timeout: float | None = None) -> Any:
        self.calls.append((path, payload))
        if self.fail:
            answer = self.fail.pop(0)
            if answer is not None:
                return answer
        if path == "/v1/plans":
            return Reply(200, self.plan(payload))
        return Reply(200, self.next(payload))

    def plan(self, body: dict[str, Any]) -> dict[str, Any]:
        base = {"plan_id": "7f3c9a0e11", "without_history": 3, "cached": False}
        if body["mode"] == "dynamic":
            queue = dynamic_chunks(body["tests"], dict.fromkeys(body["tests"], 1.0), body["total"])
            self.chunks = {c.index: c.test_ids for c in queue}
            return {**base, "shards": [], "chunks": len(queue), "lease_seconds": 30}
        plan, _ = plan_tests(body["tests"], self.durations, body["total"], by=body["by"])
        shards = [
            {"index": s.index, "tests": list(s.test_ids), "estimated": s.estimate}
            for s in plan.shards
        ]
        return {**base, "shards": shards, "estimated_total": plan.total}

    def next(self, body: dict[str, Any]) -> dict[str, Any]:
        self.completed.update(body["completed"])
        free = [c for c in self.chunks if c not in self.completed and c not in self.leased]
        if body.get("take", True) is False:
            free = []  # a renewal only
        remaining = len(self.chunks) - len(self.completed)
        if free:
            self.leased[free[0]] = body["index"]
            tests = list(self.chunks[free[0]])
            chunk = {"id": free[0], "tests": tests, "estimated": float(len(tests))}
            return {"chunk": chunk, "done": False, "retry_after": None, "remaining": remaining}
        return {
            "chunk": None,
            "done": remaining == 0,
            "retry_after": None if remaining == 0 else 0.5,
            "lease_seconds": 30,
            "remaining": remaining,
        }


def client(fake: FakeCollector, sleeps: list[float] | None = None) -> PlanClient:
    return PlanClient(fake, sleep=(sleeps if sleeps is not None else []).append)


def test_every_shard_gets_its_share_and_the_union_is_exact() -> None:
    fake = FakeCollector(durations={test_id: float(n) for n, test_id in enumerate(IDS)})
    shares = [client(fake).create(spec(index=i), IDS) for i in range(4)]
    assert sorted(t for share in shares for t in share.tests) == sorted(IDS)
    assert all(share.plan_id == "7f3c9a0e11" and share.without_history == 3 for share in shares)
    assert fake.calls[0][1] == {
        "suite": "default",
        "build_id": "b1",
        "total": 4,
        "index": 0,
        "by": "test",
        "mode": "static",
        "tests": IDS,
    }


def test_retries_transient_failures_with_a_capped_wait() -> None:
    fake = FakeCollector(fail=[Retry("down", unreachable=True), Retry("busy", retry_after=30.0)])
    sleeps: list[float] = []
    answer = client(fake, sleeps).create(spec(), IDS)
    assert answer.plan_id == "7f3c9a0e11"
    assert len(fake.calls) == 3
    assert sleeps[1] == 2.0  # Retry-After 30 s, capped
    assert sleeps[0] <= 1.0


def test_an_unexpected_error_becomes_plan_unavailable() -> None:
    class Broken(FakeCollector):
        def call(self, path: str, payload: Any, *, timeout: float | None = None) -> Any:
            raise ValueError("boom")

    with pytest.raises(PlanUnavailable) as caught:
        client(Broken()).create(spec(), IDS)
    assert str(caught.value) == "the request to /v1/plans failed (ValueError: boom)"


def test_gives_up_after_three_attempts_and_at_once_on_a_rejection() -> None:
    fake = FakeCollector(fail=[Retry("could not reach the collector")] * 5)
    with pytest.raises(PlanUnavailable, match="could not reach the collector"):
        client(fake).create(spec(), IDS)
    assert len(fake.calls) == 3
    fake = FakeCollector(fail=[Rejected(404, "the collector answered 404", keep=False)])
    with pytest.raises(PlanUnavailable, match="404"):
        client(fake).create(spec(), IDS)
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        pytest.param([], "has no plan_id", id="not-an-object"),
        pytest.param({"plan_id": "p", "shards": []}, "does not have 4 shards", id="no-shards"),
        pytest.param(
            {"plan_id": "p", "shards": [{"index": i, "tests": IDS[:1]} for i in range(4)]},
            r"does not match the collected tests \(19 missing, 0 unknown, 3 twice\)",
            id="wrong-tests",
        ),
        pytest.param(
            {"plan_id": "p", "shards": [{"index": 0, "tests": IDS}] * 4},
            "does not have shards 0 to 3",
            id="wrong-indexes",
        ),
        pytest.param(
            {"plan_id": "p", "shards": [{"index": i, "tests": "x"} for i in range(4)]},
            "no valid shard tests",
            id="tests-not-a-list",
        ),
    ],
)
def test_a_plan_that_does_not_cover_the_collection_is_refused(answer: Any, message: str) -> None:
    with pytest.raises(PlanUnavailable, match=message):
        plan_from_answer(answer, spec(), IDS)


def test_lease_answers() -> None:
    lease = lease_from_answer(
        {"chunk": {"id": 3, "tests": ["a"], "estimated": 1.5}, "done": False, "remaining": 4}
    )
    assert (lease.chunk and lease.chunk.id, lease.done, lease.remaining) == (3, False, 4)
    with pytest.raises(PlanUnavailable, match="no done flag"):
        lease_from_answer({"chunk": None})
    with pytest.raises(PlanUnavailable, match="invalid chunk"):
        lease_from_answer({"chunk": 7, "done": False})


# -- fallback --------------------------------------------------------------------------------


def test_local_fallback_is_the_same_on_every_shard_and_covers_every_test_once() -> None:
    durations = {test_id: 0.1 * n for n, test_id in enumerate(IDS)}
    shuffled = list(reversed(IDS))
    shares = [
        fallback_selection(spec(index=i), IDS if i % 2 else shuffled, "down", durations)
        for i in range(4)
    ]
    assert len({share.plan_id for share in shares}) == 1
    kept = [t for share in shares for t in share.keep or ()]
    assert sorted(kept) == sorted(IDS)
    assert shares[0].warning == (
        "[testengine] no split plan from the collector: down; using the local fallback plan "
        f"{shares[0].plan_id}, which every shard computes alike from the collected tests; "
        "see docs/troubleshooting.md#no-split-plan"
    )


def test_fallback_all_and_fail() -> None:
    every = fallback_selection(
        spec(fallback="all", fallback_source="--testengine-split-fallback (command line)"),
        IDS,
        "down",
        {},
    )
    assert (every.keep, every.plan_id) == (None, None)
    assert every.warning == (
        "[testengine] no split plan from the collector: down; this shard runs every test "
        "(--testengine-split-fallback (command line) is all); "
        "see docs/troubleshooting.md#no-split-plan"
    )
    with pytest.raises(ConfigError) as caught:
        fallback_selection(
            spec(fallback="fail", fallback_source="TESTENGINE_SPLIT_FALLBACK (env)"),
            IDS,
            "could not reach the collector at http://x (connection refused)",
            {},
        )
    assert str(caught.value) == (
        "[testengine] no split plan from the collector: could not reach the collector at "
        "http://x (connection refused); no tests run because TESTENGINE_SPLIT_FALLBACK (env) "
        "is fail: to run anyway, pass --testengine-split-fallback local (every shard computes "
        "the same plan) or all (every shard runs every test); "
        "see docs/troubleshooting.md#no-split-plan"
    )


def test_durations_file_formats(tmp_path: Path) -> None:
    path = tmp_path / ".test_durations"
    path.write_text('{"a": 1.5, "b": "x", "c": -1}')
    assert load_durations(path) == {"a": 1.5}
    path.write_text('[["a", 2], ["b", 3.5]]')
    assert load_durations(path) == {"a": 2.0, "b": 3.5}
    path.write_text("[1, 2")
    durations, note = durations_for_fallback(str(path))
    assert durations == {}
    assert note is not None
    assert note.startswith(f"durations file {path} not used (")
    assert durations_for_fallback(str(tmp_path / "missing")) == (
        {},
        f"durations file {tmp_path / 'missing'} not used (No such file or directory)",
    )


# -- messages --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        pytest.param(
            Selection(keep=frozenset(), plan_id="7f3c9a0e11aa", estimated=61.44),
            "[testengine] shard 3/8: 412 of 3,290 tests, estimated 61.4 s (plan 7f3c9a0e…)",
            id="plan",
        ),
        pytest.param(
            Selection(keep=frozenset(), plan_id="p1", estimated=1234.5, without_history=12),
            "[testengine] shard 3/8: 412 of 3,290 tests, estimated 1,234.5 s, "
            "12 without history (plan p1)",
            id="without-history",
        ),
        pytest.param(
            Selection(keep=None, plan_id=None, estimated=None),
            "[testengine] shard 3/8: 412 of 3,290 tests (no plan: every test)",
            id="all",
        ),
    ],
)
def test_summary_line(selection: Selection, expected: str) -> None:
    assert summary_line(spec(index=2, total=8), selection, ran=412, collected=3290) == expected


def test_short_ids_and_the_empty_shard_line() -> None:
    assert short_id("local-0123456789abcdef") == "local-01234567…"
    assert short_id("29af399eb2b73a73") == "29af399e…"
    assert short_id("abc") == "abc"
    assert empty_shard_line(spec(index=7, total=8), 5) == (
        "[testengine] shard 8/8 has no tests to run: the plan gives all 5 collected tests to "
        "other shards (exit status 0)"
    )


# -- dynamic runs ----------------------------------------------------------------------------


class FakeSession:
    """What DynamicRun uses of a pytest session; ``stop_after`` emulates -x / maxfail."""

    Interrupted = type("Interrupted", (Exception,), {})
    Failed = type("Failed", (Exception,), {})

    def __init__(self, stop_after: int | None = None) -> None:
        self.runs: list[tuple[str, str | None]] = []
        self.shouldfail: str | bool = False
        self.shouldstop: str | bool = False
        self.stop_after = stop_after

    def item(self, nodeid: str) -> Any:
        def protocol(*, item: Any, nextitem: Any) -> None:
            self.runs.append((item.nodeid, nextitem.nodeid if nextitem else None))
            if self.stop_after is not None and len(self.runs) >= self.stop_after:
                self.shouldfail = "stopping after 1 failures"

        return SimpleNamespace(
            nodeid=nodeid, ihook=SimpleNamespace(pytest_runtest_protocol=protocol)
        )


def dynamic(fake: FakeCollector, *, fallback: str = "local", index: int = 0) -> DynamicRun:
    the_spec = spec(mode="dynamic", fallback=fallback, index=index)
    plan = PlanClient(fake, sleep=lambda s: None)
    answer = plan.create(the_spec, IDS)
    assert isinstance(answer, PlanAnswer)
    lines: list[str] = []
    run = DynamicRun(
        the_spec,
        plan,
        answer.plan_id,
        lease_seconds=answer.lease_seconds,
        fallback=lambda problem: fallback_selection(the_spec, IDS, problem, {}),
        write=lines.append,
        sleep=lambda s: None,
    )
    run.lines = lines  # type: ignore[attr-defined]
    return run


def test_dynamic_runs_every_chunk_with_the_right_nextitem_and_reports_completions() -> None:
    fake = FakeCollector()
    run = dynamic(fake)
    session = FakeSession()
    run.run(session, [session.item(t) for t in IDS])  # type: ignore[arg-type]
    ran = [nodeid for nodeid, _ in session.runs]
    assert sorted(ran) == sorted(IDS)
    assert [nxt for _, nxt in session.runs] == [*ran[1:], None]
    assert fake.completed == set(fake.chunks)
    assert run.chunks == len(fake.chunks) > 1
    nexts = [payload for path, payload in fake.calls if path.endswith("/next")]
    assert nexts[1]["holding"] == [0]  # asked before the last test of chunk 0
    assert 0 in nexts[2]["completed"]


def test_dynamic_collector_down_mid_run_runs_the_rest_of_the_local_share_never_twice() -> None:
    fake = FakeCollector()
    run = dynamic(fake)
    fake.fail = [None, *[Retry("could not reach the collector", unreachable=True)] * 20]
    session = FakeSession()
    run.run(session, [session.item(t) for t in IDS])  # type: ignore[arg-type]
    ran = [nodeid for nodeid, _ in session.runs]
    assert len(ran) == len(set(ran))
    assert [nxt for _, nxt in session.runs] == [*ran[1:], None]  # nextitem is what runs next
    first_chunk = set(fake.chunks[0])
    share = fallback_selection(spec(mode="dynamic"), IDS, "x", {}).keep or frozenset()
    assert set(ran) == first_chunk | share
    lines = run.lines  # type: ignore[attr-defined]
    assert len(lines) == 1
    assert lines[0].startswith(
        "[testengine] no split plan from the collector: could not reach the collector; "
        "using the local fallback plan local-"
    )
    assert lines[0].endswith(f"({len(share - first_chunk)} tests left for this shard)")


def test_dynamic_fail_fallback_interrupts_and_maxfail_stops() -> None:
    fake = FakeCollector()
    run = dynamic(fake, fallback="fail")
    fake.fail = [Retry("gone")] * 5
    session = FakeSession()
    with pytest.raises(FakeSession.Interrupted, match="no tests run because"):
        run.run(session, [session.item(t) for t in IDS])  # type: ignore[arg-type]
    run = dynamic(FakeCollector())
    session = FakeSession(stop_after=2)
    with pytest.raises(FakeSession.Failed, match="stopping after"):
        run.run(session, [session.item(t) for t in IDS])  # type: ignore[arg-type]
    assert len(session.runs) == 2


def test_dynamic_waits_retry_after_while_other_shards_hold_chunks() -> None:
    fake = FakeCollector()
    run = dynamic(fake)
    fake.next({"index": 1, "completed": [], "holding": []})  # another shard holds chunk 0
    sleeps: list[float] = []
    run.sleep = sleeps.append
    session = FakeSession()
    original = fake.next

    def next_then_release(body: dict[str, Any]) -> dict[str, Any]:
        if sleeps and 0 not in fake.completed:
            fake.completed.add(0)  # the other shard finished
        return original(body)

    fake.next = next_then_release  # type: ignore[method-assign]
    run.run(session, [session.item(t) for t in IDS])  # type: ignore[arg-type]
    assert sleeps == [0.5]
    assert sorted(n for n, _ in session.runs) == sorted(set(IDS) - set(fake.chunks[0]))


def test_dynamic_heartbeat_renews_the_leases_of_a_long_chunk_and_stops_at_the_end() -> None:
    fake = FakeCollector()
    run = dynamic(fake)
    run.lease_seconds = 0.3  # the heartbeat checks every 0.2 s and renews after 0.5 s
    renewed = threading.Event()
    heartbeats: list[dict[str, Any]] = []
    original = fake.next

    def watch(body: dict[str, Any]) -> dict[str, Any]:
        if threading.current_thread() is not threading.main_thread() and body["holding"]:
            heartbeats.append(body)
            renewed.set()
        return original(body)

    fake.next = watch  # type: ignore[method-assign]
    session = FakeSession()
    items = [session.item(t) for t in IDS]
    first = items[0].ihook.pytest_runtest_protocol

    def long_test(*, item: Any, nextitem: Any) -> None:
        if not renewed.is_set():
            assert renewed.wait(timeout=30), "no lease renewal while the test ran"
        first(item=item, nextitem=nextitem)

    items[0].ihook.pytest_runtest_protocol = long_test
    run.run(session, items)  # type: ignore[arg-type]
    assert sorted(n for n, _ in session.runs) == sorted(IDS)
    assert run._beat is not None
    assert not run._beat.is_alive()
    assert heartbeats
    assert all(body["take"] is False for body in heartbeats)  # renewals only


def test_dynamic_stops_waiting_after_a_bound_with_a_message() -> None:
    fake = FakeCollector()
    run = dynamic(fake, index=2)
    for other in range(len(fake.chunks)):  # other shards hold every chunk, forever
        fake.leased[other] = 0
    now = [0.0]
    run.clock = lambda: now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    run.sleep = sleep
    session = FakeSession()
    run.run(session, [session.item(t) for t in IDS])  # type: ignore[arg-type]
    assert session.runs == []
    assert now[0] == pytest.approx(3 * 30 + 30)
    assert run.lines == [  # type: ignore[attr-defined]
        "[testengine] shard 3/4 stopped waiting for a chunk of plan 7f3c9a0e11: the other "
        "shards still hold the rest after 120 s; see docs/troubleshooting.md#dynamic-split-waits"
    ]

"""Reports -> results: outcomes, phases, messages, locations, attempts, tags."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_testengine.capture import Assembler, split_nodeid, truncate
from pytest_testengine.model import OUTCOMES, RESULT_FIELDS, result_from_dict
from pytest_testengine.tags import Limits

NODEID = "tests/test_a.py::TestX::test_y[1-a]"


def report(when: str, outcome: str = "passed", **kw: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "nodeid": NODEID,
        "when": when,
        "outcome": outcome,
        "duration": {"setup": 0.1, "call": 0.2, "teardown": 0.3}.get(when, 0.5),
        "location": ("tests/test_a.py", 9, "TestX.test_y[1-a]"),
        "longrepr": None,
        "longreprtext": "",
        "start": {"setup": 100.0, "call": 100.1, "teardown": 100.3}.get(when, 100.0),
        "stop": {"setup": 100.1, "call": 100.3, "teardown": 100.6}.get(when, 100.6),
    }
    values.update(kw)
    return SimpleNamespace(**values)


def run(*reports: SimpleNamespace, assembler: Assembler | None = None) -> dict[str, Any]:
    assembler = assembler or Assembler()
    results = [assembler.test_report(r) for r in reports]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None
    return results[-1]


FAIL = {
    "longrepr": "E assert 1 == 2",
    "longreprtext": "def test_y():\n>   assert 1 == 2\nE   assert 1 == 2",
}
SKIP = {"longrepr": ("tests/test_a.py", 10, "Skipped: not on linux")}


@pytest.mark.parametrize(
    ("reports", "outcome", "when", "message"),
    [
        pytest.param(
            [report("setup"), report("call"), report("teardown")], "passed", None, None, id="passed"
        ),
        pytest.param(
            [report("setup"), report("call", "failed", **FAIL), report("teardown")],
            "failed",
            "call",
            FAIL["longreprtext"],
            id="failed",
        ),
        pytest.param(
            [report("setup", "failed", **FAIL), report("teardown")],
            "error",
            "setup",
            FAIL["longreprtext"],
            id="setup-error",
        ),
        pytest.param(
            [report("setup"), report("call"), report("teardown", "failed", **FAIL)],
            "error",
            "teardown",
            FAIL["longreprtext"],
            id="teardown-error",
        ),
        pytest.param(
            [
                report("setup"),
                report("call", "failed", longrepr="x", longreprtext="call broke"),
                report("teardown", "failed", longrepr="y", longreprtext="teardown broke"),
            ],
            "failed",
            "call",
            "call broke",
            id="failed-and-teardown-error-keeps-the-failure",
        ),
        pytest.param(
            [report("setup", "skipped", **SKIP), report("teardown")],
            "skipped",
            "setup",
            "not on linux",
            id="skipped-in-setup",
        ),
        pytest.param(
            [report("setup"), report("call", "skipped", **SKIP), report("teardown")],
            "skipped",
            "call",
            "not on linux",
            id="skipped-in-call",
        ),
        pytest.param(
            [report("setup"), report("call", "skipped", wasxfail="known bug"), report("teardown")],
            "xfailed",
            "call",
            "known bug",
            id="xfailed",
        ),
        pytest.param(
            [report("setup", "skipped", wasxfail="reason: not run"), report("teardown")],
            "xfailed",
            "setup",
            "not run",
            id="xfailed-run-false",
        ),
        pytest.param(
            [report("setup"), report("call", "passed", wasxfail=""), report("teardown")],
            "xpassed",
            "call",
            "xfail",
            id="xpassed",
        ),
        pytest.param(
            [report("setup"), report("call", "passed"), report("teardown", "skipped", **SKIP)],
            "passed",
            None,
            None,
            id="teardown-skip-is-not-an-outcome",
        ),
    ],
)
def test_outcomes(
    reports: list[SimpleNamespace], outcome: str, when: str | None, message: str | None
) -> None:
    result = run(*reports)
    assert (result["outcome"], result["when"], result["message"]) == (outcome, when, message)
    assert result["outcome"] in OUTCOMES


def test_a_result_has_every_wire_field_and_round_trips_through_the_model() -> None:
    result = run(report("setup"), report("call"), report("teardown"))
    assert tuple(result) == RESULT_FIELDS
    model = result_from_dict(result)
    assert model.nodeid == NODEID
    assert (model.file, model.scope, model.name, model.params) == (
        "tests/test_a.py",
        "TestX",
        "test_y",
        "1-a",
    )
    assert model.line == 10  # 1-based
    assert (model.setup, model.call, model.teardown) == (0.1, 0.2, 0.3)
    assert model.duration == pytest.approx(0.6)
    assert (model.start, model.stop) == (100.0, 100.6)
    assert model.attempt == 1
    assert model.worker is None
    assert len(model.id) == 32


def test_results_get_unique_ids() -> None:
    assembler = Assembler()
    ids = {
        run(report("setup"), report("call"), report("teardown"), assembler=assembler)["id"]
        for _ in range(100)
    }
    assert len(ids) == 100


def test_xdist_workers_running_the_same_test_do_not_mix() -> None:
    assembler = Assembler()
    a = [report(w, worker_id="gw0") for w in ("setup", "call", "teardown")]
    b = [
        report(w, worker_id="gw1", outcome="failed" if w == "call" else "passed", **FAIL)
        for w in ("setup", "call", "teardown")
    ]
    done = [assembler.test_report(r) for r in (a[0], b[0], a[1], b[1], b[2], a[2])]
    finished = [r for r in done if r is not None]
    assert [(r["worker"], r["outcome"]) for r in finished] == [("gw1", "failed"), ("gw0", "passed")]


def test_items_sharing_one_location_object_stay_apart() -> None:
    # pytest gives the reports of one item its location object, and the assembler follows
    # an execution by it; a plugin's items may share one, which must not mix them up
    assembler = Assembler()
    location = ("tests/custom.yaml", 0, "case")
    other = "tests/custom.yaml::case2"
    done = [
        assembler.test_report(
            report(w, "failed", location=location, nodeid=n, **FAIL)
            if (n, w) == (other, "call")
            else report(w, location=location, nodeid=n)
        )
        for n in (NODEID, other)
        for w in ("setup", "call", "teardown")
    ]
    finished = [r for r in done if r is not None]
    assert [(r["nodeid"], r["outcome"]) for r in finished] == [
        (NODEID, "passed"),
        (other, "failed"),
    ]


def test_reruns_count_attempts() -> None:
    assembler = Assembler()
    first = run(
        report("setup"),
        report("call", "rerun", **FAIL),
        report("teardown"),
        assembler=assembler,
    )
    second = run(report("setup"), report("call"), report("teardown"), assembler=assembler)
    assert (first["outcome"], first["attempt"]) == ("failed", 1)
    assert (second["outcome"], second["attempt"]) == ("passed", 2)
    assert "_rerun" not in first


def subtest(
    outcome: str, msg: str | None = None, *, attrs: dict[str, Any] | None = None, **kwargs: Any
) -> SimpleNamespace:
    """A subtest's report: a call report with the subtest's context (``kwargs``)."""
    extra: dict[str, Any] = {"context": SimpleNamespace(msg=msg, kwargs=kwargs), **(attrs or {})}
    if outcome == "failed":
        extra.update(longrepr="E", longreprtext=f"E   AssertionError: {msg} {kwargs}")
    elif outcome == "skipped":
        extra.update(longrepr=("tests/test_a.py", 10, "Skipped: not here"))
    return report("call", outcome, **extra)


@pytest.mark.parametrize(
    "subtests",
    [
        pytest.param([subtest("skipped", i=0)], id="skipped"),
        pytest.param([subtest("skipped", i=0, attrs={"wasxfail": "reason: known"})], id="xfailed"),
        pytest.param([subtest("passed", i=0, attrs={"wasxfail": ""})], id="xpassed"),
        pytest.param([subtest("passed", i=0), subtest("skipped", i=1)], id="passed-skipped"),
    ],
)
def test_subtests_that_did_not_fail_leave_the_test_passed(
    subtests: list[SimpleNamespace],
) -> None:
    result = run(report("setup"), *subtests, report("call"), report("teardown"))
    assert (result["outcome"], result["when"], result["message"]) == ("passed", None, None)
    assert result["call"] == 0.2  # the test's own call report, not a subtest's


def test_failed_subtests_are_added_to_the_tests_failure() -> None:
    # pytest >= 9 fails the test itself when a subtest failed
    final = report("call", "failed", longrepr="x", longreprtext="contains 2 failed subtests")
    failures = [subtest("failed", "check", i=1), subtest("passed", i=2), subtest("failed", j="x")]
    result = run(report("setup"), *failures, final, report("teardown"))
    assert (result["outcome"], result["when"]) == ("failed", "call")
    assert result["message"] == (
        "contains 2 failed subtests"
        "\n\nsubtest [check] (i=1)\nE   AssertionError: check {'i': 1}"
        "\n\nsubtest (j=x)\nE   AssertionError: None {'j': 'x'}"
    )
    assert result["call"] == 0.2
    assert "_subtests" not in result


def test_a_test_passed_although_a_subtest_failed_is_failed() -> None:
    # pytest-subtests before pytest 9 passed the test itself
    result = run(report("setup"), subtest("failed"), report("call"), report("teardown"))
    assert (result["outcome"], result["when"]) == ("failed", "call")
    assert result["message"] == (
        "contains 1 failed subtest\n\nsubtest (<subtest>)\nE   AssertionError: None {}"
    )


def test_a_subtests_failures_are_truncated_at_the_limit() -> None:
    failures = [subtest("failed", "x" * 300, i=i) for i in range(5)]
    result = run(
        report("setup"),
        *failures,
        report("call"),
        report("teardown"),
        assembler=Assembler(message_limit=200),
    )
    assert result["outcome"] == "failed"
    assert len(result["message"]) == 200
    assert result["message"].startswith("contains 5 failed subtests\n\nsubtest [xxx")
    assert result["message"].endswith("{'i': 4}")


def test_a_crashed_worker_report_finishes_the_execution_at_once() -> None:
    crash = report(
        "???",
        "failed",
        longrepr="worker 'gw0' crashed",
        longreprtext="worker 'gw0' crashed while running",
    )
    assembler = Assembler()
    assembler.test_report(report("setup"))
    result = assembler.test_report(crash)
    assert result is not None
    assert (result["outcome"], result["when"]) == ("failed", "call")
    assert assembler.unfinished() == []


def test_unfinished_executions_are_returned_at_the_end() -> None:
    assembler = Assembler()
    assert assembler.test_report(report("setup")) is None
    (result,) = assembler.unfinished()
    assert result["nodeid"] == NODEID
    assert result["stop"] == pytest.approx(100.1)
    assert assembler.unfinished() == []


def test_messages_are_truncated_at_the_limit() -> None:
    long = "x" * 5000 + "END"
    result = run(
        report("setup"),
        report("call", "failed", longrepr=long, longreprtext=long),
        report("teardown"),
        assembler=Assembler(message_limit=200),
    )
    assert len(result["message"]) == 200
    assert result["message"].endswith("END")
    assert "[4803 characters truncated]" in result["message"]


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("short", 10, "short", id="under"),
        pytest.param("abcdef", 6, "abcdef", id="exact"),
        pytest.param("abcdefghij", 4, "abcd", id="tiny-limit"),
    ],
)
def test_truncate(text: str, limit: int, expected: str) -> None:
    assert truncate(text, limit) == expected


def test_tags_from_the_report_are_kept_within_limits() -> None:
    assembler = Assembler(limits=Limits(max_tags=2, max_length=5))
    tags = {"a": "1", "toolongkey": "2", "b": "2", "c": "3"}
    result = run(
        report("setup"),
        report("call"),
        report("teardown", testengine_tags=tags),
        assembler=assembler,
    )
    assert result["tags"] == {"a": "1", "b": "2"}
    assert assembler.tag_note_count == 1
    assert assembler.tag_notes == [
        f"{NODEID}: 1 over the limit of 2 tags (TESTENGINE_MAX_TAGS) and "
        "1 longer than 5 characters (TESTENGINE_MAX_TAG_LENGTH)"
    ]


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        pytest.param("t/test_a.py::test_b", ("t/test_a.py", "", "test_b", None), id="function"),
        pytest.param(
            "t/test_a.py::C::D::test_b", ("t/test_a.py", "C::D", "test_b", None), id="nested"
        ),
        pytest.param(
            "test_a.py::test_b[x::y]", ("test_a.py", "", "test_b", "x::y"), id="colons-in-params"
        ),
        pytest.param(
            "test_a.py::test_b[a[1]]", ("test_a.py", "", "test_b", "a[1]"), id="brackets-in-params"
        ),
        pytest.param(
            "t/[dir]/test_a.py::test_b",
            ("t/[dir]/test_a.py", "", "test_b", None),
            id="bracket-in-path",
        ),
        pytest.param("t/test_a.py", ("t/test_a.py", "", "test_a.py", None), id="module"),
    ],
)
def test_split_nodeid(nodeid: str, expected: tuple[str, str, str, str | None]) -> None:
    assert split_nodeid(nodeid) == expected


@pytest.mark.parametrize(
    ("outcome", "longrepr", "expected"),
    [
        pytest.param("passed", None, None, id="passed-is-not-reported"),
        pytest.param(
            "failed", "ImportError: no module x", ("error", "ImportError: no module x"), id="error"
        ),
        pytest.param(
            "skipped",
            ("t/test_a.py", 1, "Skipped: needs a GPU"),
            ("skipped", "needs a GPU"),
            id="module-skip",
        ),
    ],
)
def test_collection_reports(outcome: str, longrepr: Any, expected: tuple[str, str] | None) -> None:
    text = longrepr if isinstance(longrepr, str) else ""
    rep = SimpleNamespace(
        nodeid="t/test_a.py", outcome=outcome, longrepr=longrepr, longreprtext=text
    )
    result = Assembler().collect_report(rep)
    if expected is None:
        assert result is None
        return
    assert result is not None
    assert (result["outcome"], result["message"], result["when"]) == (*expected, "collect")
    assert (result["file"], result["name"]) == ("t/test_a.py", "test_a.py")
    assert tuple(result) == RESULT_FIELDS


def test_convert_turns_a_stream_of_reports_into_results_in_order() -> None:
    assembler = Assembler()
    other = "tests/test_b.py::test_z"
    collect = SimpleNamespace(
        nodeid="t/test_broken.py",
        when="collect",
        outcome="failed",
        longrepr="ImportError",
        longreprtext="ImportError",
    )
    first = assembler.convert(
        [report("setup"), collect, report("call"), report("setup", nodeid=other)]
    )
    assert [(r["nodeid"], r["when"]) for r in first] == [("t/test_broken.py", "collect")]
    second = assembler.convert([report("teardown"), report("call", nodeid=other)])
    assert [r["nodeid"] for r in second] == [NODEID]
    assert second[0]["duration"] == pytest.approx(0.6)
    (rest,) = assembler.unfinished()
    assert rest["nodeid"] == other
    assert assembler.unfinished() == []
    assert assembler.errors == []


def test_a_report_that_cannot_be_converted_costs_only_itself() -> None:
    assembler = Assembler()
    broken = SimpleNamespace(nodeid=NODEID, when="call")  # no outcome, no duration
    results = assembler.convert(
        [broken, report("setup", nodeid="a.py::t"), report("teardown", nodeid="a.py::t")]
    )
    assert [r["nodeid"] for r in results] == ["a.py::t"]
    assert len(assembler.errors) == 1
    assert assembler.errors[0].startswith("internal error of the plugin (KeyError:")

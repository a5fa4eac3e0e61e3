"""Node id parsing and duration estimates (pytest_testengine.estimates)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_testengine.estimates import (
    DEFAULT_DURATION,
    DEFAULT_OVERHEAD,
    ESTIMATE_SOURCES,
    MAX_DURATION,
    NodeId,
    estimate,
    file_of,
    function_of,
    median,
    parse_nodeid,
)


@pytest.mark.parametrize(
    ("nodeid", "file", "scope", "name", "params"),
    [
        pytest.param("tests/test_a.py::test_x", "tests/test_a.py", "", "test_x", None, id="plain"),
        pytest.param(
            "tests/test_a.py::TestX::test_y[1-2]",
            "tests/test_a.py",
            "TestX",
            "test_y",
            "1-2",
            id="class-params",
        ),
        pytest.param(
            "t/test_a.py::TestX::TestIn::test_y[a::b]",
            "t/test_a.py",
            "TestX::TestIn",
            "test_y",
            "a::b",
            id="nested-classes-colons-in-params",
        ),
        pytest.param(
            "test_a.py::test_y[[1, 2]-x]",
            "test_a.py",
            "",
            "test_y",
            "[1, 2]-x",
            id="nested-brackets",
        ),
        pytest.param(
            "test_a.py::test_y[a]b]", "test_a.py", "", "test_y", "a]b", id="bracket-inside"
        ),
        pytest.param(
            "tests/[w]/test_a.py::test_y[1]",
            "tests/[w]/test_a.py",
            "",
            "test_y",
            "1",
            id="bracket-in-path",
        ),
        pytest.param(
            "tests/[w]/test_a.py::test_y", "tests/[w]/test_a.py", "", "test_y", None, id="path-only"
        ),
        pytest.param("test_a.py::test_y[]", "test_a.py", "", "test_y", "", id="empty-params"),
        pytest.param(
            "test_a.py::test_y[open", "test_a.py", "", "test_y[open", None, id="unclosed-bracket"
        ),
        pytest.param(
            "pkg/mod.py::pkg.mod.func", "pkg/mod.py", "", "pkg.mod.func", None, id="doctest"
        ),
        pytest.param("docs/index.txt", "docs/index.txt", "", "", None, id="file-level-item"),
        pytest.param("a.py::C::t[x::y[z]]", "a.py", "C", "t", "x::y[z]", id="both-in-params"),
    ],
)
def test_parse_nodeid(nodeid: str, file: str, scope: str, name: str, params: str | None) -> None:
    parsed = parse_nodeid(nodeid)
    assert parsed == NodeId(nodeid=nodeid, file=file, scope=scope, name=name, params=params)
    assert file_of(nodeid) == file
    assert function_of(nodeid) == parsed.function
    if params is not None:
        assert parsed.function + f"[{params}]" == nodeid


@given(st.text(alphabet=":[]ab/.", max_size=20))
def test_fast_paths_agree_with_parse(nodeid: str) -> None:
    parsed = parse_nodeid(nodeid)
    assert file_of(nodeid) == parsed.file
    assert function_of(nodeid) == parsed.function
    assert nodeid.startswith(parsed.function)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([3.0], 3.0, id="one"),
        pytest.param([5.0, 1.0, 3.0], 3.0, id="odd"),
        pytest.param([4.0, 1.0, 2.0, 3.0], 2.5, id="even"),
    ],
)
def test_median(values: list[float], expected: float) -> None:
    assert median(values) == expected


HISTORY = {
    "t/test_a.py::test_p[1]": 2.0,
    "t/test_a.py::test_p[2]": 4.0,
    "t/test_a.py::test_p[3]": 9.0,
    "t/test_a.py::test_q": 0.5,
    "t/test_b.py::TestB::test_r": 10.0,
    "t/test_b.py::TestB::test_s": 20.0,
    "t/gone.py::test_old": 100.0,  # not collected any more: informs its file only
}


@pytest.mark.parametrize(
    ("test_id", "source", "base"),
    [
        pytest.param("t/test_a.py::test_p[2]", "history", 4.0, id="own-history"),
        pytest.param("t/test_a.py::test_p[4]", "siblings", 4.0, id="siblings-median"),
        pytest.param("t/test_a.py::test_new", "file", 3.0, id="file-median"),
        pytest.param("t/test_b.py::TestB::test_t[x]", "file", 15.0, id="file-median-even"),
        pytest.param("t/test_c.py::test_u", "suite", 6.5, id="suite-median-of-collected"),
    ],
)
def test_estimate_sources(test_id: str, source: str, base: float) -> None:
    collected = [test_id, *(t for t in HISTORY if t != "t/gone.py::test_old")]
    result = estimate(collected, HISTORY, overhead=0.25)
    assert result.sources[test_id] == source
    assert result.seconds[test_id] == base + 0.25


def test_suite_median_falls_back_to_every_known_duration() -> None:
    result = estimate(["new.py::test_a"], {"old.py::x": 1.0, "old.py::y": 3.0, "old.py::z": 8.0})
    assert result.sources == {"new.py::test_a": "suite"}
    assert result.seconds["new.py::test_a"] == 3.0 + DEFAULT_OVERHEAD


def test_default_when_nothing_is_known() -> None:
    result = estimate(["a.py::x", "a.py::y[1]"], {}, overhead=0.0, default=2.5)
    assert result.seconds == {"a.py::x": 2.5, "a.py::y[1]": 2.5}
    assert result.counts()["default"] == 2
    assert result.without_history == 2


def test_siblings_include_a_test_before_it_was_parametrized() -> None:
    result = estimate(["a.py::test_x[1]"], {"a.py::test_x": 7.0, "a.py::other": 1.0}, overhead=0)
    assert (result.sources["a.py::test_x[1]"], result.seconds["a.py::test_x[1]"]) == (
        "siblings",
        7.0,
    )


def test_siblings_are_per_class() -> None:
    durations = {"a.py::A::test_x[1]": 1.0, "a.py::B::test_x[1]": 50.0}
    result = estimate(["a.py::A::test_x[2]"], durations, overhead=0)
    assert result.seconds["a.py::A::test_x[2]"] == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(-1.0, id="negative"),
        pytest.param(1e300, id="absurd"),
        pytest.param(10**400, id="huge-int"),
        pytest.param("3", id="string"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="none"),
    ],
)
def test_invalid_durations_count_as_no_history(bad: object) -> None:
    durations = {"a.py::x": bad, "a.py::y": 2.0}
    result = estimate(["a.py::x", "a.py::y"], durations, overhead=0)  # type: ignore[arg-type]
    assert result.sources == {"a.py::x": "file", "a.py::y": "history"}
    assert result.seconds == {"a.py::x": 2.0, "a.py::y": 2.0}


def test_the_largest_accepted_duration() -> None:
    result = estimate(["a.py::x"], {"a.py::x": MAX_DURATION}, overhead=0)
    assert result.sources["a.py::x"] == "history"


def test_integer_durations_are_accepted() -> None:
    result = estimate(["a.py::x", "a.py::y"], {"a.py::x": 3}, overhead=0)
    assert result.seconds == {"a.py::x": 3.0, "a.py::y": 3.0}
    assert all(type(v) is float for v in result.seconds.values())


def test_zero_duration_is_history() -> None:
    result = estimate(["a.py::x"], {"a.py::x": 0.0})
    assert result.sources["a.py::x"] == "history"
    assert result.seconds["a.py::x"] == DEFAULT_OVERHEAD


def test_counts_cover_every_source_and_duplicates_count_once() -> None:
    ids = ["t/test_a.py::test_p[1]", "t/test_a.py::test_p[1]", "t/test_a.py::test_p[7]", "z.py::n"]
    result = estimate(ids, HISTORY)
    assert list(result.seconds) == ["t/test_a.py::test_p[1]", "t/test_a.py::test_p[7]", "z.py::n"]
    assert result.counts() == {"history": 1, "siblings": 1, "file": 0, "suite": 1, "default": 0}
    assert set(result.counts()) == set(ESTIMATE_SOURCES)
    assert result.without_history == 2


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        pytest.param(
            "overhead", -0.1, "[testengine] invalid overhead -0.1: expected seconds >= 0", id="neg"
        ),
        pytest.param(
            "default", math.nan, "[testengine] invalid default nan: expected seconds >= 0", id="nan"
        ),
    ],
)
def test_invalid_parameters_are_refused(keyword: str, value: float, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        estimate(["a.py::x"], {}, **{keyword: value})
    assert str(excinfo.value) == message


def test_defaults_are_sane() -> None:
    assert 0 < DEFAULT_OVERHEAD < 0.01
    assert DEFAULT_DURATION > 0


node_ids = st.builds(
    lambda f, c, n, p: f"t/test_{f}.py::" + (f"T{c}::" if c else "") + f"test_{n}" + p,
    st.integers(0, 3),
    st.integers(0, 2),
    st.integers(0, 4),
    st.sampled_from(["", "[1]", "[2]", "[a::b]", "[[x]]"]),
)


@given(
    st.lists(node_ids, max_size=30),
    st.dictionaries(node_ids, st.floats(0, 100), max_size=30),
    st.randoms(use_true_random=False),
)
def test_estimate_is_independent_of_collection_order(
    ids: list[str], durations: dict[str, float], rnd: random.Random
) -> None:
    shuffled = list(ids)
    rnd.shuffle(shuffled)
    first, second = estimate(ids, durations), estimate(shuffled, durations)
    assert dict(first.seconds) == dict(second.seconds)
    assert dict(first.sources) == dict(second.sources)
    assert set(first.seconds) == set(ids)
    assert all(value >= DEFAULT_OVERHEAD for value in first.seconds.values())


@given(st.dictionaries(node_ids, st.floats(0, 100), max_size=30), st.randoms(use_true_random=False))
def test_estimate_is_independent_of_history_order(
    durations: dict[str, float], rnd: random.Random
) -> None:
    items = list(durations.items())
    rnd.shuffle(items)
    ids = [*durations, "t/test_0.py::test_new[9]", "t/test_1.py::test_0[9]", "t/new.py::test"]
    first, second = estimate(ids, durations), estimate(ids, dict(items))
    assert first == second

"""Static and dynamic splitting (pytest_testengine.splitting): properties and examples."""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_testengine import splitting
from pytest_testengine.estimates import estimate, file_of
from pytest_testengine.splitting import (
    Plan,
    Shard,
    chunk_budget,
    dynamic_chunks,
    fallback_plan,
    plan_fingerprint,
    plan_tests,
    split,
)

node_ids = st.builds(
    lambda f, c, n, p: f"t/test_{f}.py::" + (f"T{c}::" if c else "") + f"test_{n}" + p,
    st.integers(0, 5),
    st.integers(0, 2),
    st.integers(0, 6),
    st.sampled_from(["", "[1]", "[2]", "[3-x]", "[a::b]", "[[x]]"]),
)
durations_values = st.one_of(
    st.just(0.0), st.floats(0, 1000, allow_nan=False), st.integers(0, 5), st.just(1e-9)
)
suites = st.lists(node_ids, max_size=60)
estimates_maps = st.dictionaries(node_ids, durations_values, max_size=60)
shard_counts = st.integers(1, 40)
granularity = st.sampled_from(["test", "file"])


def assignment(plan: Plan) -> list[frozenset[str]]:
    return [frozenset(shard.test_ids) for shard in plan.shards]


def completed(ids: Sequence[str], estimates: Mapping[str, float]) -> dict[str, float]:
    """The estimates split uses: missing ones from siblings, file or suite, no overhead."""
    return dict(estimate(ids, estimates, overhead=0.0).seconds)


# --- properties of the static split ------------------------------------------------------


@given(suites, estimates_maps, shard_counts, granularity)
def test_shards_partition_the_collected_tests_exactly(
    ids: list[str], estimates: dict[str, float], shards: int, by: splitting.SplitBy
) -> None:
    plan = split(ids, estimates, shards, by=by)
    assert [shard.index for shard in plan.shards] == list(range(shards))
    every = [test_id for shard in plan.shards for test_id in shard.test_ids]
    assert sorted(every) == sorted(set(ids))  # the union is the input, and no test twice


@given(suites, estimates_maps, shard_counts, granularity)
def test_shards_keep_collection_order(
    ids: list[str], estimates: dict[str, float], shards: int, by: splitting.SplitBy
) -> None:
    position = {test_id: index for index, test_id in enumerate(dict.fromkeys(ids))}
    for shard in split(ids, estimates, shards, by=by).shards:
        positions = [position[test_id] for test_id in shard.test_ids]
        assert positions == sorted(positions)


@given(suites, estimates_maps, shard_counts, granularity, st.randoms(use_true_random=False))
def test_plan_is_deterministic_and_independent_of_input_order(
    ids: list[str],
    estimates: dict[str, float],
    shards: int,
    by: splitting.SplitBy,
    rnd: random.Random,
) -> None:
    shuffled = ids + ids[: len(ids) // 3]  # duplicates too
    rnd.shuffle(shuffled)
    first = split(ids, estimates, shards, by=by)
    again = split(ids, estimates, shards, by=by)
    other = split(shuffled, estimates, shards, by=by)
    assert first == again
    assert assignment(first) == assignment(other)
    assert [s.estimate for s in first.shards] == [s.estimate for s in other.shards]
    assert first.lower_bound == other.lower_bound
    assert plan_fingerprint(first) == plan_fingerprint(other)


@given(suites, estimates_maps, shard_counts, granularity)
def test_shard_estimates_add_up_and_respect_the_bounds(
    ids: list[str], estimates: dict[str, float], shards: int, by: splitting.SplitBy
) -> None:
    seconds = completed(ids, estimates)
    plan = split(ids, estimates, shards, by=by)
    for shard in plan.shards:
        assert shard.estimate == pytest.approx(math.fsum(seconds[t] for t in shard.test_ids))
    total = math.fsum(seconds.values())
    assert plan.total == pytest.approx(total)
    assert plan.lower_bound >= total / shards - 1e-9
    assert plan.makespan >= plan.lower_bound * (1 - 1e-9)
    if by == "test":
        longest = max(seconds.values(), default=0.0)
        assert plan.lower_bound == pytest.approx(max(total / shards, longest))
        # list scheduling bound, which LPT and the local search keep
        bound = total / shards + (1 - 1 / shards) * longest
        assert plan.makespan <= bound * (1 + 1e-9) + 1e-12


@given(suites, estimates_maps, shard_counts, granularity)
def test_local_search_never_makes_the_plan_worse(
    ids: list[str], estimates: dict[str, float], shards: int, by: splitting.SplitBy
) -> None:
    refined = split(ids, estimates, shards, by=by)
    plain = split(ids, estimates, shards, by=by, refine=False)
    assert refined.makespan <= plain.makespan * (1 + 1e-12)


@given(suites, estimates_maps, shard_counts)
def test_file_mode_keeps_files_together_unless_longer_than_a_shard(
    ids: list[str], estimates: dict[str, float], shards: int
) -> None:
    seconds = completed(ids, estimates)
    target = math.fsum(seconds.values()) / shards
    plan = split(ids, estimates, shards, by="file")
    shard_of = {t: shard.index for shard in plan.shards for t in shard.test_ids}
    for file, tests in itertools.groupby(sorted(seconds, key=file_of), key=file_of):
        members = list(tests)
        if math.fsum(seconds[t] for t in members) <= target:
            assert len({shard_of[t] for t in members}) == 1, file


@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=6), st.integers(2, 3))
def test_makespan_is_within_the_lpt_guarantee_of_the_optimum(
    weights: list[float], shards: int
) -> None:
    ids = [f"a.py::t[{i}]" for i in range(len(weights))]
    estimates = dict(zip(ids, weights, strict=True))
    optimum = min(
        max(
            math.fsum(w for w, s in zip(weights, owners, strict=True) if s == shard)
            for shard in range(shards)
        )
        for owners in itertools.product(range(shards), repeat=len(weights))
    )
    plan = split(ids, estimates, shards)
    assert plan.makespan <= optimum * (4 / 3 - 1 / (3 * shards)) + 1e-9


# --- examples --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "shards", "lpt", "refined"),
    [
        pytest.param([3, 3, 2, 2, 2], 2, 7.0, 6.0, id="move"),
        pytest.param([12, 11, 11, 10, 6, 5, 4, 1], 2, 31.0, 30.0, id="swap"),
        pytest.param([5, 5, 4, 4, 3, 3, 3], 3, 11.0, 9.0, id="three-shards"),
    ],
)
def test_local_search_reaches_the_optimum_where_lpt_does_not(
    weights: list[int], shards: int, lpt: float, refined: float
) -> None:
    estimates = {f"a.py::t[{i}]": float(w) for i, w in enumerate(weights)}
    assert split(estimates, estimates, shards, refine=False).makespan == lpt
    plan = split(estimates, estimates, shards)
    assert plan.makespan == refined == plan.lower_bound


def test_more_shards_than_tests_leaves_shards_empty_and_loses_nothing() -> None:
    plan = split(["a.py::x", "a.py::y", "b.py::z"], {"a.py::x": 1.0}, 5)
    assert len(plan.shards) == 5
    assert sorted(t for s in plan.shards for t in s.test_ids) == ["a.py::x", "a.py::y", "b.py::z"]
    assert [len(s.test_ids) for s in plan.shards] == [1, 1, 1, 0, 0]
    assert plan.shards[4].estimate == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(-2.0, id="negative"),
        pytest.param(1e308, id="overflowing"),
    ],
)
def test_invalid_estimates_are_replaced(bad: float) -> None:
    estimates = {"a.py::x[1]": bad, "a.py::x[2]": 3.0, "a.py::y": 1e308 if bad != 1e308 else 3.0}
    ids = ["a.py::x[1]", "a.py::x[2]"]
    plan = split(ids, estimates, 2)
    assert [s.estimate for s in plan.shards] == [3.0, 3.0]


def test_no_tests_gives_empty_shards() -> None:
    plan = split([], {}, 3)
    assert [s.test_ids for s in plan.shards] == [(), (), ()]
    assert plan.makespan == plan.lower_bound == 0.0


@pytest.mark.parametrize("by", ["test", "file"])
def test_zero_durations_are_spread_by_count(by: splitting.SplitBy) -> None:
    ids = [f"f{i % 7}.py::t{i}" for i in range(50)]
    plan = split(ids, dict.fromkeys(ids, 0.0), 4, by=by)
    counts = [len(s.test_ids) for s in plan.shards]
    assert sum(counts) == 50
    if by == "test":
        assert max(counts) - min(counts) <= 1
    else:
        assert min(counts) > 0


def test_unknown_tests_are_estimated_from_their_siblings() -> None:
    known = {"a.py::t[1]": 10.0, "a.py::t[2]": 10.0, "b.py::u": 1.0}
    ids = ["a.py::t[1]", "a.py::t[2]", "a.py::t[3]", "a.py::t[4]", "b.py::u", "b.py::v"]
    plan = split(ids, known, 2)
    assert plan.total == pytest.approx(10.0 * 4 + 1.0 * 2)
    assert plan.makespan == 21.0


def test_file_mode_splits_a_file_longer_than_a_shard() -> None:
    estimates = {"big.py::t[1]": 4.0, "big.py::t[2]": 4.0, "big.py::t[3]": 4.0}
    estimates |= {"s1.py::a": 1.0, "s1.py::b": 1.0, "s2.py::c": 2.0}
    plan = split(estimates, estimates, 2, by="file")
    assert plan.makespan == 8.0 == plan.lower_bound
    shard_of = {t: s.index for s in plan.shards for t in s.test_ids}
    assert shard_of["s1.py::a"] == shard_of["s1.py::b"]
    assert len({shard_of[t] for t in estimates if t.startswith("big.py")}) == 2


def test_file_mode_keeps_a_file_that_fits() -> None:
    estimates = {"a.py::x": 3.0, "a.py::y": 2.0, "b.py::z": 5.0}
    plan = split(estimates, estimates, 2, by="file")
    assert sorted(sorted(s.test_ids) for s in plan.shards) == [["a.py::x", "a.py::y"], ["b.py::z"]]


@pytest.mark.parametrize(
    ("shards", "by", "message"),
    [
        pytest.param(
            0, "test", "[testengine] invalid shard count 0: expected an integer >= 1", id="zero"
        ),
        pytest.param(
            True,
            "test",
            "[testengine] invalid shard count True: expected an integer >= 1",
            id="bool",
        ),
        pytest.param(
            2.0,
            "test",
            "[testengine] invalid shard count 2.0: expected an integer >= 1",
            id="float",
        ),
        pytest.param(
            2,
            "module",
            "[testengine] invalid split granularity 'module': expected 'test' or 'file'",
            id="granularity",
        ),
    ],
)
def test_invalid_arguments_are_refused(shards: object, by: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        split(["a.py::x"], {}, shards, by=by)  # type: ignore[arg-type]
    assert str(excinfo.value) == message


# --- fingerprints, plans from durations, fallback ------------------------------------------


def test_test_set_hash_is_stable_and_ignores_order_and_duplicates() -> None:
    ids = ["t/b.py::x", "t/a.py::y[1]", "t/a.py::y[2]"]
    value = splitting.test_set_hash(ids)
    assert value == splitting.test_set_hash(reversed(ids + ids))
    assert len(value) == 64
    assert int(value, 16) >= 0
    # pinned: changing the encoding changes every cache key, so it must be deliberate
    assert splitting.test_set_hash(["a.py::t"]) == (
        "a89a183ed4f6ed70406de07508b2b35bacb7f895a5c12ab41aef3d607698333c"
    )


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param(["a\nb"], ["a", "b"], id="newline"),
        pytest.param(["1:a"], ["a"], id="prefix-like"),
        pytest.param(["a", "b"], ["ab"], id="concatenation"),
        pytest.param([], [""], id="empty-id"),
    ],
)
def test_test_set_hash_is_unambiguous(left: list[str], right: list[str]) -> None:
    assert splitting.test_set_hash(left) != splitting.test_set_hash(right)


def test_test_set_hash_is_not_collected_as_a_test() -> None:
    assert splitting.test_set_hash.__test__ is False  # type: ignore[attr-defined]


def test_plan_fingerprint_changes_when_a_test_moves() -> None:
    estimates = {"a": 1.0, "b": 1.0, "c": 1.0}
    plan = split(estimates, estimates, 2)
    moved = Plan(
        by=plan.by,
        shards=(
            Shard(0, plan.shards[0].test_ids[:-1], 0.0),
            Shard(1, plan.shards[1].test_ids + plan.shards[0].test_ids[-1:], 0.0),
        ),
        lower_bound=plan.lower_bound,
    )
    assert plan_fingerprint(plan) == plan_fingerprint(split(list("cba"), estimates, 2))
    assert plan_fingerprint(plan) != plan_fingerprint(moved)
    assert plan_fingerprint(plan) != plan_fingerprint(split(estimates, estimates, 2, by="file"))


def test_plan_tests_adds_the_overhead_and_reports_sources() -> None:
    ids = ["a.py::t[1]", "a.py::t[2]", "b.py::new"]
    plan, estimates = plan_tests(ids, {"a.py::t[1]": 2.0}, 2, overhead=0.5)
    assert estimates.seconds == {"a.py::t[1]": 2.5, "a.py::t[2]": 2.5, "b.py::new": 2.5}
    assert estimates.counts()["history"] == 1
    assert estimates.without_history == 2
    assert plan.total == 7.5


def test_fallback_is_the_same_on_every_shard() -> None:
    ids = [f"t/test_{i % 9}.py::test_{i}[{i % 4}]" for i in range(200)]
    plans = []
    for seed in range(4):  # four shards that collected in different orders
        order = list(ids)
        random.Random(seed).shuffle(order)
        plan, estimates = fallback_plan(order, 4)
        plans.append(plan)
        assert estimates.counts()["default"] == 200
    assert len({plan_fingerprint(p) for p in plans}) == 1
    assert [len(s.test_ids) for s in plans[0].shards] == [50, 50, 50, 50]


def test_fallback_uses_a_durations_file_when_given() -> None:
    ids = ["a.py::slow", "a.py::x", "a.py::y", "a.py::z"]
    durations = {"a.py::slow": 30.0, "a.py::x": 10.0, "a.py::y": 10.0, "a.py::z": 10.0}
    plan, _ = fallback_plan(ids, 2, durations=durations, overhead=0.0)
    assert sorted(sorted(s.test_ids) for s in plan.shards) == [
        ["a.py::slow"],
        ["a.py::x", "a.py::y", "a.py::z"],
    ]


def test_fifty_thousand_tests_split_quickly() -> None:
    """A regression guard against quadratic behaviour (typically ~0.1 s here)."""
    rnd = random.Random(7)
    ids = [f"t/test_{i // 100}.py::TestC::test_{i % 17}[{i}]" for i in range(50_000)]
    durations = {t: rnd.lognormvariate(-3, 1.5) for t in ids if rnd.random() > 0.1}
    start = time.perf_counter()
    plan, estimates = plan_tests(ids, durations, 16)
    elapsed = time.perf_counter() - start
    assert sum(len(s.test_ids) for s in plan.shards) == 50_000
    assert estimates.without_history == 50_000 - len(durations)
    assert plan.makespan <= plan.lower_bound * 1.001
    assert elapsed < 2.0, f"planning 50,000 tests took {elapsed:.2f} s"


# --- dynamic mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remaining", "shards", "min_seconds", "expected"),
    [
        pytest.param(800.0, 4, 1.0, 100.0, id="half-a-fair-share"),
        pytest.param(10.0, 4, 1.0, 1.25, id="small"),
        pytest.param(3.0, 4, 1.0, 1.0, id="floor"),
        pytest.param(0.0, 1, 0.5, 0.5, id="nothing-left"),
    ],
)
def test_chunk_budget(remaining: float, shards: int, min_seconds: float, expected: float) -> None:
    assert chunk_budget(remaining, shards, min_seconds=min_seconds) == expected


@given(suites, estimates_maps, st.integers(1, 10), granularity, st.randoms(use_true_random=False))
def test_dynamic_chunks_partition_the_tests_and_shrink(
    ids: list[str],
    estimates: dict[str, float],
    shards: int,
    by: splitting.SplitBy,
    rnd: random.Random,
) -> None:
    chunks = dynamic_chunks(ids, estimates, shards, by=by, min_seconds=0.5)
    every = [t for chunk in chunks for t in chunk.test_ids]
    assert sorted(every) == sorted(set(ids))
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    shuffled = list(ids)
    rnd.shuffle(shuffled)
    again = dynamic_chunks(shuffled, estimates, shards, by=by, min_seconds=0.5)
    assert [(frozenset(c.test_ids), c.estimate) for c in chunks] == [
        (frozenset(c.test_ids), c.estimate) for c in again
    ]
    seconds = completed(ids, estimates)
    remaining = math.fsum(seconds.values())
    for chunk in chunks:
        assert chunk.estimate == pytest.approx(math.fsum(seconds[t] for t in chunk.test_ids))
        budget = chunk_budget(remaining, shards, min_seconds=0.5)
        single_unit = len(chunk.test_ids) == 1 or (
            by == "file" and len({file_of(t) for t in chunk.test_ids}) == 1
        )
        assert chunk.estimate <= budget * (1 + 1e-9) or single_unit
        remaining -= chunk.estimate


def test_dynamic_chunks_go_longest_first_and_get_smaller() -> None:
    estimates = {f"a.py::t[{i}]": float(i) for i in range(1, 41)}
    chunks = dynamic_chunks(estimates, estimates, 4, min_seconds=1.0)
    assert chunks[0].test_ids == ("a.py::t[39]", "a.py::t[40]")  # collection order inside
    assert chunks[-1].estimate < chunks[0].estimate / 10
    sizes = [chunk.estimate for chunk in chunks]
    assert sizes == sorted(sizes, reverse=True)


def test_dynamic_chunks_keep_files_together() -> None:
    estimates = {"a.py::x": 1.0, "a.py::y": 1.0, "b.py::z": 2.5, "c.py::w": 0.2}
    chunks = dynamic_chunks(estimates, estimates, 2, by="file", min_seconds=0.1)
    assert [sorted(c.test_ids) for c in chunks] == [
        ["b.py::z"],
        ["a.py::x", "a.py::y"],
        ["c.py::w"],
    ]

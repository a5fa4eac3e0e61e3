"""Split collected tests into shards that finish together (pure: no pytest, no httpx).

Static split (:func:`split`): the units of work (tests, or files with ``by="file"``) are packed
longest first onto the currently lightest shard (LPT), then a bounded local search exchanges
units between the heaviest shard and a lighter one while that lowers the heaviest.  Ties are
broken by id, sums are taken in a canonical order, so the plan depends only on the *set* of
test ids and their estimates: every shard that computes it gets the same answer, whatever
order its collection produced.  Within a shard, tests keep their collection order.

With ``by="file"`` a file's tests stay together (module fixtures are set up once), except a
file whose estimate exceeds the target shard time (total / shards): its tests become units of
their own, as a file longer than a whole shard cannot be balanced otherwise.

Dynamic split (:func:`dynamic_chunks`): the same units, longest first, cut into chunks that
shards pull from a queue; :func:`chunk_budget` makes chunks shrink as the remaining work does,
so the last chunks are small and every shard finishes near the same moment.

Estimates (seconds per node id) normally come from :func:`pytest_testengine.estimates.estimate`;
tests missing from them are estimated from their siblings, file or suite in the same way.
Invalid arguments raise :class:`ValueError` with a ``[testengine]`` message.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Final, Literal, get_args

from pytest_testengine.estimates import (
    DEFAULT_OVERHEAD,
    MAX_DURATION,
    Estimates,
    EstimateSource,
    estimate,
    file_of,
)

# The collector may import only this module of the plugin package: it re-exports estimates.
__all__ = [
    "DEFAULT_MIN_CHUNK",
    "DEFAULT_OVERHEAD",
    "SPLIT_BY",
    "Chunk",
    "EstimateSource",
    "Estimates",
    "Plan",
    "Shard",
    "SplitBy",
    "chunk_budget",
    "dynamic_chunks",
    "estimate",
    "fallback_plan",
    "plan_fingerprint",
    "plan_tests",
    "split",
    "test_set_hash",
]

SplitBy = Literal["test", "file"]
SPLIT_BY: Final[tuple[SplitBy, ...]] = get_args(SplitBy)

#: Smallest chunk of estimated work (seconds) handed out in dynamic mode.
DEFAULT_MIN_CHUNK: Final = 1.0

#: The local search stops once the heaviest shard is this close (relative) to the lower bound.
_TOLERANCE: Final = 1e-4
#: Bounds on the local search: exchanges per shard, and units inspected in all.
_STEPS_PER_SHARD: Final = 8
_WORK_LIMIT: Final = 200_000


@dataclass(frozen=True, slots=True)
class Shard:
    index: int  # 0-based
    test_ids: tuple[str, ...]  # in collection order
    estimate: float  # seconds


@dataclass(frozen=True, slots=True)
class Plan:
    """Every shard's tests; their union is exactly the (deduplicated) collected tests."""

    by: SplitBy
    shards: tuple[Shard, ...]
    lower_bound: float  # max(total / shards, longest unit): no plan can do better

    @property
    def total(self) -> float:
        return math.fsum(shard.estimate for shard in self.shards)

    @property
    def makespan(self) -> float:
        """The estimate of the longest shard."""
        return max(shard.estimate for shard in self.shards)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of work handed out in dynamic mode."""

    index: int  # position in the queue, longest first
    test_ids: tuple[str, ...]  # in collection order
    estimate: float  # seconds


def test_set_hash(test_ids: Iterable[str]) -> str:
    """A stable, order-independent fingerprint of a set of node ids (64 hex digits).

    sha256 over ``testengine-test-set-v1`` and each distinct id, sorted by code point, as
    ``<length>:<id>``; a cache key for plans.
    """
    return _hash_sorted(sorted(set(test_ids)))


test_set_hash.__test__ = False  # type: ignore[attr-defined]  # not a test when imported


def plan_fingerprint(plan: Plan) -> str:
    """A fingerprint of a plan's assignment: equal exactly when every shard holds the same tests."""
    parts = [f"testengine-plan-v1\n{plan.by}\n{len(plan.shards)}\n"]
    for shard in plan.shards:
        parts.append(f"{len(shard.test_ids)}\n")
        parts.extend(f"{len(test_id)}:{test_id}" for test_id in sorted(shard.test_ids))
    return hashlib.sha256("".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def split(
    test_ids: Iterable[str],
    estimates: Mapping[str, float],
    shards: int,
    *,
    by: SplitBy = "test",
    refine: bool = True,
) -> Plan:
    """Split *test_ids* into *shards* shards of nearly equal estimated time.

    More shards than tests leaves some shards empty; no test is ever lost.  *refine* turns the
    local search after LPT on (the default) or off.
    """
    units = _units(test_ids, estimates, shards, by)
    bins, loads = _pack(units, shards)
    if refine:
        _refine(units.weight, bins, loads, units.lower_bound)
    members = [units.tests_of(units_of_shard) for units_of_shard in bins]
    shard_of = dict(
        zip(
            chain.from_iterable(members),
            chain.from_iterable(repeat(index, len(tests)) for index, tests in enumerate(members)),
            strict=True,
        )
    )
    per_shard: list[list[str]] = [[] for _ in range(shards)]
    appenders = [tests.append for tests in per_shard]
    for test_id in units.ids:
        appenders[shard_of[test_id]](test_id)
    weight = units.weight.__getitem__
    return Plan(
        by=by,
        shards=tuple(
            Shard(
                index=index,
                test_ids=tuple(per_shard[index]),
                estimate=math.fsum(map(weight, bins[index])),
            )
            for index in range(shards)
        ),
        lower_bound=units.lower_bound,
    )


def plan_tests(
    test_ids: Iterable[str],
    durations: Mapping[str, float],
    shards: int,
    *,
    by: SplitBy = "test",
    overhead: float = DEFAULT_OVERHEAD,
) -> tuple[Plan, Estimates]:
    """Estimate every test from the known *durations*, then :func:`split`."""
    ids = list(test_ids)
    estimates = estimate(ids, durations, overhead=overhead)
    return split(ids, estimates.seconds, shards, by=by), estimates


def fallback_plan(
    test_ids: Iterable[str],
    shards: int,
    *,
    by: SplitBy = "test",
    durations: Mapping[str, float] | None = None,
    overhead: float = DEFAULT_OVERHEAD,
) -> tuple[Plan, Estimates]:
    """The plan every shard computes alone when the collector cannot be reached.

    It depends only on the set of collected ids and the local *durations* (a file shared by
    all shards, or none), so shards that collected the same tests agree without talking.
    """
    return plan_tests(test_ids, durations or {}, shards, by=by, overhead=overhead)


def chunk_budget(remaining: float, shards: int, *, min_seconds: float = DEFAULT_MIN_CHUNK) -> float:
    """Seconds of estimated work to hand out next: half a fair share of what remains.

    Guided self-scheduling: early chunks are large (few requests), late ones small, so the
    shards' finishing times differ by about one small chunk; never below *min_seconds*, so the
    end of the run is not spent on requests.
    """
    _check_shards(shards)
    return max(remaining / (2 * shards), min_seconds)


def dynamic_chunks(
    test_ids: Iterable[str],
    estimates: Mapping[str, float],
    shards: int,
    *,
    by: SplitBy = "test",
    min_seconds: float = DEFAULT_MIN_CHUNK,
) -> tuple[Chunk, ...]:
    """The work queue of a dynamic split: units longest first, cut by :func:`chunk_budget`.

    The remaining work after each chunk is known in advance, so the whole queue is computed
    at once and is as deterministic as a static plan; a queue hands the chunks out in order.
    """
    units = _units(test_ids, estimates, shards, by)
    position = {test_id: index for index, test_id in enumerate(units.ids)}
    remaining = math.fsum(units.weight.values())
    chunks: list[Chunk] = []
    current: list[str] = []
    size = 0.0
    budget = chunk_budget(remaining, shards, min_seconds=min_seconds)
    for unit in units.order:
        weight = units.weight[unit]
        if current and size + weight > budget:
            chunks.append(_chunk(len(chunks), current, units, position))
            remaining -= size
            budget = chunk_budget(remaining, shards, min_seconds=min_seconds)
            current, size = [], 0.0
        current.append(unit)
        size += weight
    if current:
        chunks.append(_chunk(len(chunks), current, units, position))
    return tuple(chunks)


def _chunk(index: int, members: list[str], units: _Units, position: dict[str, int]) -> Chunk:
    test_ids = sorted(units.tests_of(members), key=position.__getitem__)
    return Chunk(
        index=index,
        test_ids=tuple(test_ids),
        estimate=math.fsum(units.weight[unit] for unit in members),
    )


@dataclass(frozen=True, slots=True)
class _Units:
    """The units of work (tests, or files) with their weights, longest first."""

    ids: list[str]  # distinct test ids, collection order
    order: list[str]  # unit keys by weight descending, equal weights by key
    weight: dict[str, float]  # unit key -> seconds
    groups: dict[str, tuple[str, ...]] | None  # with by="file": a unit's tests; None: unit = test
    lower_bound: float

    def tests_of(self, units: Iterable[str]) -> list[str]:
        """The test ids of *units*, unit by unit."""
        if self.groups is None:
            return list(units)
        groups = self.groups
        return [test_id for unit in units for test_id in groups[unit]]


def _units(test_ids: Iterable[str], estimates: Mapping[str, float], shards: int, by: str) -> _Units:
    _check_shards(shards)
    if by not in SPLIT_BY:
        raise ValueError(
            f"[testengine] invalid split granularity {by!r}: expected 'test' or 'file'"
        )
    ids = list(dict.fromkeys(test_ids))
    sorted_ids = sorted(ids)
    seconds = _complete(sorted_ids, estimates)
    total = math.fsum(seconds.values())
    groups: dict[str, tuple[str, ...]] | None = None
    weight = seconds
    if by == "file":
        files: dict[str, list[str]] = {}
        for test_id in sorted_ids:
            files.setdefault(file_of(test_id), []).append(test_id)
        target = total / shards
        weight, groups = {}, {}
        for file in sorted(files):
            tests = files[file]
            file_weight = math.fsum(seconds[test_id] for test_id in tests)
            if file_weight > target and len(tests) > 1:  # too long for one shard
                for test_id in tests:
                    weight[test_id] = seconds[test_id]
                    groups[test_id] = (test_id,)
            else:
                weight[file] = file_weight
                groups[file] = tuple(tests)
    # weight's keys are in a canonical order and sorted() is stable: equal weights stay in it
    order = sorted(weight, key=weight.__getitem__, reverse=True)
    longest = weight[order[0]] if order else 0.0
    return _Units(
        ids=ids,
        order=order,
        weight=weight,
        groups=groups,
        lower_bound=float(max(total / shards, longest)),
    )


def _complete(sorted_ids: list[str], estimates: Mapping[str, float]) -> dict[str, float]:
    """Every test's estimate, in sorted order; missing or invalid ones are estimated."""
    try:
        seconds = dict(zip(sorted_ids, map(estimates.__getitem__, sorted_ids), strict=True))
        values = seconds.values()
        if not values or (
            min(values) >= 0
            and max(values) <= MAX_DURATION
            and not math.isnan(math.fsum(values))  # min and max can miss a NaN
        ):
            return seconds
    except (KeyError, TypeError):
        pass
    filled = estimate(sorted_ids, estimates, overhead=0.0).seconds
    return {test_id: filled[test_id] for test_id in sorted_ids}


def _pack(units: _Units, shards: int) -> tuple[list[list[str]], list[float]]:
    """LPT: each unit, longest first, onto the lightest shard (then fewest units, lowest index)."""
    bins: list[list[str]] = [[] for _ in range(shards)]
    heap = [(0.0, 0, index) for index in range(shards)]
    replace = heapq.heapreplace
    appenders = [members.append for members in bins]
    order = units.order
    for unit, size in zip(order, map(units.weight.__getitem__, order), strict=True):
        load, count, index = heap[0]
        appenders[index](unit)
        replace(heap, (load + size, count + 1, index))
    loads = [0.0] * shards
    for load, _, index in heap:
        loads[index] = load
    return bins, loads


def _refine(
    weight: dict[str, float], bins: list[list[str]], loads: list[float], bound: float
) -> None:
    """Lower the heaviest shard by moving or swapping units with a lighter one, in place.

    Each step takes the heaviest shard and the lightest shard where an exchange helps, and
    applies the exchange whose size is closest to half their gap.  Bounded in steps and work.
    """
    shards = len(bins)
    if shards < 2 or max(loads) <= bound * (1 + _TOLERANCE):
        return
    content = [sorted((weight[unit], unit) for unit in members) for members in bins]
    work = 0
    for _ in range(_STEPS_PER_SHARD * shards):
        heaviest = max(range(shards), key=loads.__getitem__)
        top = loads[heaviest]
        if top <= bound * (1 + _TOLERANCE) or work > _WORK_LIMIT:
            break
        found = None
        for other in sorted(range(shards), key=loads.__getitem__):
            if other == heaviest:
                continue
            gap = top - loads[other]
            if gap <= top * 1e-12:
                break
            work += len(content[heaviest])
            found = _best_exchange(content[heaviest], content[other], gap)
            if found is not None or work > _WORK_LIMIT:
                break
        if found is None:
            break
        give, take = found
        _move(content[heaviest], content[other], give)
        delta = give[0]
        if take is not None:
            _move(content[other], content[heaviest], take)
            delta -= take[0]
        loads[heaviest] -= delta
        loads[other] += delta
    for index, members in enumerate(content):
        bins[index] = [unit for _, unit in members]


_Item = tuple[float, str]


def _best_exchange(
    heavy: list[_Item], light: list[_Item], gap: float
) -> tuple[_Item, _Item | None] | None:
    """The move (None taken back) or swap whose size d is closest to gap / 2, with 0 < d < gap."""
    best: tuple[_Item, _Item | None] | None = None
    best_gain = gap * 1e-9
    half = gap / 2
    previous = -1.0
    for item in heavy:
        size = item[0]
        if size <= 0 or size == previous:
            continue
        previous = size
        if size < gap and min(size, gap - size) > best_gain:
            best, best_gain = (item, None), min(size, gap - size)
        at = bisect_left(light, (size - half, ""))
        for candidate in light[max(at - 1, 0) : at + 1]:
            delta = size - candidate[0]
            if 0 < delta < gap and min(delta, gap - delta) > best_gain:
                best, best_gain = (item, candidate), min(delta, gap - delta)
        if best_gain >= half * (1 - 1e-12):
            break
    return best


def _move(source: list[_Item], target: list[_Item], item: _Item) -> None:
    del source[bisect_left(source, item)]
    insort(target, item)


def _hash_sorted(sorted_ids: Sequence[str]) -> str:
    text = "".join(f"{len(test_id)}:{test_id}" for test_id in sorted_ids)
    digest = hashlib.sha256(b"testengine-test-set-v1\n")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _check_shards(shards: int) -> None:
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"[testengine] invalid shard count {shards!r}: expected an integer >= 1")

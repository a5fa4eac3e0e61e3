"""Split quality: how close each splitter gets to the lower bound, and how fast ours plans.

Run from the repository root::

    python benchmarks/split_quality.py            # tables as text
    python benchmarks/split_quality.py --markdown # the tables of benchmarks/README.md

For every suite, shard count N and seed, each splitter sees the recorded durations of the tests
with history (10% of the tests have none) and the collected ids; its plan is then scored with
the tests' *true* cost: makespan / max(total / N, longest test), 1.00 being the best any plan
can do.  Splitters: ours (`plan_tests`, LPT + local search; also LPT alone and file mode),
pytest-split's `least_duration` and `duration_based_chunks` (its algorithms module, fed stand-in
items), and round-robin over the collection order.

Suites (all seeded; in every one a test also costs pytest 1 ms that recorded durations miss):
- lognormal / pareto: 2,000 independent heavy-tailed durations, ten tests per file;
- small: 100 independent lognormal durations;
- real-like: ~9,000 tests in unit files (ms tests, parametrized functions up to hundreds of
  cases), integration files (sub-second to seconds), a compatibility matrix and a few long
  end-to-end tests.  The new tests are whole new files, new functions and new parameters of
  existing ones.

Dynamic against static: actual durations vary uniformly within +-50% of the recorded ones;
shards pull chunks from the dynamic queue, each pull costing a 50 ms round trip.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

from pytest_testengine.estimates import estimate
from pytest_testengine.splitting import (
    Plan,
    dynamic_chunks,
    plan_tests,
    split,
)

try:
    from pytest_split.algorithms import DurationBasedChunksAlgorithm, LeastDurationAlgorithm
except ImportError:  # pragma: no cover - the bench env installs it
    DurationBasedChunksAlgorithm = LeastDurationAlgorithm = None  # type: ignore[assignment,misc]

SHARDS = (4, 8, 16, 32)
SEEDS = tuple(range(10))
NEW_SHARE = 0.10
OVERHEAD = 0.001  # pytest's own cost per test, missing from recorded durations
PULL_LATENCY = 0.05  # one round trip to the collector's queue


@dataclass(frozen=True)
class Suite:
    name: str
    ids: list[str]  # collection order
    recorded: dict[str, float]  # setup + call + teardown of the last runs, every test
    overhead: float  # true cost = recorded + overhead
    new: frozenset[str]  # tests without history in this run

    def history(self) -> dict[str, float]:
        return {t: d for t, d in self.recorded.items() if t not in self.new}

    def true(self) -> dict[str, float]:
        return {t: d + self.overhead for t, d in self.recorded.items()}


# --- suites ----------------------------------------------------------------------------------


def flat_suite(
    name: str, draw: Callable[[random.Random], float], seed: int, count: int = 2000
) -> Suite:
    rnd = random.Random(seed)
    ids = [f"tests/test_{i // 10:03d}.py::test_{i % 10}" for i in range(count)]
    recorded = {t: draw(rnd) for t in ids}
    new = frozenset(rnd.sample(ids, int(len(ids) * NEW_SHARE)))
    return Suite(name, ids, recorded, OVERHEAD, new)


def lognormal(seed: int) -> Suite:
    return flat_suite("lognormal", lambda r: r.lognormvariate(-1.0, 1.5), seed)


def pareto(seed: int) -> Suite:
    return flat_suite("pareto", lambda r: 0.05 * r.paretovariate(1.5), seed)


def small(seed: int) -> Suite:
    return flat_suite("small (100 tests, lognormal)", lambda r: r.lognormvariate(0, 1.0), seed, 100)


def real_like(seed: int) -> Suite:
    rnd = random.Random(seed)
    functions: list[tuple[str, list[str], float]] = []  # (file, test ids, typical seconds)

    def add_file(path: str, base: float, count: int, max_params: int) -> None:
        for f in range(count):
            factor = base * rnd.lognormvariate(0, 1.0)
            name = f"{path}::" + (f"TestGroup{f % 3}::" if f % 4 == 0 else "") + f"test_case_{f}"
            params = 1
            if rnd.random() < 0.4:
                params = min(max_params, int(rnd.paretovariate(1.1)) + 1)
            tests = [name] if params == 1 else [f"{name}[{p}-x::y]" for p in range(params)]
            functions.append((path, tests, factor))

    for i in range(150):
        add_file(f"tests/unit/test_mod{i:03d}.py", 0.004 * rnd.lognormvariate(0, 0.8), 20, 300)
    for i in range(30):
        add_file(f"tests/integration/test_api{i:02d}.py", 0.4 * rnd.lognormvariate(0, 1.0), 8, 12)
    matrix = "tests/integration/test_matrix.py::test_compat"
    functions.append(
        ("tests/integration/test_matrix.py", [f"{matrix}[{v}]" for v in range(200)], 0.2)
    )
    for i in range(6):
        path = f"tests/e2e/test_flow{i // 3}.py"
        functions.append((path, [f"{path}::test_journey_{i}"], rnd.uniform(30, 120)))

    ids: list[str] = []
    recorded: dict[str, float] = {}
    for _, tests, factor in functions:
        for test_id in tests:
            ids.append(test_id)
            recorded[test_id] = factor * rnd.lognormvariate(0, 0.3)
    new: set[str] = set()
    goal = int(len(ids) * NEW_SHARE)
    files = sorted({path for path, _, _ in functions})
    by_file = {path: [t for p, tests, _ in functions if p == path for t in tests] for path in files}
    while len(new) < goal * 0.3:  # whole new files
        new.update(by_file[rnd.choice(files)])
    while len(new) < goal * 0.6:  # new functions in existing files
        new.update(rnd.choice(functions)[1])
    while len(new) < goal:  # new parameters of existing functions
        new.add(rnd.choice(ids))
    return Suite("real-like", ids, recorded, OVERHEAD, frozenset(new))


# --- splitters: each returns every shard's test ids --------------------------------------


def ours(suite: Suite, shards: int) -> list[Sequence[str]]:
    plan, _ = plan_tests(suite.ids, suite.history(), shards, overhead=OVERHEAD)
    return [s.test_ids for s in plan.shards]


def ours_lpt(suite: Suite, shards: int) -> list[Sequence[str]]:
    estimates = estimate(suite.ids, suite.history(), overhead=OVERHEAD)
    return [s.test_ids for s in split(suite.ids, estimates.seconds, shards, refine=False).shards]


def ours_file(suite: Suite, shards: int) -> list[Sequence[str]]:
    plan, _ = plan_tests(suite.ids, suite.history(), shards, by="file", overhead=OVERHEAD)
    return [s.test_ids for s in plan.shards]


@dataclass(frozen=True)
class _Item:
    """What pytest-split's algorithms read from a pytest item."""

    nodeid: str


def pytest_split(algorithm: object) -> Callable[[Suite, int], list[Sequence[str]]]:
    def run(suite: Suite, shards: int) -> list[Sequence[str]]:
        items = [_Item(t) for t in suite.ids]
        groups = algorithm(shards, items, suite.history())  # type: ignore[operator]
        return [[item.nodeid for item in group.selected] for group in groups]

    return run


def round_robin(suite: Suite, shards: int) -> list[Sequence[str]]:
    return [suite.ids[i::shards] for i in range(shards)]


SPLITTERS: dict[str, Callable[[Suite, int], list[Sequence[str]]]] = {
    "ours (LPT + local search)": ours,
    "ours, LPT only": ours_lpt,
    "ours, --split-by file": ours_file,
}
if LeastDurationAlgorithm is not None:
    SPLITTERS["pytest-split least_duration"] = pytest_split(LeastDurationAlgorithm())
    SPLITTERS["pytest-split duration_based_chunks"] = pytest_split(DurationBasedChunksAlgorithm())
SPLITTERS["round-robin"] = round_robin


def score(shards: list[Sequence[str]], true: Mapping[str, float], ids: Sequence[str]) -> float:
    assigned = sorted(t for shard in shards for t in shard)
    assert assigned == sorted(ids), "a splitter lost or duplicated tests"
    total = math.fsum(true.values())
    bound = max(total / len(shards), max(true.values()))
    return max(math.fsum(true[t] for t in shard) for shard in shards) / bound


# --- dynamic against static ------------------------------------------------------------------


def noisy(suite: Suite, rnd: random.Random) -> dict[str, float]:
    return {t: d * rnd.uniform(0.5, 1.5) + suite.overhead for t, d in suite.recorded.items()}


def static_makespan(plan: Plan, actual: Mapping[str, float], speed: Sequence[float]) -> float:
    return max(
        math.fsum(actual[t] for t in shard.test_ids) * speed[shard.index] for shard in plan.shards
    )


def dynamic_makespan(
    suite: Suite, actual: Mapping[str, float], shards: int, speed: Sequence[float]
) -> tuple[float, int]:
    estimates = estimate(suite.ids, suite.history(), overhead=OVERHEAD).seconds
    chunks = dynamic_chunks(suite.ids, estimates, shards)
    clock = [(0.0, index) for index in range(shards)]  # (time the shard asks next, shard)
    for chunk in chunks:
        now, index = heapq.heappop(clock)
        work = math.fsum(actual[t] for t in chunk.test_ids) * speed[index]
        heapq.heappush(clock, (now + PULL_LATENCY + work, index))
    return max(now for now, _ in clock) + PULL_LATENCY, len(chunks)  # the last, empty pull


def dynamic_rows(
    seeds: Sequence[int],
) -> list[tuple[str, list[tuple[str, dict[int, list[float]]]], dict[int, list[int]]]]:
    """Per condition: (label, [(splitter, ratios per N)], queue lengths per N)."""
    rows: list[tuple[str, list[tuple[str, dict[int, list[float]]]], dict[int, list[int]]]] = []
    for condition in ("+-50% noise", "+-50% noise, one shard 1.5x slower"):
        for with_new in (False, True):
            label = condition + (", 10% new tests" if with_new else "")
            static: dict[int, list[float]] = {n: [] for n in SHARDS}
            dynamic: dict[int, list[float]] = {n: [] for n in SHARDS}
            queue: dict[int, list[int]] = {n: [] for n in SHARDS}
            for seed in seeds:
                base = real_like(seed)
                suite = base if with_new else replace(base, new=frozenset())
                rnd = random.Random(seed + 1000)
                actual = noisy(suite, rnd)
                for n in SHARDS:
                    slow = rnd.randrange(n) if "slower" in condition else -1
                    speed = [1.5 if i == slow else 1.0 for i in range(n)]
                    bound = max(
                        math.fsum(actual.values()) / sum(1 / s for s in speed),
                        max(actual.values()),
                    )
                    plan, _ = plan_tests(suite.ids, suite.history(), n, overhead=OVERHEAD)
                    static[n].append(static_makespan(plan, actual, speed) / bound)
                    makespan, chunks = dynamic_makespan(suite, actual, n, speed)
                    dynamic[n].append(makespan / bound)
                    queue[n].append(chunks)
            rows.append(
                (
                    label,
                    [("static (ours)", static), ("dynamic (ours, 50 ms per pull)", dynamic)],
                    queue,
                )
            )
    return rows


# --- planning time ---------------------------------------------------------------------------


def timing_rows() -> list[tuple[str, str, str, str]]:
    """(suite, estimate, split, plan_tests) as "median (best) ms" of 7 runs, 16 shards."""
    rows: list[tuple[str, str, str, str]] = []
    for count, new in ((1_000, 0), (10_000, 0), (50_000, 0), (50_000, 20)):
        rnd = random.Random(count)
        ids = [f"tests/test_m{i // 100:04d}.py::TestC::test_{i % 17}[{i}-x]" for i in range(count)]
        if new:  # a change adding a few tests to two files
            fresh = set(ids[100:110] + ids[4000:4010])
            history = {t: rnd.lognormvariate(-3, 1.5) for t in ids if t not in fresh}
            label = f"{count:,} ({new} new)"
        else:
            history = {t: rnd.lognormvariate(-3, 1.5) for t in ids if rnd.random() > NEW_SHARE}
            label = f"{count:,} (10% new)"
        seconds = estimate(ids, history).seconds
        took: dict[str, list[float]] = {"estimate": [], "split": [], "plan": []}
        for _ in range(7):
            start = time.perf_counter()
            estimate(ids, history)
            middle = time.perf_counter()
            split(ids, seconds, 16)
            end = time.perf_counter()
            plan_tests(ids, history, 16)
            took["estimate"].append(middle - start)
            took["split"].append(end - middle)
            took["plan"].append(time.perf_counter() - end)
        ms = {
            key: f"{statistics.median(values) * 1000:.1f} ({min(values) * 1000:.1f}) ms"
            for key, values in took.items()
        }
        rows.append((label, ms["estimate"], ms["split"], ms["plan"]))
    return rows


# --- output ----------------------------------------------------------------------------------


def cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ({max(values):.3f})"


def table(title: str, rows: list[tuple[str, dict[int, list[float]]]], markdown: bool) -> str:
    header = ["splitter", *(f"N={n}" for n in SHARDS)]
    lines = [f"### {title}" if markdown else f"\n{title}"]
    body = [[name, *(cell(by_n[n]) for n in SHARDS)] for name, by_n in rows]
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":---"] + ["---:"] * len(SHARDS)) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in body)
    else:
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        for row in [header, *body]:
            lines.append(
                "  ".join(
                    v.ljust(w) if i == 0 else v.rjust(w)
                    for i, (v, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per cell")
    args = parser.parse_args(argv)
    seeds = range(args.seeds)
    out: list[str] = [
        "Cells: makespan / lower bound, mean over "
        f"{len(seeds)} seeds (worst in brackets); 1.000 is the best possible."
    ]
    for make in (lognormal, pareto, small, real_like):
        for with_new in (False, True):
            results: dict[str, dict[int, list[float]]] = {
                name: {n: [] for n in SHARDS} for name in SPLITTERS
            }
            name = ""
            for seed in seeds:
                suite = make(seed)
                name = suite.name
                if not with_new:
                    suite = replace(suite, new=frozenset())
                true = suite.true()
                for splitter, run in SPLITTERS.items():
                    for n in SHARDS:
                        results[splitter][n].append(score(run(suite, n), true, suite.ids))
            title = f"{name}, " + ("10% of tests without history" if with_new else "full history")
            out.append(table(title, list(results.items()), args.markdown))
    for label, rows, queue in dynamic_rows(seeds):
        text = table(f"real-like, dynamic against static: {label}", rows, args.markdown)
        lengths = ", ".join(f"N={n}: {statistics.mean(queue[n]):.0f}" for n in SHARDS)
        out.append(f"{text}\n\nChunks in the dynamic queue (mean): {lengths}.")
    timing = timing_rows()
    title = "Planning time: median (best) of 7 runs, 16 shards"
    if args.markdown:
        lines = [f"### {title}", "| tests | estimate | split | plan_tests (both) |"]
        lines.append("|---:|---:|---:|---:|")
        lines.extend(f"| {c} | {e} | {s} | {p} |" for c, e, s, p in timing)
    else:
        lines = [f"\n{title}"]
        lines.extend(
            f"{c:>18} tests: estimate {e}, split {s}, plan_tests {p}" for c, e, s, p in timing
        )
    out.append("\n".join(lines))
    print("\n\n".join(out) if args.markdown else "\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

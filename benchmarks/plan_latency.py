"""Plan latency: how long ``POST /v1/plans`` takes against a real collector process.

Run from the repository root::

    python benchmarks/plan_latency.py            # the table of benchmarks/README.md
    python benchmarks/plan_latency.py --quick    # a smoke test: few requests, small suites

For each suite size (1,000, 10,000 and 50,000 tests: 500 tests per file, parametrized
functions of 10 cases) the script starts ``python -m collector_server serve`` on a free loopback
port with an empty data directory, records a passing duration for 90% of the tests (the rest
are new, estimated from siblings, file and suite), then times two kinds of request from one
kept-alive client, each shard sending every collected node id as plain JSON:

- *fresh*: a new ``build_id`` each time: the collector reads the suite's durations, estimates,
  splits into 16 shards and stores the plan before answering;
- *cached*: the same build asked again by another shard: the stored plan is read back.

Times are wall-clock from the first byte sent to the last byte of the answer received
(not counting the client's JSON decoding).  p99 of fewer than 100 samples is the slowest one.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

from pytest_testengine.model import Batch, Result, RunInfo, encode_batch, new_id
from tests.support.collector import CollectorProcess

SHARDS = 16
BATCH = 5000  # results per POST /v1/results while seeding
SIZES = (1_000, 10_000, 50_000)


def suite_ids(n: int) -> list[str]:
    """Node ids like a real suite: 500 tests per file, 10 parameters per function."""
    return [
        f"tests/pkg_{i // 5000}/test_mod_{i // 500}.py::TestThing::test_case_{i // 10}[p{i % 10}]"
        for i in range(n)
    ]


def seed(collector: CollectorProcess, ids: Sequence[str], rng: random.Random) -> None:
    """Passing durations for 90% of *ids*, stored before timing starts."""
    known = [t for t in ids if rng.random() < 0.9]
    run = RunInfo(run_id=new_id(), suite="bench", build_id="history")
    with httpx.Client(timeout=60.0) as client:
        for start in range(0, len(known), BATCH):
            results = [
                Result(
                    id=new_id(),
                    nodeid=t,
                    file=t.partition("::")[0],
                    name=t.rpartition("::")[2],
                    outcome="passed",
                    duration=rng.lognormvariate(-3.0, 1.5),
                )
                for t in known[start : start + BATCH]
            ]
            response = client.post(
                collector.url + "/v1/results",
                content=encode_batch(Batch(run, results)),
                headers={"Content-Type": "application/json"},
            )
            response.raise_for_status()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until the processor has stored every duration
        runs = collector.runs("bench")
        if runs and runs[0]["total"] >= len(known):
            return
        time.sleep(0.1)
    raise RuntimeError("the collector did not store the seeded durations in 300 s")


def timed(client: httpx.Client, url: str, body: bytes) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    response = client.post(url, content=body, headers={"Content-Type": "application/json"})
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    answer: dict[str, object] = orjson.loads(response.content)
    return elapsed, answer


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure(size: int, fresh: int, cached: int, rng: random.Random) -> dict[str, object]:
    ids = suite_ids(size)
    with tempfile.TemporaryDirectory(prefix="plan-latency-") as tmp:
        collector = CollectorProcess(Path(tmp) / "data")
        collector.start()
        try:
            seed(collector, ids, rng)
            url = collector.url + "/v1/plans"
            fresh_times: list[float] = []
            cached_times: list[float] = []
            with httpx.Client(timeout=120.0) as client:
                for round_ in range(fresh):
                    shuffled = rng.sample(ids, len(ids))  # each shard collects in its own order
                    body = {
                        "suite": "bench",
                        "build_id": f"build-{round_}",
                        "total": SHARDS,
                        "index": 0,
                        "tests": shuffled,
                    }
                    elapsed, answer = timed(client, url, orjson.dumps(body))
                    assert answer["cached"] is False, answer.get("cached")
                    fresh_times.append(elapsed)
                request_bytes = len(orjson.dumps(body))
                for round_ in range(cached):
                    body["index"] = round_ % SHARDS
                    elapsed, answer = timed(client, url, orjson.dumps(body))
                    assert answer["cached"] is True
                    cached_times.append(elapsed)
                answer_bytes = len(orjson.dumps(answer))
        finally:
            collector.stop()
    return {
        "size": size,
        "fresh": fresh_times,
        "cached": cached_times,
        "request_bytes": request_bytes,
        "answer_bytes": answer_bytes,
        "without_history": answer["without_history"],
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def table(rows: Sequence[dict[str, object]]) -> str:
    lines = [
        "| tests | without history | fresh p50 | fresh p99 | cached p50 | cached p99 | requests"
        " | body in / out |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        fresh, cached = row["fresh"], row["cached"]
        assert isinstance(fresh, list)
        assert isinstance(cached, list)
        size = row["size"]
        assert isinstance(size, int)
        lines.append(
            f"| {size:,} | {row['without_history']:,} "
            f"| {ms(statistics.median(fresh))} | {ms(percentile(fresh, 0.99))} "
            f"| {ms(statistics.median(cached))} | {ms(percentile(cached, 0.99))} "
            f"| {len(fresh)} + {len(cached)} "
            f"| {row['request_bytes'] / 1e6:.2f} / {row['answer_bytes'] / 1e6:.2f} MB |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, small suites")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    plan = [(1_000, 3, 5), (10_000, 3, 5)] if args.quick else [(n, 30, 100) for n in SIZES]
    rows = []
    for size, fresh, cached in plan:
        print(f"{size:,} tests: {fresh} fresh and {cached} cached plans ...", file=sys.stderr)
        rows.append(measure(size, fresh, cached, rng))
    print(f"POST /v1/plans, {SHARDS} shards, 10% of tests without history:\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

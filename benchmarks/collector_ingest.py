"""Collector ingest: results/s one embedded collector process accepts, and POST latency.

Run from the repository root::

    python benchmarks/collector_ingest.py            # 1, 8 and 32 concurrent clients
    python benchmarks/collector_ingest.py --quick    # tiny sizes (a smoke run)

Each round starts a fresh ``testengine-collector serve`` (embedded default: local log and
SQLite store, in-process processor running) on a free loopback port with a temporary data
directory, posts ``--batches`` gzipped batches of 500 results (built before the clock starts)
from N concurrent keep-alive connections, and stops it.  The client counts take turns, round
after round (1, 8, 32, 1, 8, 32, ...), after a warm-up round.

- accepted/s: results answered 202 (durable in the local log) per second of posting;
- applied/s: the same results divided by the time until the processor had also written all of
  them to the store (the processor keeps up when both are alike);
- POST latency p50 / p99 over every request of the measured rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

BATCH = 500
CLIENTS = (1, 8, 32)
CATCH_UP_TIMEOUT = 300.0


def wait_caught_up(collector: harness.Collector, timeout: float) -> float:
    """Seconds until the processor has applied every log entry (polls /readyz)."""
    start = time.perf_counter()
    deadline = start + timeout
    while time.perf_counter() < deadline:
        processor = collector.status().get("processor")
        if isinstance(processor, dict) and processor.get("lag") == 0:
            return time.perf_counter() - start
        time.sleep(0.02)
    raise RuntimeError(f"processor still behind after {timeout} s")


def one_round(clients: int, batches: int, env: dict[str, str]) -> dict[str, object]:
    with (
        harness.workdir("ingest") as tmp,
        harness.Collector(tmp / "data", env=env) as collector,
    ):
        requests = loadgen.prepare("127.0.0.1", collector.port, batches, BATCH)
        load = loadgen.post_all(
            "127.0.0.1", collector.port, requests, clients=clients, batch_size=BATCH
        )
        behind = wait_caught_up(collector, CATCH_UP_TIMEOUT)
    if load.rejected:
        raise RuntimeError(f"{load.rejected} batches rejected")
    return {
        "accepted": load.rate,
        "applied": load.results / (load.seconds + behind),
        "latencies": load.latencies,
    }


def measure(batches: int, rounds: int, env: dict[str, str], warmup: int = 1) -> str:
    found: dict[int, list[dict[str, object]]] = {c: [] for c in CLIENTS}
    for index in range(1 - warmup, rounds + 1):
        for clients in CLIENTS:
            got = one_round(clients, batches, env)
            harness.log(
                f"{'warm-up' if index == 0 else f'round {index}'} {clients} clients: "
                f"{got['accepted']:.0f}/s accepted, {got['applied']:.0f}/s applied"
            )
            if index:
                found[clients].append(got)
    rows = []
    for clients, got in found.items():
        accepted = harness.Spread.of([float(g["accepted"]) for g in got])  # type: ignore[arg-type]
        applied = harness.Spread.of([float(g["applied"]) for g in got])  # type: ignore[arg-type]
        lat = [x for g in got for x in g["latencies"]]  # type: ignore[attr-defined]
        rows.append(
            (
                clients,
                accepted.fmt("", 0),
                applied.fmt("", 0),
                f"{harness.percentile(lat, 50) * 1000:.1f}",
                f"{harness.percentile(lat, 99) * 1000:.1f}",
            )
        )
    title = (
        f"### Collector ingest (embedded default, one process; {batches} batches of {BATCH} "
        f"per round, median (min-max) of {rounds} rounds)\n\n"
    )
    return title + harness.table(
        [
            "concurrent clients",
            "accepted results/s",
            "applied to the store results/s",
            "POST p50 ms",
            "POST p99 ms",
        ],
        rows,
        "rrrrr",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--batches", type=int, default=None, help="batches of 500 per round")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    args = parser.parse_args(argv)
    batches = args.batches or (8 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    print(measure(batches, rounds, {}, warmup=0 if args.quick else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

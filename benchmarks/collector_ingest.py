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
- POST latency p50 / p99 over every request of the measured rounds;
- collector CPU: user + system time of the collector and its processor process over the round
  (posting and catching up), per result.

The processor runs in a child process (the default) or in a thread of the collector
(``--processor-process false``, how the collector worked before); the two alternate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

BATCH = 500
CLIENTS = (1, 8, 32)
CATCH_UP_TIMEOUT = 300.0


#: The processor's two ways of running, alternated round by round.
MODES: dict[str, dict[str, str]] = {
    "processor in a child process (default)": {},
    "processor in a thread (--processor-process false)": {
        "TESTENGINE_COLLECTOR_PROCESSOR_PROCESS": "false"
    },
}


def collector_cpu(collector: harness.Collector) -> float:
    """CPU seconds used so far by the collector process and its processor process."""
    assert collector.proc is not None
    pids = [collector.proc.pid]
    processor = collector.status().get("processor")
    if isinstance(processor, dict) and isinstance(processor.get("pid"), int):
        pids.append(processor["pid"])
    return sum(harness.cpu_seconds(pid) for pid in pids)


def one_round(clients: int, batches: int, env: dict[str, str]) -> dict[str, object]:
    with (
        harness.workdir("ingest") as tmp,
        harness.Collector(tmp / "data", env=env) as collector,
    ):
        requests = loadgen.prepare("127.0.0.1", collector.port, batches, BATCH)
        cpu = collector_cpu(collector)
        load = loadgen.post_all(
            "127.0.0.1", collector.port, requests, clients=clients, batch_size=BATCH
        )
        behind = collector.wait_caught_up(CATCH_UP_TIMEOUT)
        cpu = collector_cpu(collector) - cpu
    if load.rejected:
        raise RuntimeError(f"{load.rejected} batches rejected")
    return {
        "accepted": load.rate,
        "applied": load.results / (load.seconds + behind),
        "latencies": load.latencies,
        "cpu": cpu / load.results * 1e6,
    }


def measure(batches: int, rounds: int, warmup: int = 1) -> str:
    keys = [(mode, clients) for clients in CLIENTS for mode in MODES]
    found: dict[tuple[str, int], list[dict[str, object]]] = {k: [] for k in keys}
    for index in range(1 - warmup, rounds + 1):
        for mode, clients in keys:
            got = one_round(clients, batches, MODES[mode])
            harness.log(
                f"{'warm-up' if index == 0 else f'round {index}'} {mode}, {clients} clients: "
                f"{got['accepted']:.0f}/s accepted, {got['applied']:.0f}/s applied"
            )
            if index > 0:
                found[(mode, clients)].append(got)
    rows = []
    for (mode, clients), got in found.items():
        accepted = harness.Spread.of([float(g["accepted"]) for g in got])  # type: ignore[arg-type]
        applied = harness.Spread.of([float(g["applied"]) for g in got])  # type: ignore[arg-type]
        cpu = harness.Spread.of([float(g["cpu"]) for g in got])  # type: ignore[arg-type]
        lat = [x for g in got for x in g["latencies"]]  # type: ignore[attr-defined]
        rows.append(
            (
                clients,
                mode,
                accepted.fmt("", 0),
                applied.fmt("", 0),
                f"{harness.percentile(lat, 50) * 1000:.1f}",
                f"{harness.percentile(lat, 99) * 1000:.1f}",
                cpu.fmt("", 1),
            )
        )
    title = (
        f"### Collector ingest (embedded default, one collector; {batches} batches of {BATCH} "
        f"per round, median (min-max) of {rounds} alternated rounds)\n\n"
    )
    return title + harness.table(
        [
            "clients",
            "collector",
            "accepted results/s",
            "applied to the store results/s",
            "POST p50 ms",
            "POST p99 ms",
            "collector CPU µs per result",
        ],
        rows,
        "rlrrrrr",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--batches", type=int, default=None, help="batches of 500 per round")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    args = parser.parse_args(argv)
    batches = args.batches or (8 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    print(measure(batches, rounds, warmup=0 if args.quick else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

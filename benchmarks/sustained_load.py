"""Sustained load: does the processor keep up with a fleet sending at a steady rate?

Run from the repository root::

    python benchmarks/sustained_load.py            # 50,000 to 200,000 results/s
    python benchmarks/sustained_load.py --quick    # tiny sizes (a smoke run)
    python benchmarks/sustained_load.py --rates 120000 --seconds 30

``collector_ingest.py`` posts as fast as the collector answers: that measures how much one
process can accept, and the processor, sharing the two cores with ingest and the load
generator, then trails.  A fleet of CI jobs sends at the rate its tests finish instead.  Here
8 keep-alive clients post gzipped batches of 500 results (built before the clock starts) on a
schedule, ``--seconds`` long at each offered rate, to a fresh ``testengine-collector serve``
(embedded default, processor in its child process), while a thread reads the processor's lag
(``/readyz``, log entries written but not yet applied, one batch each) every 0.1 s.

- accepted/s: results answered 202 per second of the load (below the offered rate when the
  collector cannot accept that much);
- lag: results written but not applied yet, as seconds of the offered load, at its highest
  and at the end of the load: statistics wait up to five seconds while batches keep coming
  (see docs/how-it-works.md), so a processor that keeps up shows a lag of a few seconds at
  most that does not grow;
- catch-up: from the last accepted batch until the processor has applied every entry.

The processor keeps up at a rate when it has applied everything within 2 s of the end of the
load: one that is 10% too slow ends a 20 s load 2 s behind, and takes longer than that.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

BATCH = 500
CLIENTS = 8
RATES = (50_000, 100_000, 150_000, 200_000)  # the last: more than ingest takes with the processor
POLL = 0.1
CATCH_UP_TIMEOUT = 300.0
#: A processor keeps up when it has applied everything this long after the load ends.
CATCH_UP_ALLOWED = 2.0


class LagWatcher(threading.Thread):
    """Reads the processor's lag (log entries not applied yet) every POLL seconds."""

    def __init__(self, collector: harness.Collector) -> None:
        super().__init__(daemon=True)
        self.collector = collector
        self.samples: list[tuple[float, int]] = []  # (perf_counter, entries behind)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(POLL):
            self.samples.append((time.perf_counter(), self.collector.processor_lag()))

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def one_round(rate: int, seconds: float) -> dict[str, float]:
    batches = max(4, round(rate * seconds / BATCH))
    with harness.workdir("sustained") as tmp, harness.Collector(tmp / "data") as collector:
        requests = loadgen.prepare("127.0.0.1", collector.port, batches, BATCH)
        watcher = LagWatcher(collector)
        watcher.start()
        start = time.perf_counter()
        try:
            load = loadgen.post_all(
                "127.0.0.1",
                collector.port,
                requests,
                clients=CLIENTS,
                batch_size=BATCH,
                rate=rate,
            )
            end = start + load.seconds
            catch_up = collector.wait_caught_up(CATCH_UP_TIMEOUT)
        finally:
            watcher.stop()
    if load.rejected:
        raise RuntimeError(f"{load.rejected} batches rejected")
    during = [lag for at, lag in watcher.samples if at < end]
    if not during:
        raise RuntimeError("no lag sample during the load: make --seconds longer")
    per_second = BATCH / rate  # seconds of offered load per log entry
    return {
        "accepted": load.rate,
        "max": max(during) * per_second,
        "end": during[-1] * per_second,
        "catch_up": catch_up,
    }


def keeps_up(got: dict[str, float]) -> bool:
    return got["catch_up"] <= CATCH_UP_ALLOWED


def measure(rates: tuple[int, ...], seconds: float, rounds: int, warmup: int = 1) -> str:
    found: dict[int, list[dict[str, float]]] = {rate: [] for rate in rates}
    for index in range(1 - warmup, rounds + 1):
        for rate in rates:
            got = one_round(rate, seconds)
            harness.log(
                f"{'warm-up' if index == 0 else f'round {index}'} {rate}/s offered: "
                f"{got['accepted']:.0f}/s accepted, lag max {got['max']:.2f} s, "
                f"at the end {got['end']:.2f} s, caught up {got['catch_up']:.2f} s after"
            )
            if index > 0:
                found[rate].append(got)
    rows = []
    for rate, runs in found.items():
        spread = {key: harness.Spread.of([run[key] for run in runs]) for key in runs[0]}
        kept = sum(keeps_up(run) for run in runs)
        rows.append(
            (
                f"{rate:,}",
                spread["accepted"].fmt("", 0),
                spread["max"].fmt(" s", 2),
                spread["end"].fmt(" s", 2),
                spread["catch_up"].fmt(" s", 2),
                f"{'yes' if kept == len(runs) else 'no'} ({kept} of {len(runs)} rounds)",
            )
        )
    title = (
        f"### Sustained load (embedded default, one collector, {CLIENTS} clients, batches of "
        f"{BATCH}, {seconds:g} s at each rate, median (min-max) of {rounds} rounds)\n\n"
    )
    return title + harness.table(
        [
            "offered results/s",
            "accepted results/s",
            "lag, highest",
            "lag at the end of the load",
            "caught up after the load",
            "processor keeps up",
        ],
        rows,
        "rrrrrl",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--rates", type=int, nargs="+", default=None, help="results/s offered")
    parser.add_argument("--seconds", type=float, default=None, help="seconds at each rate")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    args = parser.parse_args(argv)
    rates = tuple(args.rates or ((20_000,) if args.quick else RATES))
    seconds = args.seconds or (1.0 if args.quick else 20.0)
    rounds = args.rounds or (1 if args.quick else 2)
    print(measure(rates, seconds, rounds, warmup=0 if args.quick else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kafka ingest: results/s one collector process accepts into Kafka (acks=all), beside the
embedded sink, and results/s a processor moves from Kafka to the store.

Run from the repository root::

    python benchmarks/kafka_ingest.py                    # starts a broker (scripts/kafka_broker.py)
    python benchmarks/kafka_ingest.py --bootstrap HOST:PORT   # or use a running broker
    python benchmarks/kafka_ingest.py --quick            # tiny sizes (a smoke run)

Ingest: for 1, 8 and 32 concurrent clients, three collectors take turns (embedded, Kafka
ingest-only, Kafka with its processor, and again) after a warm-up round of each.
Every round starts a fresh ``testengine-collector serve`` on a free loopback port with a
temporary data directory (Kafka: a fresh topic of 6 partitions; embedded: the default local log
and SQLite store) and posts ``--batches`` gzipped batches of 500 results (built before the clock
starts) from N keep-alive connections.  Where a processor runs in the collector it works while
the clients post (as it would in production); after the clock stops it is given time to store
everything, so that it does not slow the next round.  accepted/s counts results answered 202
(acknowledged by Kafka with acks=all, or fsynced to the local log) per second of posting; POST
latency p50 / p99 is over every request of the measured rounds; collector CPU is the user +
system time of the ``serve`` process (not of a processor child) per accepted result while the
clients post, the median of the rounds: unlike the rates it hardly depends on other load.

Processor: ``testengine-collector process`` (fresh consumer group and data directory each
round) consumes a topic filled by the ingest rounds into its SQLite store; results/s from the
first stored result until every record is stored (polled in the store).  Alone, and as two
members of one consumer group sharing the data directory (what docs/kafka.md says of
members on one SQLite store comes from here), alternately.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

from tests.support.kafka import BrokerControl, load_broker_script
from tests.support.kafka_collector import store_count
from tests.support.kafka_io import wait_until

BATCH = 500
CLIENTS = (1, 8, 32)
SINKS = {
    "embedded": "embedded (local log + processor)",
    "kafka": "Kafka, ingest only (--processor false)",
    "kafka+processor": "Kafka + processor (serve's default: a child process)",
}
PARTITIONS = 6
CATCH_UP_TIMEOUT = 300.0
SUITE = "bench"  # loadgen's suite


# -- the broker


class Broker:
    """A broker from scripts/kafka_broker.py in a temporary directory (or none: --bootstrap)."""

    def __init__(self, bootstrap: str | None) -> None:
        self.bootstrap = bootstrap or ""
        self._broker: BrokerControl | None = None
        self._dir: Path | None = None

    def __enter__(self) -> Broker:
        if not self.bootstrap:
            import tempfile

            self._dir = Path(tempfile.mkdtemp(prefix="testengine-bench-kafka-"))
            broker: BrokerControl = load_broker_script().Broker(self._dir)
            self._broker = broker
            self.bootstrap = broker.start(timeout=120.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._broker is not None:
            self._broker.stop()
        if self._dir is not None:
            import shutil

            shutil.rmtree(self._dir, ignore_errors=True)


# -- ingest


def kafka_env(bootstrap: str, topic: str, *, processor: bool = False) -> dict[str, str]:
    return {
        "TESTENGINE_KAFKA_BOOTSTRAP": bootstrap,
        "TESTENGINE_COLLECTOR_KAFKA_TOPIC": topic,
        "TESTENGINE_COLLECTOR_KAFKA_PARTITIONS": str(PARTITIONS),
        "TESTENGINE_COLLECTOR_PROCESSOR": str(processor).lower(),
    }


def wait_for(condition: Callable[[], bool], what: str, timeout: float = CATCH_UP_TIMEOUT) -> None:
    if not wait_until(condition, timeout):
        raise RuntimeError(f"{what} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest_round(
    sink: str,
    clients: int,
    batches: int,
    bootstrap: str,
    topics: list[str],
    cpu_used: list[float],
) -> tuple[float, list[float]]:
    """(accepted results/s, POST latencies) of one round with a fresh collector; appends the
    collector process's CPU seconds per accepted result to ``cpu_used``."""
    env: dict[str, str] = {}
    if sink != "embedded":
        topic = f"bench.{uuid.uuid4().hex[:12]}"
        topics.append(topic)
        env = kafka_env(bootstrap, topic, processor=sink == "kafka+processor")
    with (
        harness.workdir("kafka-ingest") as tmp,
        harness.Collector(tmp / "data", env=env) as collector,
    ):
        requests = loadgen.prepare("127.0.0.1", collector.port, batches, BATCH)
        assert collector.proc is not None
        before = cpu_seconds(collector.proc.pid)
        load = loadgen.post_all(
            "127.0.0.1", collector.port, requests, clients=clients, batch_size=BATCH
        )
        cpu_used.append((cpu_seconds(collector.proc.pid) - before) / max(load.results, 1))
        if sink != "kafka":  # let its processor finish before the next round (not timed)
            wait_for(lambda: stored_in(collector) >= load.results, "processor still behind")
    if load.rejected:
        raise RuntimeError(f"{load.rejected} batches rejected by the {sink} collector")
    return load.rate, load.latencies


def stored_in(collector: harness.Collector) -> int:
    """Results the collector's store holds (its read API)."""
    page = collector.get_json("/v1/suites")
    assert isinstance(page, dict)
    return sum(int(s["results"]) for s in page["items"] if s["suite"] == SUITE)


def measure_ingest(
    batches: int, rounds: int, warmup: int, bootstrap: str, topics: list[str]
) -> str:
    rows = []
    for clients in CLIENTS:
        latencies: dict[str, list[float]] = {s: [] for s in SINKS}
        cpu: dict[str, list[float]] = {s: [] for s in SINKS}

        def candidate(
            sink: str,
            clients: int = clients,
            latencies: dict[str, list[float]] = latencies,
            cpu: dict[str, list[float]] = cpu,
        ) -> Callable[[], float]:
            def run() -> float:
                rate, lat = ingest_round(sink, clients, batches, bootstrap, topics, cpu[sink])
                latencies[sink].extend(lat)
                return rate

            return run

        runs = harness.alternate(
            {s: candidate(s) for s in SINKS},
            rounds=rounds,
            warmup=warmup,
            progress=functools.partial(progress, clients),
        )
        for sink in SINKS:
            # latencies of the warm-up round are dropped with it: keep the measured rounds'
            per_round = len(latencies[sink]) // (rounds + warmup)
            measured = latencies[sink][per_round * warmup :]
            rows.append(
                (
                    clients,
                    SINKS[sink],
                    runs.spread(sink).fmt("", 0),
                    f"{harness.percentile(measured, 50) * 1000:.1f}",
                    f"{harness.percentile(measured, 99) * 1000:.1f}",
                    f"{statistics.median(cpu[sink][warmup:]) * 1e6:.1f}",
                )
            )
    title = (
        f"### Kafka ingest (one collector process; {batches} batches of {BATCH} results per "
        f"round; median (min-max) of {rounds} rounds, sinks alternating)\n\n"
    )
    return title + harness.table(
        [
            "clients",
            "sink",
            "accepted results/s",
            "POST p50 ms",
            "POST p99 ms",
            "collector CPU µs/result",
        ],
        rows,
        "rlrrrr",
    )


def progress(clients: int, message: str) -> None:
    harness.log(f"{clients} clients, {message} results/s")


# -- processor


def process_round(
    bootstrap: str, topic: str, expected: int, members: int = 1
) -> tuple[float, float]:
    """``members`` ``process`` commands (one consumer group, one data directory) from their
    start until ``expected`` results are stored: (seconds until the first was stored,
    results/s from then on)."""
    with harness.workdir("kafka-process") as tmp:
        data = tmp / "data"
        command = [
            sys.executable,
            "-m",
            "collector_server",
            "process",
            "--kafka-bootstrap",
            bootstrap,
            "--kafka-topic",
            topic,
            "--kafka-group",
            f"bench-{uuid.uuid4().hex[:8]}",
            "--data-dir",
            str(data),
            "--log-level",
            "warning",
        ]
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                command,
                cwd=harness.ROOT,
                env=harness.bench_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(members)
        ]
        first: list[tuple[float, int]] = []

        def stored_all() -> bool:
            count = store_count(data, SUITE)
            if count and not first:
                first.append((time.perf_counter(), count))
            return count >= expected

        try:
            wait_for(stored_all, "processor behind")
            done = time.perf_counter()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    ((began, count),) = first
    if count >= expected:  # all stored before the first look (a tiny run): no rate
        return began - start, math.nan
    return began - start, (expected - count) / (done - began)


def measure_processor(
    bootstrap: str, topic: str, records: int, rounds: int, members: tuple[int, ...] = (1, 2)
) -> str:
    """``process`` alone and as several members of one group sharing a data directory,
    alternately, after a warm-up round of each."""
    found: dict[int, list[tuple[float, float]]] = {n: [] for n in members}
    for index in range(rounds + 1):
        for n in members if index % 2 == 0 else members[::-1]:
            start_up, rate = process_round(bootstrap, topic, records, n)
            harness.log(
                f"processor x{n}: first result after {start_up:.2f} s, then {rate:.0f} results/s"
            )
            if index:
                found[n].append((start_up, rate))
    rows = []
    for n in members:
        start_ups = harness.Spread.of([s for s, _ in found[n]])
        # a round that stored everything before its first look has no rate
        rates = [r for _, r in found[n] if not math.isnan(r)]
        rate = harness.Spread.of(rates).fmt("", 0) if rates else "(all stored at once)"
        if rates and len(rates) < len(found[n]):
            rate += f", {len(rates)} of {len(found[n])} rounds"
        rows.append((f"{n}", start_ups.fmt(" s"), rate))
    return (
        f"### Processor, Kafka to the SQLite store (`testengine-collector process`, "
        f"{records} records on {PARTITIONS} partitions, default batch 5000; median (min-max) "
        f"of {rounds} alternated rounds after a warm-up)\n\n"
        + harness.table(
            ["process members", "start to first result stored", "results/s after the first"],
            rows,
            "rrr",
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--bootstrap", default=os.environ.get("TESTENGINE_TEST_KAFKA_BOOTSTRAP"))
    parser.add_argument("--batches", type=int, default=None, help="batches of 500 per round")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    args = parser.parse_args(argv)
    batches = args.batches or (4 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = 0 if args.quick else 1
    print(f"Machine: {harness.machine()}\n")
    with Broker(args.bootstrap) as broker:
        topics: list[str] = []
        print(measure_ingest(batches, rounds, warmup, broker.bootstrap, topics))
        print()
        print(measure_processor(broker.bootstrap, topics[-1], batches * BATCH, rounds))
    print(f"\nLoad average at the end: {harness.load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

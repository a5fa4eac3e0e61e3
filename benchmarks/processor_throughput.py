"""Processor: results/s from the embedded local log into the SQLite store.

Run from the repository root::

    python benchmarks/processor_throughput.py            # 200 entries of 500 results
    python benchmarks/processor_throughput.py --quick    # tiny sizes (a smoke run)

In one process, without HTTP: a fresh data directory gets a local log of ``--entries``
entries (one per accepted batch of 500 results; 50 shards of a 25,000-test suite, so tests
come back run after run), then a :class:`LocalProcessor` with the default settings applies it
and the time until it has caught up is measured.  Two ways, alternately:

- *from the log*: the processor reads and decodes the entries (after a restart, or when it
  lags by more than it holds in memory);
- *handed over*: the entries reach it the way the log writer hands them over after each
  commit, already decoded (the collector's normal path).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen
import orjson

from collector_server import ingest
from collector_server.processor import LocalProcessor
from collector_server.settings import CollectorSettings
from collector_server.sinks.local import LocalLog, encode_entry
from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import Record, records_of

BATCH = 500


def batches(entries: int) -> list[list[Record]]:
    limits = ingest.Limits.from_settings(CollectorSettings())
    out = []
    for _ in range(entries):
        raw = gzip.decompress(loadgen.body(BATCH, next(loadgen._runs)))
        out.append(records_of("default", ingest.validate_batch(orjson.loads(raw), limits)))
    return out


def apply_once(records: Sequence[list[Record]], handed: bool) -> float:
    settings = CollectorSettings()
    with harness.workdir("processor") as tmp:
        log = LocalLog(tmp / "log.db")
        log.open()
        offset = log.append([encode_entry(r) for r in records])
        first = offset - len(records) + 1
        store = SqliteStore(tmp / "store.db").open()
        processor = LocalProcessor(
            log,
            store,
            batch_records=settings.processor_batch,
            linger=settings.processor_linger,
        )
        start = time.perf_counter()
        if handed:
            processor.on_commit(first, list(records))
        processor.start()
        if not processor.wait_caught_up(600):
            raise RuntimeError("processor did not catch up in 600 s")
        seconds = time.perf_counter() - start
        processor.stop()
        store.close()
        log.close()
    return len(records) * BATCH / seconds


def measure(entries: int, rounds: int, warmup: int) -> str:
    records = batches(entries)
    runs: dict[str, Callable[[], float]] = {
        "from the log (read and decode)": lambda: apply_once(records, False),
        "handed over after each commit": lambda: apply_once(records, True),
    }
    found = harness.alternate(runs, rounds=rounds, warmup=warmup, progress=harness.log)
    rows = [(name, found.spread(name).fmt("", 0)) for name in found.names]
    title = (
        f"### Processor: local log to SQLite store, {entries * BATCH:,} results in {entries} "
        f"entries (median (min-max) of {rounds} alternated rounds)\n\n"
    )
    return title + harness.table(["path", "results/s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--entries", type=int, default=None, help="log entries of 500 results")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    args = parser.parse_args(argv)
    entries = args.entries or (6 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    print(measure(entries, rounds, warmup=0 if args.quick else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

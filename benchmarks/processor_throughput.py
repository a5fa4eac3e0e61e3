"""Processor: results/s from the embedded local log into the SQLite store.

Run from the repository root::

    python benchmarks/processor_throughput.py            # 200 entries of 500 results
    python benchmarks/processor_throughput.py --quick    # tiny sizes (a smoke run)

In one process, without HTTP: a fresh data directory gets a local log of ``--entries``
entries (one per accepted batch of 500 results; 50 shards of a 25,000-test suite, so tests
come back run after run), then a :class:`LocalProcessor` with the default settings applies it
and the time until it has caught up is measured.  Two ways, alternately:

- *from the log*: the processor reads and decodes the entries the collector writes for
  checked batches (their bodies as sent): what the processor process does (the default),
  and the thread mode too (both read the log);
- *handed over*: the entries reach it the way the log writer hands them over after each
  commit, already decoded into records (a sink subscriber that takes records: the thread
  mode before it read bodies from the log, batches not shaped as the plugin sends them);
- *from the log, into a store with history*: as the first, into a store that already holds
  ``--history`` entries of the same suite (1,000,000 results: every test has its recent
  durations), written once before the rounds and copied for each.  A collector's store
  soon looks like this one; the empty store of the first two flatters the processor;
- *the same, entries without their rows*: the entries the collector wrote before they
  carried the rows of their results (the processor gunzips and parses the results);
- *the same store, processor already running*: the processor first applies half as many
  other entries, untimed, and the measured ones reach it running: a collector's processor
  does not start for each batch, and the rows above include its start (statistics cache
  empty, the store's pages cold).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
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
from collector_server.processor import LocalProcessor, settle_gc
from collector_server.settings import CollectorSettings
from collector_server.sinks.local import (
    LocalLog,
    decode_entry,
    decode_entry_rows,
    encode_body_entry,
    encode_entry,
)
from collector_server.store.sqlite import SqliteStore
from collector_server.store.sqlite_write import STATISTICS_DELAY
from pytest_testengine.model import Record, records_of

BATCH = 500
#: The collector's default limits, which the benchmark's batches are checked against.
LIMITS = ingest.Limits.from_settings(CollectorSettings())


def batches(entries: int) -> tuple[list[list[Record]], list[bytes], list[bytes]]:
    """The same batches as records (the in-memory handoff), as the log entries the
    collector writes for them (checked bodies and their rows, what the processor process
    reads) and as the entries it wrote before they carried their rows."""
    records, bodies, without_rows = [], [], []
    for _ in range(entries):
        wire = loadgen.body(BATCH, next(loadgen._runs))  # gzipped, as the plugin sends it
        checked = check(wire)
        records.append(
            records_of("default", ingest.validate_batch(orjson.loads(checked.body), LIMITS))
        )
        bodies.append(body_entry(checked, wire))
        without_rows.append(body_entry(checked, wire, rows=False))
    return records, bodies, without_rows


def check(wire: bytes) -> ingest.Checked:
    """A gzipped batch as the collector checks it."""
    raw = gzip.decompress(wire)
    checked = ingest.check_batch(orjson.loads(raw), raw, LIMITS)
    assert isinstance(checked, ingest.Checked)
    return checked


def fresh_entries(n: int) -> list[bytes]:
    """The log entries (with their rows) of ``n`` new batches of the benchmark's suite."""
    wires = [loadgen.body(BATCH, next(loadgen._runs)) for _ in range(n)]
    return [body_entry(check(wire), wire) for wire in wires]


def body_entry(checked: ingest.Checked, wire: bytes, *, rows: bool = True) -> bytes:
    """The log entry the collector writes for a gzipped batch it checked (``rows``: with the
    rows of its results, as it does now)."""
    results = checked.results if rows else None
    return encode_body_entry("default", checked.run, checked.body, wire, results)


def _freeze() -> None:
    """Set the garbage collector as the processor's own process does (``settle_gc``), which
    also keeps the inputs built so far out of its way: that process does not hold 100,000
    results beside what it works on, and every full collection would walk them."""
    settle_gc()


def store_with_history(path: Path, entries: int) -> Path:
    """A store holding ``entries`` log entries' worth of results of the benchmark's suite,
    written directly (no log offsets: a processor over a fresh log applies all of it)."""
    store = SqliteStore(path).open()
    step = max(1, 5000 // BATCH)
    for start in range(0, entries, step):
        batch = fresh_entries(min(step, entries - start))
        groups = [group for entry in batch for group in decode_entry_rows(entry)]
        store.write_prepared(store.prepare(groups), defer_statistics=True)
    store.flush_statistics()
    store.close()
    return path


def apply_once(
    records: Sequence[list[Record]],
    bodies: Sequence[bytes],
    handed: bool,
    history: Path | None = None,
    running: Sequence[bytes] = (),
) -> float:
    """Results/s of a processor applying ``bodies`` (or ``records`` handed over), into a
    copy of the store ``history`` if given.  With ``running`` entries, the processor applies
    those first, untimed, and the measured entries come to it running, as to a collector's
    processor (its statistics cache filled, the store's pages read)."""
    settings = CollectorSettings()
    with harness.workdir("processor") as tmp:
        log = LocalLog(tmp / "log.db")
        log.open()
        if history is not None:
            shutil.copyfile(history, tmp / "store.db")
        store = SqliteStore(tmp / "store.db").open()
        processor = LocalProcessor(
            log,
            store,
            batch_records=settings.processor_batch,
            linger=settings.processor_linger,
        )
        if running:
            log.append(list(running))
            processor.start()
            if not processor.wait_caught_up(600):
                raise RuntimeError("processor did not catch up in 600 s")
        start = time.perf_counter()
        offset = log.append([encode_entry(r) for r in records] if handed else list(bodies))
        first = offset - len(records) + 1
        if handed:
            processor.on_commit(first, list(records))
        if running:
            processor.wake()
        else:
            processor.start()
        if not processor.wait_caught_up(600):
            raise RuntimeError("processor did not catch up in 600 s")
        seconds = time.perf_counter() - start
        processor.stop()
        store.close()
        log.close()
    return len(records) * BATCH / seconds


def stages(entries: int, rounds: int) -> str:
    """CPU time per result of each step a result goes through, one step at a time."""
    bodies = [loadgen.body(BATCH, next(loadgen._runs)) for _ in range(entries)]
    raw = [gzip.decompress(b) for b in bodies]
    objs = [orjson.loads(r) for r in raw]
    checked = [check(b) for b in bodies]
    full = [records_of("default", ingest.validate_batch(o, LIMITS)) for o in objs]

    def entries_of(rows: bool) -> list[bytes]:
        return [body_entry(c, wire, rows=rows) for c, wire in zip(checked, bodies, strict=True)]

    body_entries = entries_of(rows=True)
    gzip_entries = entries_of(rows=False)  # what the collector wrote before
    rows = [decode_entry_rows(e) for e in body_entries]
    count = entries * BATCH
    _freeze()
    step = max(1, 5000 // BATCH)
    rounds_of_rows = [
        [g for gs in rows[start : start + step] for g in gs] for start in range(0, entries, step)
    ]

    def prepare() -> None:
        with harness.workdir("stages") as tmp:
            store = SqliteStore(tmp / "store.db")
            for groups in rounds_of_rows:
                store.prepare(groups)

    def write_store(defer: bool) -> None:
        with harness.workdir("stages") as tmp:
            store = SqliteStore(tmp / "store.db").open()
            prepared = [store.prepare(groups) for groups in rounds_of_rows]
            start = time.process_time()
            for work in prepared:
                store.write_prepared(work, defer_statistics=defer)
            store.flush_statistics()
            spent[0] += time.process_time() - start
            store.close()

    spent = [0.0]

    steps: list[tuple[str, str, Callable[[], object]]] = [
        ("collector", "gunzip", lambda: [ingest.gunzip(b, 1 << 30) for b in bodies]),
        ("collector", "parse JSON (orjson)", lambda: [orjson.loads(r) for r in raw]),
        (
            "collector",
            "check (check_batch, no objects)",
            lambda: [ingest.check_batch(o, r, LIMITS) for o, r in zip(objs, raw, strict=True)],
        ),
        (
            "collector",
            "store the body and its rows in a log entry",
            lambda: entries_of(rows=True),
        ),
        (
            "(before)",
            "store the body in a log entry, without its rows",
            lambda: entries_of(rows=False),
        ),
        (
            "(records)",
            "validate into Result objects",
            lambda: [records_of("default", ingest.validate_batch(o, LIMITS)) for o in objs],
        ),
        (
            "(records)",
            "encode records into a log entry",
            lambda: [encode_entry(r) for r in full],
        ),
        (
            "(before)",
            "decode a log entry into Records",
            lambda: [decode_entry(e) for e in body_entries],
        ),
        (
            "processor",
            "decode a log entry into rows",
            lambda: [decode_entry_rows(e) for e in body_entries],
        ),
        (
            "(before)",
            "decode a log entry without its rows (gunzip, parse the results)",
            lambda: [decode_entry_rows(e) for e in gzip_entries],
        ),
        ("processor", "prepare a write (Python, 5,000 per transaction)", prepare),
        (
            "processor",
            "store write (SQLite, 5,000 per transaction), statistics merged by each",
            lambda: write_store(False),
        ),
        (
            "processor",
            "store write, statistics waiting (a busy processor: merged every "
            f"{STATISTICS_DELAY:g} s at most)",
            lambda: write_store(True),
        ),
    ]
    table = []
    for where, name, work in steps:
        times = []
        for _ in range(rounds):
            spent[0] = 0.0
            start = time.process_time()
            work()
            took = spent[0] or time.process_time() - start  # the store write alone
            times.append(took / count * 1e6)
        table.append((where, name, harness.Spread.of(times).fmt("", 1)))
    title = (
        f"### Where the time goes: CPU µs per result of each step, {count:,} results "
        f"(median (min-max) of {rounds})\n\n"
    )
    return title + harness.table(["process", "step", "µs per result"], table, "llr")


def measure(entries: int, rounds: int, warmup: int, history: int) -> str:
    records, bodies, without_rows = batches(entries)
    before = fresh_entries(max(1, entries // 2))  # applied first by a running processor
    with harness.workdir("history") as tmp:
        harness.log(f"writing a store of {history * BATCH:,} results")
        filled = store_with_history(tmp / "store.db", history)
        _freeze()
        runs: dict[str, Callable[[], float]] = {
            "from the log (read and decode)": lambda: apply_once(records, bodies, False),
            "handed over after each commit": lambda: apply_once(records, bodies, True),
            f"from the log, into a store of {history * BATCH:,} results": lambda: apply_once(
                records, bodies, False, filled
            ),
            "the same, entries without their rows (before)": lambda: apply_once(
                records, without_rows, False, filled
            ),
            "the same store, processor already running": lambda: apply_once(
                records, bodies, False, filled, running=before
            ),
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
    parser.add_argument(
        "--history", type=int, default=None, help="entries of 500 results already stored"
    )
    args = parser.parse_args(argv)
    entries = args.entries or (6 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    history = args.history or (4 if args.quick else 2000)
    print(measure(entries, rounds, warmup=0 if args.quick else 1, history=history))
    print()
    print(stages(entries, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

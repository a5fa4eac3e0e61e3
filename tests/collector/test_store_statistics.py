"""Test statistics that wait while the writer is behind: merged later, as if merged at once,
and merged again from the stored results after a crash."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector_server.processor import LocalProcessor
from collector_server.sinks.local import LocalLog, encode_entry
from collector_server.store.rows import rows_of_records
from collector_server.store.sqlite import SqliteStore
from collector_server.store.sqlite_write import STATISTICS_DELAY
from pytest_testengine.model import Record
from tests.collector.batches import batch, result
from tests.collector.test_store_rows import answers, many_executions

ROUND = 40  # results per write


def rounds(records: list[Record]) -> list[list[Record]]:
    return [records[start : start + ROUND] for start in range(0, len(records), ROUND)]


def test_deferred_statistics_wait_then_equal_those_merged_at_once(open_store: Any) -> None:
    now = [1000.0]
    store = SqliteStore(open_store().path, clock=lambda: now[0]).open()
    reference = SqliteStore(open_store("reference.db").path, clock=lambda: now[0]).open()
    try:
        parts = rounds(many_executions())
        for part in parts[:-1]:
            store.write_prepared(store.prepare(rows_of_records(part)), defer_statistics=True)
            reference.write(part)
            now[0] += 0.1
        assert store.tests("t", "default", limit=10).items == []  # waiting for 0.5 s
        assert store.results("t", "default", limit=1000).items == answers(reference)["results"]
        store.write_prepared(store.prepare(rows_of_records(parts[-1])))  # not deferred
        reference.write(parts[-1])
        assert answers(store) == answers(reference)

        before = answers(reference)["tests"]
        later = many_executions()[:ROUND]
        store.write_prepared(store.prepare(rows_of_records(later)), defer_statistics=True)
        reference.write(later)
        assert store.tests("t", "default", limit=10).items == before
        now[0] += STATISTICS_DELAY  # past the delay: the next write merges what waits
        store.write_prepared(store.prepare(rows_of_records([])), defer_statistics=True)
        assert answers(store) == answers(reference)
        assert answers(store)["tests"] != before
    finally:
        store.close()
        reference.close()


def crashed_writer(tmp_path: Path, path: Path, parts: list[list[Record]]) -> None:
    """Another process writes ``parts`` to the store at ``path``, letting the statistics
    wait, and dies without closing it (what waits in its memory is lost)."""
    entries = tmp_path / "entries.json"
    entries.write_bytes(orjson.dumps([encode_entry(part).decode() for part in parts]))
    script = f"""
import os, sys
from pathlib import Path
import orjson
from collector_server.sinks.local import decode_entry
from collector_server.store.rows import rows_of_records
from collector_server.store.sqlite import SqliteStore
store = SqliteStore(Path({str(path)!r}), clock=lambda: 1234.0).open()
for entry in orjson.loads(Path({str(entries)!r}).read_bytes()):
    work = store.prepare(rows_of_records(decode_entry(entry.encode())))
    store.write_prepared(work, defer_statistics=True)
assert store.tests("t", "default", limit=10).items == []
os._exit(9)
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == 9


def assert_as_written_at_once(
    store: SqliteStore, reference: SqliteStore, parts: list[list[Record]]
) -> None:
    """``store`` answers what ``reference`` does once ``parts`` are written to it."""
    for part in parts:
        reference.write(part)
    assert answers(store) == answers(reference)


def answers_of(path: Path, now: float = 1234.0) -> dict[str, Any]:
    """What the read API answers from the store at ``path``, opened for it at ``now``."""
    store = SqliteStore(path, clock=lambda: now).open()
    try:
        return answers(store)
    finally:
        store.close()


def test_statistics_left_waiting_by_a_crash_are_merged_when_the_store_opens(
    tmp_path: Path, open_store: Any
) -> None:
    parts = rounds(many_executions())
    path = tmp_path / "crashed.db"
    crashed_writer(tmp_path, path, parts)
    # opened later than written: results without a stop time still count as seen when
    # they were written (1234), not when the store opened
    reopened = answers_of(path, now=5678.0)
    reference = open_store("reference.db")
    for part in parts:
        reference.write(part)
    assert reopened == answers(reference)
    assert reopened["tests"][0]["runs"] == 48
    seen = {t["nodeid"]: t["last_seen"] for t in reopened["tests"]}
    assert [seen[f"t.py::test_{i}"] for i in range(4)] == [1234.0] * 4  # each had a stop 0
    assert answers_of(path) == reopened  # and only once


def test_a_first_merge_that_fails_is_tried_again_not_dropped(
    tmp_path: Path, open_store: Any
) -> None:
    parts = rounds(many_executions())
    path = tmp_path / "store.db"
    writer = SqliteStore(path, clock=lambda: 1234.0).open()  # before the crash: nothing to merge
    try:
        assert writer._conn is not None
        writer._conn.execute("PRAGMA busy_timeout = 200")
        crashed_writer(tmp_path, path, parts[:3])
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer's transaction: the merge fails once
        with pytest.raises(sqlite3.OperationalError):
            writer.write_prepared(writer.prepare(rows_of_records(parts[3])), defer_statistics=True)
        other.execute("ROLLBACK")
        other.close()
        for part in parts[3:]:
            writer.write_prepared(writer.prepare(rows_of_records(part)), defer_statistics=True)
        writer.flush_statistics()
        assert_as_written_at_once(writer, open_store("reference.db"), parts)
    finally:
        writer.close()


def test_statistics_merged_on_close_are_not_merged_again_when_reopened(
    open_store: Any,
) -> None:
    writer, reference = open_store(), open_store("reference.db")
    for part in rounds(many_executions()):
        writer.write_prepared(writer.prepare(rows_of_records(part)), defer_statistics=True)
        reference.write(part)
    writer.close()
    with pytest.raises(sqlite3.ProgrammingError, match="open already"):
        reference.open()
    assert answers_of(writer.path) == answers(reference)


def log_and_stores(
    tmp_path: Path, open_store: Any
) -> tuple[LocalLog, SqliteStore, SqliteStore, list[list[Record]]]:
    """An open log, a store, a reference store, and the rounds of many executions."""
    log = LocalLog(tmp_path / "log.db")
    log.open()
    return log, open_store(), open_store("reference.db"), rounds(many_executions())


def test_processor_defers_statistics_while_behind_and_merges_once_caught_up(
    tmp_path: Path, open_store: Any
) -> None:
    log, store, reference, parts = log_and_stores(tmp_path, open_store)
    log.append([encode_entry(part) for part in parts])
    processor = LocalProcessor(log, store, batch_records=ROUND)
    try:
        assert processor.step() == 1
        assert store.tests("t", "default", limit=10).items == []  # more waits in the log
        while processor.step():
            pass
        assert_as_written_at_once(store, reference, parts)
    finally:
        log.close()


def test_running_processor_merges_waiting_statistics_once_idle(
    tmp_path: Path, open_store: Any
) -> None:
    log, store, reference, parts = log_and_stores(tmp_path, open_store)
    processor = LocalProcessor(log, store, batch_records=ROUND)
    processor.start()
    try:
        for part in parts:  # in quick succession: rounds after the first let them wait
            log.append([encode_entry(part)])
            processor.wake()
            reference.write(part)
        assert processor.wait_caught_up(10.0)  # results and statistics
        assert processor.applied == processor.offset == len(parts)
        assert not store.statistics_waiting
        assert answers(store) == answers(reference)
    finally:
        processor.stop()
        log.close()


def test_a_store_opened_beside_a_writer_with_waiting_statistics_counts_them_once(
    open_store: Any,
) -> None:
    parts = rounds(many_executions())
    writer, reference = open_store(), open_store("reference.db")
    for part in parts[:3]:
        writer.write_prepared(writer.prepare(rows_of_records(part)), defer_statistics=True)
        reference.write(part)
    assert writer.statistics_waiting
    beside = SqliteStore(writer.path, clock=lambda: 1234.0).open()  # e.g. a second consumer
    try:
        assert beside.tests("t", "default", limit=10).items == []  # not merged by this open
        for part in parts[3:]:  # the writer lets its statistics wait: this one cannot
            beside.write_prepared(beside.prepare(rows_of_records(part)), defer_statistics=True)
            reference.write(part)
            assert not beside.statistics_waiting
    finally:
        beside.close()
    writer.flush_statistics()
    assert not writer.statistics_waiting

    def in_any_order(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # two writers at once: durations are in the order they were merged, and of results
        # seen at the same time the last merged gives the last outcome
        return [
            {**t, "recent_durations": sorted(t["recent_durations"]), "last_outcome": None}
            for t in tests
        ]

    tests = answers(writer)["tests"]
    assert in_any_order(tests) == in_any_order(answers(reference)["tests"])
    assert tests[0]["runs"] == 48


def in_rounds(records: list[Record], size: int) -> list[list[Record]]:
    return [records[start : start + size] for start in range(0, len(records), size)]


@pytest.mark.parametrize("merging", [False, True], ids=["waiting", "merging"])
@pytest.mark.parametrize("size", [5, 40], ids=["each-test-once-a-write", "each-test-8-times"])
def test_a_waiting_write_rolled_back_retried_and_applied_again_counts_once(
    open_store: Any, size: int, merging: bool
) -> None:
    """A write fails once its statistics were added to those waiting (``merging``: in the
    write that merges them all); what waited is merged again from the stored results."""
    store, reference = open_store(), open_store("reference.db")
    conn = store._conn
    assert conn is not None
    parts = in_rounds(many_executions() + many_executions(), size)  # more than 20 durations
    for n, part in enumerate(parts):
        work = store.prepare(rows_of_records(part))
        if n % 3 == 1:  # fails once its statistics were added to those waiting: rolled back
            conn.execute(
                "CREATE TEMP TRIGGER no_offsets BEFORE INSERT ON offsets"
                " BEGIN SELECT RAISE(FAIL, 'disk full'); END"
            )
            with pytest.raises(sqlite3.IntegrityError, match="disk full"):
                store.write_prepared(work, offsets={"local": n}, defer_statistics=not merging)
            conn.execute("DROP TRIGGER no_offsets")
        assert store.write_prepared(work, offsets={"local": n}, defer_statistics=True) == len(part)
        assert store.write_prepared(work, defer_statistics=True) == 0  # committed: all known
        reference.write(part)
        assert store.statistics_waiting
    store.flush_statistics()
    assert answers(store) == answers(reference)
    assert answers(store)["tests"][0]["runs"] == 96
    assert len(answers(store)["tests"][0]["recent_durations"]) == 20


def test_a_write_applied_to_two_stores_counts_once_in_each(open_store: Any) -> None:
    first, second, reference = open_store(), open_store("second.db"), open_store("reference.db")
    for part in in_rounds(many_executions(), 5):
        work = first.prepare(rows_of_records(part))
        for store in (first, second):  # the first one keeps its statistics waiting
            assert store.write_prepared(work, defer_statistics=True) == len(part)
        reference.write(part)
    for store in (first, second):
        store.flush_statistics()
        assert answers(store) == answers(reference)


@pytest.mark.parametrize("defer", [False, True], ids=["merged-at-once", "waiting"])
def test_a_test_run_more_often_than_the_recent_durations_in_one_write_keeps_the_last(
    open_store: Any, defer: bool
) -> None:
    store = open_store()
    b = batch(0)
    runs = [Record("t", b.run, result(0, duration=float(n))) for n in range(35)]
    for part in (runs[:30], runs[30:32], runs[32:]):
        store.write_prepared(store.prepare(rows_of_records(part)), defer_statistics=defer)
    store.flush_statistics()
    (test,) = store.tests("t", b.run.suite, limit=10).items
    assert test["runs"] == 35
    assert test["outcomes"] == {**dict.fromkeys(test["outcomes"], 0), "passed": 35}
    assert test["recent_durations"] == [float(n) for n in range(15, 35)]

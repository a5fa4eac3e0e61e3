"""SqliteStore: deduplication, statistics, offsets, paging (real SQLite files)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector_server.store import InvalidCursor
from collector_server.store.sqlite import RECENT_DURATIONS, SqliteStore
from pytest_testengine.model import Record, records_of
from tests.collector.batches import batch, result


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db", clock=lambda: 1234.0).open()
    try:
        yield s
    finally:
        s.close()


def test_write_is_idempotent_by_tenant_and_result_id(store: SqliteStore) -> None:
    records = records_of("t", batch(5))
    assert store.write(records) == 5
    assert store.write(records) == 0
    assert store.write([*records, *records_of("t", batch(2))]) == 2
    assert store.write(records_of("other", records_and_run(records))) == 5  # other tenant
    assert len(store.results("t", "default", limit=100).items) == 7
    assert len(store.results("other", "default", limit=100).items) == 5


def records_and_run(records: list[Record]) -> object:
    from pytest_testengine.model import Batch

    return Batch(records[0].run, [r.result for r in records])


def test_duplicates_inside_one_write_count_once(store: SqliteStore) -> None:
    records = records_of("t", batch(3))
    assert store.write([*records, records[1], records[1]]) == 3
    tests = store.tests("t", "default", limit=10).items
    assert [t["runs"] for t in tests] == [1, 1, 1]


def test_statistics_keep_recent_passing_durations_and_their_median(store: SqliteStore) -> None:
    b = batch(0)
    nodeid = "t.py::test_slow"
    for i in range(30):
        outcome = "failed" if i % 10 == 9 else "passed"
        r = result(0, nodeid=nodeid, duration=float(i), outcome=outcome, stop=100.0 + i)
        store.write([Record("t", b.run, r)])
    (test,) = store.tests("t", "default", limit=10).items
    passing = [float(i) for i in range(30) if i % 10 != 9]
    assert test["runs"] == 30
    assert test["outcomes"]["passed"] == 27
    assert test["outcomes"]["failed"] == 3
    assert test["recent_durations"] == passing[-RECENT_DURATIONS:]
    assert test["median_duration"] == 17.5  # 7, 8, 10..18, 20..28: (17 + 18) / 2
    assert test["last_outcome"] == "failed"
    assert test["last_seen"] == 129.0


def test_one_batch_with_many_executions_of_a_test(store: SqliteStore) -> None:
    b = batch(0)
    rs = [result(0, nodeid="t.py::t", duration=float(d), stop=float(d)) for d in (3, 1, 2)]
    store.write([Record("t", b.run, r) for r in rs])
    (test,) = store.tests("t", "default", limit=10).items
    assert (test["runs"], test["recent_durations"], test["median_duration"]) == (3, [3, 1, 2], 2)


def test_runs_count_outcomes_across_batches(store: SqliteStore) -> None:
    first = batch(2, suite="s")
    store.write(records_of("t", first))
    later = batch(3, suite="s", run_id=first.run.run_id, outcome="failed", start=5.0, stop=9.0)
    store.write(records_of("t", later))
    (run,) = store.runs("t", "s", limit=10).items
    assert run["run_id"] == first.run.run_id
    assert run["total"] == 5
    assert (run["outcomes"]["passed"], run["outcomes"]["failed"]) == (2, 3)
    assert (run["started"], run["finished"]) == (5.0, 1_700_000_001.5)
    assert run["branch"] == "main"


def test_offsets_commit_with_records(store: SqliteStore, tmp_path: Path) -> None:
    assert store.offsets() == {}
    store.write(records_of("t", batch(1)), offsets={"local": 7})
    store.write([], offsets={"local": 9, "kafka:0": 3})
    assert store.offsets() == {"local": 9, "kafka:0": 3}
    store.close()
    reopened = SqliteStore(tmp_path / "store.db").open()
    try:
        assert reopened.offsets() == {"local": 9, "kafka:0": 3}
    finally:
        reopened.close()


def test_failed_write_keeps_neither_records_nor_offset(store: SqliteStore) -> None:
    good = records_of("t", batch(2))
    bad = records_of("t", batch(1, nodeid=None))  # NOT NULL constraint fails mid-transaction
    with pytest.raises(sqlite3.IntegrityError):
        store.write([*good, *bad], offsets={"local": 5})
    assert store.offsets() == {}
    assert store.results("t", "default", limit=10).items == []


def test_paging_and_cursors(store: SqliteStore) -> None:
    for suite in ("b", "a", "c"):
        store.write(records_of("t", batch(5, suite=suite)))
    page = store.suites("t", limit=2)
    assert [s["suite"] for s in page.items] == ["a", "b"]
    assert page.next_cursor is not None
    page = store.suites("t", limit=2, cursor=page.next_cursor)
    assert ([s["suite"] for s in page.items], page.next_cursor) == (["c"], None)
    ids: list[str] = []
    cursor = None
    for _ in range(10):
        page = store.results("t", "a", limit=2, cursor=cursor)
        ids += [r["id"] for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(ids) == len(set(ids)) == 5
    tests_page = store.tests("t", "a", limit=2)
    with pytest.raises(InvalidCursor):
        store.results("t", "a", limit=2, cursor=tests_page.next_cursor)
    with pytest.raises(InvalidCursor):
        store.runs("t", "a", limit=2, cursor="%%%")


def test_paging_through_a_batch_decodes_it_once(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector_server.store import sqlite as sqlite_module

    store.write(records_of("t", batch(60)))  # one batch of 60
    store.write(records_of("t", batch(30)))  # and one of 30
    everything = store.results("t", "default", limit=1000).items
    decoded: list[int] = []
    real = sqlite_module.results_in

    def counting(data: bytes) -> list[dict[str, object]]:
        found = real(data)
        decoded.append(len(found))
        return found

    monkeypatch.setattr(sqlite_module, "results_in", counting)
    items: list[dict[str, object]] = []
    cursor = None
    for _ in range(100):
        page = store.results("t", "default", limit=7, cursor=cursor)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    assert items == everything  # the same results, in order, none twice
    assert sorted(decoded) == [30, 60]  # each batch decoded once, not once per page

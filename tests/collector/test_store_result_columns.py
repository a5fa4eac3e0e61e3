"""A store whose results rows still hold outcome, duration and start (before they were
dropped: nothing read them) opens with the narrower table and answers as before."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import Record, records_of
from tests.collector.batches import batch
from tests.collector.test_store_migration import open_at_once
from tests.collector.test_store_rows import answers, many_executions

#: The results table as stores had it before (the batches table beside it as today).
WIDE_RESULTS = """
CREATE TABLE results (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    nodeid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration REAL NOT NULL,
    start REAL NOT NULL
);
CREATE UNIQUE INDEX results_id ON results (tenant, id);
"""


def widen(path: Path) -> None:
    """Give the results table of the store at ``path`` its earlier shape, rows kept."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        f"""
        BEGIN;
        ALTER TABLE results RENAME TO narrow;
        DROP INDEX results_id;
        {WIDE_RESULTS}
        INSERT INTO results (seq, tenant, id, nodeid, outcome, duration, start)
            SELECT seq, tenant, id, nodeid, 'passed', 0.5, 1700000000.0 FROM narrow;
        DROP TABLE narrow;
        COMMIT;
        """
    )
    conn.close()


def columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(results)")]
    finally:
        conn.close()


def with_build(records: list[Record], build_id: str) -> list[Record]:
    runs: dict[str, Any] = {}
    for r in records:
        runs.setdefault(r.run.run_id, dataclasses.replace(r.run, build_id=build_id))
    return [Record(r.tenant, runs[r.run.run_id], r.result) for r in records]


def test_a_store_with_wide_results_rows_answers_as_before_and_takes_new_ones(
    tmp_path: Path, open_store: Any
) -> None:
    records = with_build(many_executions(), "b1")
    old, new = records[:120], records[120:]
    path = tmp_path / "wide.db"
    writer = SqliteStore(path, clock=lambda: 1234.0).open()
    writer.write(old)
    writer.close()
    widen(path)
    assert columns(path) == ["seq", "tenant", "id", "nodeid", "outcome", "duration", "start"]

    store = SqliteStore(path, clock=lambda: 1234.0).open()
    reference = open_store("reference.db")
    try:
        assert columns(path) == ["seq", "tenant", "id", "nodeid"]
        reference.write(old)
        assert answers(store) == answers(reference)
        assert store.write([*old[:3], *new]) == len(new)  # known ids stay known
        reference.write(new)
        assert answers(store) == answers(reference)
        assert store.build("t", "default", "b1") == reference.build("t", "default", "b1")
        assert store.build("t", "default", "b1").counts["t.py::test_0"] == 6
    finally:
        store.close()
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "results_with_outcomes" not in tables


def test_processes_opening_a_wide_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    old = batch(30_000)
    writer = SqliteStore(path).open()
    writer.write(records_of("t", old))
    writer.close()
    widen(path)
    open_at_once(path)
    assert columns(path) == ["seq", "tenant", "id", "nodeid"]
    store = SqliteStore(path).open()  # and once more: nothing left to migrate
    try:
        page = store.results("t", old.run.suite, limit=10, cursor=None)
        assert [r["id"] for r in page.items] == [r.id for r in old.results[:10]]
        assert store.write(records_of("t", old)[:5]) == 0
    finally:
        store.close()
    conn = sqlite3.connect(path)
    counts = [
        conn.execute(f"SELECT count(*), min(seq), max(seq) FROM {t}").fetchone()
        for t in ("results", "results WHERE nodeid LIKE 'tests/%'")
    ]
    conn.close()
    assert counts == [(30_000, 1, 30_000)] * 2

"""A store written before results were kept per batch opens with every result readable."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson

from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import Batch, Record, records_of, result_to_dict
from tests.collector.batches import batch, result

#: The results table as stores before ``batches`` had it (each result's JSON in its row).
OLD_RESULTS = """
CREATE TABLE results (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    suite TEXT NOT NULL,
    run_id TEXT NOT NULL,
    nodeid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration REAL NOT NULL,
    start REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX results_id ON results (tenant, id);
CREATE INDEX results_suite ON results (tenant, suite, seq);
CREATE INDEX results_run ON results (tenant, suite, run_id, seq);
"""


def write_old_store(path: Path, old: Batch) -> None:
    """A store of the earlier shape holding the results of ``old`` (tenant ``t``)."""
    conn = sqlite3.connect(path)
    conn.executescript(OLD_RESULTS)
    conn.executemany(
        "INSERT INTO results (tenant, id, suite, run_id, nodeid, outcome, duration, start, data)"
        " VALUES ('t', ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.id,
                old.run.suite,
                old.run.run_id,
                r.nodeid,
                r.outcome,
                r.duration,
                r.start,
                orjson.dumps(result_to_dict(r)),
            )
            for r in old.results
        ],
    )
    conn.commit()
    conn.close()


def test_results_of_an_old_store_are_read_and_new_ones_follow(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    old = batch(3)
    write_old_store(path, old)

    store = SqliteStore(path).open()
    try:
        first = store.results("t", old.run.suite, limit=2)
        assert [r["id"] for r in first.items] == [r.id for r in old.results[:2]]
        assert first.items[0] == {
            **result_to_dict(old.results[0]),
            "suite": old.run.suite,
            "run_id": old.run.run_id,
        }
        new, extra = batch(2), result(9)
        again = Record("t", old.run, old.results[2])  # an old id is still known
        assert store.write([again, *records_of("t", new), Record("t", new.run, extra)]) == 3
        rest = store.results("t", old.run.suite, limit=10, cursor=first.next_cursor)
        assert [r["id"] for r in rest.items] == [
            old.results[2].id,
            *(r.id for r in new.results),
            extra.id,
        ]
        assert rest.next_cursor is None
        by_run = store.results("t", old.run.suite, run_id=old.run.run_id, limit=10)
        assert [r["id"] for r in by_run.items] == [r.id for r in old.results]
    finally:
        store.close()
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "results_before_batches" not in tables


def open_at_once(path: Path, processes: int = 3) -> None:
    """Open (and close) the store at ``path`` from several processes at the same time; each
    must succeed."""
    opening = "import sys; from pathlib import Path; from collector_server.store.sqlite import"
    opening += f" SqliteStore; SqliteStore(Path({str(path)!r})).open().close()"
    procs = [subprocess.Popen([sys.executable, "-c", opening]) for _ in range(processes)]
    assert [proc.wait(120) for proc in procs] == [0] * processes


def test_processes_opening_an_old_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    old = batch(30_000)
    write_old_store(path, old)
    open_at_once(path)
    store = SqliteStore(path).open()  # and once more: nothing left to migrate
    try:
        page = store.results("t", old.run.suite, limit=10, cursor=None)
        assert [r["id"] for r in page.items] == [r.id for r in old.results[:10]]
    finally:
        store.close()
    conn = sqlite3.connect(path)
    counts = [
        conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("results", "batches")
    ]
    conn.close()
    assert counts == [30_000, 30_000]

"""The embedded store: one SQLite database (``store.db``) in WAL mode.

Tables (every key starts with the tenant):

- ``results``: one row per result (tenant, id, nodeid), unique by (tenant, id), so a
  redelivered result is stored once; ``seq`` numbers them in the order they were stored.
- ``batches``: the results as they arrived, one row per run and write: the blob (a JSON
  array, or the log entry they came in, see ``store.rows.results_in``) holds the results
  ``first`` to ``last`` (their ``seq``), in order.  The read API pages through these.
- ``tests``: per-test statistics by (tenant, suite, nodeid): executions, counts by outcome,
  the last :data:`RECENT_DURATIONS` passing durations and their median, last outcome, last seen.
- ``runs``: one row per pytest session (tenant, suite, run_id) with counts by outcome.
- ``suites``: every suite a tenant reported, with its result count.
- ``offsets``: consumer positions, committed in the same transaction as the records.
- ``unmerged``: the batches whose test statistics wait in the memory of a busy writer (see
  ``sqlite_write.PendingTests``).  Only one writer at a time lets them wait: the one that
  holds the lock on ``store.db.lock`` (``flock``); a store that takes the lock first merges
  what a writer that held it before left unmerged (it stopped, or crashed).
- ``build_runs``: the runs of each CI build (tenant, suite, build_id, run_id) with the shard
  and plan they reported, for the builds report of the planner.

The write path is in :mod:`collector_server.store.sqlite_write`.  One connection writes (the
processor); reads use a small pool of connections so they never
wait for a write transaction.  Commits use ``synchronous=FULL``: once the processor has
committed an offset, the local log may drop the entries before it.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from collector_server.store import (
    BuildResults,
    BuildRun,
    InvalidCursor,
    Page,
    decode_cursor,
    encode_cursor,
)
from collector_server.store.rows import RunRows, results_in, row_of, rows_of_records
from collector_server.store.sqlite_write import (
    OUTCOME_COLUMNS,
    OUTCOME_LIST,
    RECENT_DURATIONS,
    KnownTests,
    PendingTests,
    PreparedWrite,
    Tests,
    add_statistics,
    apply,
    chunks,
    merge_tests,
    prepare,
)
from pytest_testengine.model import Record, run_from_dict

T = TypeVar("T")

STORE_FILE: Final = "store.db"
WRITER_CACHE_KIB: Final = 65_536  # page cache of the writer (SQLite's default: 2 MiB)
#: Batches a results page ended inside, kept decoded for the next page (see
#: :meth:`SqliteStore.results`); about 1 MB each.
OPEN_PAGES: Final = 8
__all__ = ["RECENT_DURATIONS", "STORE_FILE", "SqliteStore"]

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS suites (
    tenant TEXT NOT NULL,
    suite TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    results INTEGER NOT NULL,
    PRIMARY KEY (tenant, suite)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    nodeid TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS results_id ON results (tenant, id);
CREATE TABLE IF NOT EXISTS batches (
    last INTEGER PRIMARY KEY,
    first INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    suite TEXT NOT NULL,
    run_id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_suite ON batches (tenant, suite, last);
CREATE INDEX IF NOT EXISTS batches_run ON batches (tenant, suite, run_id, last);
CREATE TABLE IF NOT EXISTS tests (
    tenant TEXT NOT NULL,
    suite TEXT NOT NULL,
    nodeid TEXT NOT NULL,
    file TEXT NOT NULL,
    runs INTEGER NOT NULL,
    {", ".join(f"{o} INTEGER NOT NULL" for o in OUTCOME_COLUMNS)},
    durations BLOB NOT NULL,
    median REAL,
    last_outcome TEXT NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (tenant, suite, nodeid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    suite TEXT NOT NULL,
    run_id TEXT NOT NULL,
    info BLOB NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    started REAL,
    finished REAL,
    total INTEGER NOT NULL,
    {", ".join(f"{o} INTEGER NOT NULL" for o in OUTCOME_COLUMNS)}
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_id ON runs (tenant, suite, run_id);
CREATE INDEX IF NOT EXISTS runs_suite ON runs (tenant, suite, seq);
CREATE TABLE IF NOT EXISTS unmerged (
    last INTEGER PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    source TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS build_runs (
    tenant TEXT NOT NULL,
    suite TEXT NOT NULL,
    build_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    shard_index INTEGER,
    shard_total INTEGER,
    plan_id TEXT,
    PRIMARY KEY (tenant, suite, build_id, run_id)
) WITHOUT ROWID;
"""


#: Stores written before ``batches`` kept each result's JSON in its ``results`` row: each
#: becomes a batch of one, in the transaction that found the old table when the store opened.
_MIGRATE_RESULTS: Final = f"""
ALTER TABLE results RENAME TO results_before_batches;
DROP INDEX IF EXISTS results_id;
DROP INDEX IF EXISTS results_suite;
DROP INDEX IF EXISTS results_run;
{_SCHEMA}
INSERT INTO results (seq, tenant, id, nodeid)
    SELECT seq, tenant, id, nodeid FROM results_before_batches;
INSERT INTO batches (last, first, tenant, suite, run_id, data)
    SELECT seq, seq, tenant, suite, run_id, CAST('[' || data || ']' AS BLOB)
    FROM results_before_batches;
DROP TABLE results_before_batches;
"""
#: Stores written before results rows lost their outcome, duration and start (read by nothing:
#: the batches hold them) get the narrower table, their ``seq`` numbers kept.
_MIGRATE_RESULT_COLUMNS: Final = f"""
ALTER TABLE results RENAME TO results_with_outcomes;
DROP INDEX IF EXISTS results_id;
{_SCHEMA}
INSERT INTO results (seq, tenant, id, nodeid)
    SELECT seq, tenant, id, nodeid FROM results_with_outcomes;
DROP TABLE results_with_outcomes;
"""


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


_MIGRATE_STATEMENTS: Final = _statements(_MIGRATE_RESULTS)
_MIGRATE_COLUMN_STATEMENTS: Final = _statements(_MIGRATE_RESULT_COLUMNS)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class SqliteStore:
    """:class:`~collector_server.store.Store` on an SQLite file."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._known = KnownTests()
        self._pending = PendingTests()
        self._lock: int | None = None  # the descriptor of store.db.lock while we hold it
        #: ``last`` of a batch -> its results, for batches a page ended inside (a stored batch
        #: never changes, and ``last`` numbers one batch for good)
        self._open_pages: collections.OrderedDict[int, list[dict[str, Any]]] = (
            collections.OrderedDict()
        )
        self._pages_lock = threading.Lock()

    def open(self) -> SqliteStore:
        if self._conn is not None:
            raise sqlite3.ProgrammingError("store is open already")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        try:
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            conn.execute("BEGIN IMMEDIATE")  # another process may be opening it too
            columns = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
            migrate: list[str] = []
            if "data" in columns:
                migrate = _MIGRATE_STATEMENTS
            elif "outcome" in columns:
                migrate = _MIGRATE_COLUMN_STATEMENTS
            for statement in migrate:
                conn.execute(statement)
            conn.execute("COMMIT")
            conn.executescript(_SCHEMA)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn = conn
        self._known.forget()
        self._pending = PendingTests()
        if self._take_lock():  # no writer lets statistics wait now: merge what one left
            try:
                self._merge_unmerged()
            except BaseException:
                self.close()
                raise
            finally:
                self._release_lock()
        return self

    def _take_lock(self) -> bool:
        """Become the one writer that may let statistics wait (at once, or not at all)."""
        if self._lock is None:
            lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(lock)
                return False
            self._lock = lock
        return True

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # closing the descriptor lets go of the lock

    def _merge_unmerged(self) -> None:
        """Merge the test statistics of the batches in ``unmerged`` (left by a writer that
        let them wait and stopped before merging them); only with the lock."""
        with self._transaction() as conn:
            self._known.check(conn)
            tests: Tests = {}
            # results without a stop time count as seen when their run was last written
            # (in the transaction that wrote its latest batch), not now
            for tenant, suite, run_id, data, written in conn.execute(
                "SELECT b.tenant, b.suite, b.run_id, b.data, r.last_seen FROM batches b"
                " LEFT JOIN runs r"
                " ON r.tenant = b.tenant AND r.suite = b.suite AND r.run_id = b.run_id"
                " WHERE b.last IN (SELECT last FROM unmerged) ORDER BY b.last"
            ):
                run = run_from_dict({"suite": suite, "run_id": run_id})
                group = RunRows(tenant, run, [row_of(r) for r in results_in(data)], data)
                add_statistics(tests, [group], self.clock() if written is None else written)
            if tests:
                merge_tests(conn, tests, self._known)
                conn.execute("DELETE FROM unmerged")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The writer inside ``BEGIN IMMEDIATE`` ... ``COMMIT``; on any failure rolled back, and
        the statistics it wrote (``KnownTests``) or let wait (``PendingTests``) forgotten."""
        conn = self._conn
        if conn is None:
            raise sqlite3.ProgrammingError("store is closed")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            self._known.rolled_back()
            self._pending.rolled_back()
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._known.committed()
        self._pending.committed()

    @property
    def statistics_waiting(self) -> bool:
        """Some test statistics wait to be merged (see ``PendingTests``)."""
        return bool(self._pending.tests)

    def flush_statistics(self) -> None:
        """Merge the test statistics that wait (see ``PendingTests``) now."""
        if self._pending.tests:
            self.write_prepared(prepare([], self.clock()))

    def close(self) -> None:
        """Merge what waits, close the writer and idle readers; a reader in use is closed
        when it is returned."""
        with contextlib.suppress(sqlite3.Error):
            if self._conn is not None:
                self.flush_statistics()
        with self._write_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._release_lock()
            self._pending = PendingTests()  # what still waits is in ``unmerged``
            self._known.forget()
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    # -- writes ----------------------------------------------------------------------------

    def write(self, records: Sequence[Record], *, offsets: Mapping[str, int] | None = None) -> int:
        return self.write_rows(rows_of_records(records), offsets=offsets)

    def write_rows(
        self,
        groups: Sequence[RunRows],
        *,
        offsets: Mapping[str, int] | None = None,
        defer_statistics: bool = False,
    ) -> int:
        """Like :meth:`write`, for results already turned into rows (see ``store.rows``)."""
        work = self.prepare(groups)
        return self.write_prepared(work, offsets=offsets, defer_statistics=defer_statistics)

    def prepare(self, groups: Sequence[RunRows]) -> PreparedWrite:
        """The part of a write that needs no database (any thread may run it)."""
        return prepare(groups, self.clock())

    def write_prepared(
        self,
        write: PreparedWrite,
        *,
        offsets: Mapping[str, int] | None = None,
        defer_statistics: bool = False,
    ) -> int:
        """Apply a :meth:`prepare`-d write and the offsets in one transaction; return how many
        results were new.  The write can be applied again after a failure.

        ``defer_statistics`` (a writer with more to write right after) lets the test
        statistics of these results wait for a later write, five seconds at most (see
        ``PendingTests``); every other write merges them, its own and those waiting."""
        with self._write_lock:
            if self._conn is None:
                raise sqlite3.ProgrammingError("store is closed")
            if defer_statistics and self._lock is None:
                if self._take_lock():  # the first time: what an earlier writer left first
                    try:
                        self._merge_unmerged()
                    except BaseException:
                        self._release_lock()  # so that the next write merges them first
                        raise
                else:
                    defer_statistics = False  # another writer lets its statistics wait
            if self._pending.lost:  # a failed write forgot statistics that waited: again
                self._merge_unmerged()
                self._pending.lost = False
            with self._transaction() as conn:
                new = apply(conn, write, self._known, self._pending, defer=defer_statistics)
                if offsets:
                    conn.executemany(
                        "INSERT OR REPLACE INTO offsets (source, position) VALUES (?, ?)",
                        list(offsets.items()),
                    )
            return new

    def offsets(self) -> dict[str, int]:
        with self._reading() as conn:
            return {s: int(p) for s, p in conn.execute("SELECT source, position FROM offsets")}

    # -- reads -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._conn is None:
            raise sqlite3.ProgrammingError("store is closed")
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = _connect(self.path)
        try:
            yield conn
        finally:
            if self._conn is None:
                conn.close()
            else:
                self._readers.put(conn)

    def _page(
        self, sql: str, params: tuple[Any, ...], limit: int, kind: str, key: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        with self._reading() as conn:
            cur = conn.execute(sql, (*params, limit + 1))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(kind, rows[-1][key]) if more and rows else None
        return rows, next_cursor

    def suites(self, tenant: str, *, limit: int, cursor: str | None = None) -> Page:
        after = "" if cursor is None else _cursor_value("suites", cursor, str)
        rows, nxt = self._page(
            "SELECT suite, first_seen, last_seen, results FROM suites"
            " WHERE tenant = ? AND suite > ? ORDER BY suite LIMIT ?",
            (tenant, after),
            limit,
            "suites",
            "suite",
        )
        return Page([dict(r) for r in rows], nxt)

    def tests(self, tenant: str, suite: str, *, limit: int, cursor: str | None = None) -> Page:
        after = "" if cursor is None else _cursor_value("tests", cursor, str)
        rows, nxt = self._page(
            f"SELECT nodeid, file, runs, {OUTCOME_LIST}, durations, median, last_outcome,"
            " last_seen FROM tests WHERE tenant = ? AND suite = ? AND nodeid > ?"
            " ORDER BY nodeid LIMIT ?",
            (tenant, suite, after),
            limit,
            "tests",
            "nodeid",
        )
        items = [
            {
                "nodeid": r["nodeid"],
                "file": r["file"],
                "runs": r["runs"],
                "outcomes": {o: r[o] for o in OUTCOME_COLUMNS},
                "recent_durations": orjson.loads(r["durations"]),
                "median_duration": r["median"],
                "last_outcome": r["last_outcome"],
                "last_seen": r["last_seen"],
            }
            for r in rows
        ]
        return Page(items, nxt)

    def runs(self, tenant: str, suite: str, *, limit: int, cursor: str | None = None) -> Page:
        before = 2**63 - 1 if cursor is None else _cursor_value("runs", cursor, int)
        rows, nxt = self._page(
            f"SELECT seq, info, first_seen, last_seen, started, finished, total, {OUTCOME_LIST}"
            " FROM runs WHERE tenant = ? AND suite = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (tenant, suite, before),
            limit,
            "runs",
            "seq",
        )
        items = [
            {
                **orjson.loads(r["info"]),
                "total": r["total"],
                "outcomes": {o: r[o] for o in OUTCOME_COLUMNS},
                "started": r["started"],
                "finished": r["finished"],
                "first_seen": r["first_seen"],
                "last_seen": r["last_seen"],
            }
            for r in rows
        ]
        return Page(items, nxt)

    def results(
        self,
        tenant: str,
        suite: str,
        *,
        run_id: str | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> Page:
        after = 0 if cursor is None else _cursor_value("results", cursor, int)
        params: tuple[Any, ...]
        if run_id is None:
            where, params = "tenant = ? AND suite = ? AND last > ?", (tenant, suite, after)
        else:
            where = "tenant = ? AND suite = ? AND run_id = ? AND last > ?"
            params = (tenant, suite, run_id, after)
        items: list[dict[str, Any]] = []
        seq = after
        more = False
        with (
            self._reading() as conn,
            contextlib.closing(
                conn.execute(
                    f"SELECT first, last, run_id, data FROM batches WHERE {where} ORDER BY last",
                    params,
                )
            ) as batches,
        ):
            for first, last, run, data in batches:  # read one at a time, as far as needed
                if len(items) == limit:
                    more = True
                    break
                skip = max(after + 1, first) - first  # a cursor inside this batch
                results = self._batch_results(last, data, inside=skip > 0)
                found = results[skip : skip + limit - len(items)]
                items.extend({**r, "suite": suite, "run_id": run} for r in found)
                seq = first + skip + len(found) - 1
                if len(items) == limit and seq < last:
                    self._keep_page(last, results)  # the next page starts in this batch
                    more = True
                    break
        return Page(items, encode_cursor("results", seq) if more else None)

    def _batch_results(self, last: int, data: bytes, *, inside: bool) -> list[dict[str, Any]]:
        """The results of a batch; one that a page started inside was likely kept decoded
        by the page before (paging through a batch with a small limit would otherwise
        decode it once per page)."""
        if inside:
            with self._pages_lock:
                kept = self._open_pages.get(last)
            if kept is not None:
                return kept
        return results_in(data)

    def _keep_page(self, last: int, results: list[dict[str, Any]]) -> None:
        with self._pages_lock:
            self._open_pages[last] = results
            self._open_pages.move_to_end(last)
            while len(self._open_pages) > OPEN_PAGES:
                self._open_pages.popitem(last=False)

    def durations(self, tenant: str, suite: str) -> dict[str, float]:
        with self._reading() as conn:
            return dict(
                conn.execute(
                    "SELECT nodeid, median FROM tests WHERE tenant = ? AND suite = ?"
                    " AND median IS NOT NULL",
                    (tenant, suite),
                )
            )

    def build(self, tenant: str, suite: str, build_id: str) -> BuildResults:
        with self._reading() as conn:
            runs = [
                BuildRun(*row)
                for row in conn.execute(
                    "SELECT run_id, shard_index, shard_total, plan_id FROM build_runs"
                    " WHERE tenant = ? AND suite = ? AND build_id = ? ORDER BY run_id",
                    (tenant, suite, build_id),
                )
            ]
            counts: dict[str, int] = {}
            for chunk in chunks([r.run_id for r in runs]):
                for nodeid, n in conn.execute(
                    "SELECT r.nodeid, count(DISTINCT b.run_id) FROM batches b"
                    " JOIN results r ON r.seq BETWEEN b.first AND b.last"
                    " WHERE b.tenant = ? AND b.suite = ?"
                    f" AND b.run_id IN ({', '.join('?' * len(chunk))}) GROUP BY r.nodeid",
                    (tenant, suite, *chunk),
                ):
                    counts[nodeid] = counts.get(nodeid, 0) + n
        return BuildResults(runs, counts)


def _cursor_value(kind: str, cursor: str, of: type[T]) -> T:
    value = decode_cursor(kind, cursor)
    if type(value) is not of:
        raise InvalidCursor(f"cursor {cursor[:40]!r} is not valid")
    return value

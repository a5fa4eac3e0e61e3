"""The embedded store: one SQLite database (``store.db``) in WAL mode.

Tables (every key starts with the tenant):

- ``results``: raw results, unique by (tenant, id), so a redelivered result is stored once.
- ``tests``: per-test statistics by (tenant, suite, nodeid): executions, counts by outcome,
  the last :data:`RECENT_DURATIONS` passing durations and their median, last outcome, last seen.
- ``runs``: one row per pytest session (tenant, suite, run_id) with counts by outcome.
- ``suites``: every suite a tenant reported, with its result count.
- ``offsets``: consumer positions, committed in the same transaction as the records.
- ``build_runs``: the runs of each CI build (tenant, suite, build_id, run_id) with the shard
  and plan they reported, for the builds report of the planner.

One connection writes (the processor); reads use a small pool of connections so they never
wait for a write transaction.  Commits use ``synchronous=FULL``: once the processor has
committed an offset, the local log may drop the entries before it.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
from pytest_testengine.model import OUTCOMES, Record, run_to_dict

T = TypeVar("T")

STORE_FILE: Final = "store.db"
RECENT_DURATIONS: Final = 20
CHUNK: Final = 500  # parameters per IN (...) query
ROWS_PER_INSERT: Final = 400  # rows per multi-row INSERT (at most 32766 parameters)
OUTCOME_COLUMNS: Final = tuple(sorted(OUTCOMES))

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
    suite TEXT NOT NULL,
    run_id TEXT NOT NULL,
    nodeid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration REAL NOT NULL,
    start REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS results_id ON results (tenant, id);
CREATE INDEX IF NOT EXISTS results_suite ON results (tenant, suite, seq);
CREATE INDEX IF NOT EXISTS results_run ON results (tenant, suite, run_id, seq);
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

_OUTCOME_LIST: Final = ", ".join(OUTCOME_COLUMNS)
_OUTCOME_MARKS: Final = ", ".join("?" for _ in OUTCOME_COLUMNS)
_OUTCOME_ADD: Final = ", ".join(f"{o} = {o} + excluded.{o}" for o in OUTCOME_COLUMNS)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _insert_rows(conn: sqlite3.Connection, head: str, width: int, params: list[Any]) -> None:
    """Insert rows given as one flat parameter list, many rows per statement: one SQLite step
    per chunk instead of one per row (much less time spent handing the GIL back and forth)."""
    per_row = "(" + ", ".join("?" * width) + ")"
    step = ROWS_PER_INSERT * width
    for start in range(0, len(params), step):
        part = params[start : start + step]
        conn.execute(head + ", ".join([per_row] * (len(part) // width)), part)


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(slots=True)
class _TestDelta:
    file: str
    runs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    last_outcome: str = ""
    last_seen: float = 0.0

    def outcomes(self) -> tuple[int, ...]:
        return tuple(self.counts.get(o, 0) for o in OUTCOME_COLUMNS)


@dataclass(slots=True)
class _RunDelta:
    info: bytes
    started: float | None = None
    finished: float | None = None
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def outcomes(self) -> tuple[int, ...]:
        return tuple(self.counts.get(o, 0) for o in OUTCOME_COLUMNS)


class SqliteStore:
    """:class:`~collector_server.store.Store` on an SQLite file."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()

    def open(self) -> SqliteStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path)
        self._conn.executescript(_SCHEMA)
        return self

    def close(self) -> None:
        """Close the writer and idle readers; a reader in use is closed when it is returned."""
        with self._write_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
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
        with self._write_lock:
            conn = self._conn
            if conn is None:
                raise sqlite3.ProgrammingError("store is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                new = self._write(conn, records)
                if offsets:
                    conn.executemany(
                        "INSERT OR REPLACE INTO offsets (source, position) VALUES (?, ?)",
                        list(offsets.items()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return new

    def _write(self, conn: sqlite3.Connection, records: Sequence[Record]) -> int:
        fresh = self._new_records(conn, records)
        if not fresh:
            return 0
        now = self.clock()
        params: list[Any] = []
        dumps = orjson.dumps
        for r in fresh:
            result = r.result
            params += (
                r.tenant,
                result.id,
                r.run.suite,
                r.run.run_id,
                result.nodeid,
                result.outcome,
                result.duration,
                result.start,
                dumps(result, default=dict),  # a dataclass: every field
            )
        _insert_rows(
            conn,
            "INSERT INTO results (tenant, id, suite, run_id, nodeid, outcome, duration, start,"
            " data) VALUES ",
            9,
            params,
        )
        tests: dict[tuple[str, str, str], _TestDelta] = {}
        runs: dict[tuple[str, str, str], _RunDelta] = {}
        builds: list[tuple[Any, ...]] = []
        suites: dict[tuple[str, str], int] = {}
        for record in fresh:
            result, run = record.result, record.run
            seen = result.stop or now
            key = (record.tenant, run.suite, result.nodeid)
            test = tests.get(key)
            if test is None:
                test = tests[key] = _TestDelta(result.file)
            test.runs += 1
            test.counts[result.outcome] = test.counts.get(result.outcome, 0) + 1
            if result.outcome == "passed":
                test.durations.append(result.duration)
            if seen >= test.last_seen:
                test.last_seen, test.last_outcome = seen, result.outcome
            run_key = (record.tenant, run.suite, run.run_id)
            rd = runs.get(run_key)
            if rd is None:
                info = orjson.dumps(run_to_dict(run), default=dict)
                rd = runs[run_key] = _RunDelta(info)
                if run.build_id is not None:
                    builds.append(
                        (
                            *run_key[:2],
                            run.build_id,
                            run.run_id,
                            run.shard_index,
                            run.shard_total,
                            run.plan_id,
                        )
                    )
            rd.total += 1
            rd.counts[result.outcome] = rd.counts.get(result.outcome, 0) + 1
            if result.start:
                rd.started = result.start if rd.started is None else min(rd.started, result.start)
            if result.stop:
                rd.finished = result.stop if rd.finished is None else max(rd.finished, result.stop)
            suites[(record.tenant, run.suite)] = suites.get((record.tenant, run.suite), 0) + 1
        self._merge_tests(conn, tests)
        conn.executemany(
            f"INSERT INTO runs (tenant, suite, run_id, info, first_seen, last_seen, started,"
            f" finished, total, {_OUTCOME_LIST}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
            f" {_OUTCOME_MARKS}) ON CONFLICT (tenant, suite, run_id) DO UPDATE SET"
            " last_seen = excluded.last_seen,"
            " started = coalesce(min(started, excluded.started), started, excluded.started),"
            " finished = coalesce(max(finished, excluded.finished), finished, excluded.finished),"
            f" total = total + excluded.total, {_OUTCOME_ADD}",
            [
                (*key, d.info, now, now, d.started, d.finished, d.total, *d.outcomes())
                for key, d in runs.items()
            ],
        )
        if builds:
            conn.executemany(
                "INSERT OR IGNORE INTO build_runs (tenant, suite, build_id, run_id, shard_index,"
                " shard_total, plan_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                builds,
            )
        conn.executemany(
            "INSERT INTO suites (tenant, suite, first_seen, last_seen, results)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, suite) DO UPDATE SET"
            " last_seen = excluded.last_seen, results = results + excluded.results",
            [(*key, now, now, count) for key, count in suites.items()],
        )
        return len(fresh)

    def _new_records(self, conn: sqlite3.Connection, records: Sequence[Record]) -> list[Record]:
        """Records whose (tenant, id) is neither stored nor earlier in ``records``."""
        by_tenant: dict[str, list[str]] = {}
        for record in records:
            by_tenant.setdefault(record.tenant, []).append(record.result.id)
        known: set[tuple[str, str]] = set()
        for tenant, ids in by_tenant.items():
            for chunk in _chunks(ids):
                rows = conn.execute(
                    "SELECT id FROM results WHERE tenant = ? AND id IN"
                    f" ({', '.join('?' * len(chunk))})",
                    (tenant, *chunk),
                )
                known.update((tenant, row[0]) for row in rows)
        fresh: list[Record] = []
        for record in records:
            key = (record.tenant, record.result.id)
            if key not in known:
                known.add(key)
                fresh.append(record)
        return fresh

    def _merge_tests(
        self, conn: sqlite3.Connection, tests: dict[tuple[str, str, str], _TestDelta]
    ) -> None:
        by_suite: dict[tuple[str, str], list[str]] = {}
        for tenant, suite, nodeid in tests:
            by_suite.setdefault((tenant, suite), []).append(nodeid)
        rows: list[tuple[Any, ...]] = []
        for (tenant, suite), nodeids in by_suite.items():
            for chunk in _chunks(nodeids):
                for row in conn.execute(
                    f"SELECT nodeid, runs, {_OUTCOME_LIST}, durations, last_outcome, last_seen"
                    " FROM tests WHERE tenant = ? AND suite = ? AND nodeid IN"
                    f" ({', '.join('?' * len(chunk))})",
                    (tenant, suite, *chunk),
                ):
                    delta = tests[(tenant, suite, row[0])]
                    delta.runs += row[1]
                    for i, outcome in enumerate(OUTCOME_COLUMNS, start=2):
                        delta.counts[outcome] = delta.counts.get(outcome, 0) + row[i]
                    n = 2 + len(OUTCOME_COLUMNS)
                    delta.durations[:0] = orjson.loads(row[n])
                    if row[n + 2] > delta.last_seen:
                        delta.last_seen, delta.last_outcome = row[n + 2], row[n + 1]
        for (tenant, suite, nodeid), d in tests.items():
            recent = d.durations[-RECENT_DURATIONS:]
            rows.append(
                (
                    tenant,
                    suite,
                    nodeid,
                    d.file,
                    d.runs,
                    *d.outcomes(),
                    orjson.dumps(recent),
                    statistics.median(recent) if recent else None,
                    d.last_outcome,
                    d.last_seen,
                )
            )
        _insert_rows(
            conn,
            f"INSERT OR REPLACE INTO tests (tenant, suite, nodeid, file, runs, {_OUTCOME_LIST},"
            " durations, median, last_outcome, last_seen) VALUES ",
            9 + len(OUTCOME_COLUMNS),
            [value for row in rows for value in row],
        )

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
            f"SELECT nodeid, file, runs, {_OUTCOME_LIST}, durations, median, last_outcome,"
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
            f"SELECT seq, info, first_seen, last_seen, started, finished, total, {_OUTCOME_LIST}"
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
            where, params = "tenant = ? AND suite = ? AND seq > ?", (tenant, suite, after)
        else:
            where = "tenant = ? AND suite = ? AND run_id = ? AND seq > ?"
            params = (tenant, suite, run_id, after)
        rows, nxt = self._page(
            f"SELECT seq, run_id, data FROM results WHERE {where} ORDER BY seq LIMIT ?",
            params,
            limit,
            "results",
            "seq",
        )
        items = [{**orjson.loads(r["data"]), "suite": suite, "run_id": r["run_id"]} for r in rows]
        return Page(items, nxt)

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
            for chunk in _chunks([r.run_id for r in runs]):
                for nodeid, n in conn.execute(
                    "SELECT nodeid, count(DISTINCT run_id) FROM results WHERE tenant = ?"
                    f" AND suite = ? AND run_id IN ({', '.join('?' * len(chunk))})"
                    " GROUP BY nodeid",
                    (tenant, suite, *chunk),
                ):
                    counts[nodeid] = counts.get(nodeid, 0) + n
        return BuildResults(runs, counts)


def _cursor_value(kind: str, cursor: str, of: type[T]) -> T:
    value = decode_cursor(kind, cursor)
    if type(value) is not of:
        raise InvalidCursor(f"cursor {cursor[:40]!r} is not valid")
    return value

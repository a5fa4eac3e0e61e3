"""The write path of the SQLite store: groups of result rows into one transaction.

:func:`prepare` works out in Python what does not depend on the store (it may run in
another thread than the transaction); :func:`apply` runs inside the caller's transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``):

1. results: all rows in multi-row ``INSERT ... ON CONFLICT (tenant, id) DO NOTHING``
   statements under a savepoint.  When every row was inserted (the usual case) that is all;
   when some were not (a redelivered id, or one id twice in the rows), the savepoint is rolled
   back and only the rows whose id is neither stored nor earlier in the rows are inserted.
   Only those count in the statistics, so a result delivered twice counts once.
2. tests: the results are aggregated per test in Python (one row per test per
   transaction), merged with the stored row and written back.
3. runs, build_runs, suites: one upsert per run, build run and suite.
"""

from __future__ import annotations

import sqlite3
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from collector_server.store.rows import Row, RunRows
from pytest_testengine.model import OUTCOMES, run_to_dict

RECENT_DURATIONS: Final = 20
CHUNK: Final = 500  # parameters per IN (...) query
ROWS_PER_INSERT: Final = 400  # rows per multi-row INSERT (at most 32766 parameters)
OUTCOME_COLUMNS: Final = tuple(sorted(OUTCOMES))
_OUTCOME_INDEX: Final = {o: i for i, o in enumerate(OUTCOME_COLUMNS)}
_PASSED: Final = _OUTCOME_INDEX["passed"]

OUTCOME_LIST: Final = ", ".join(OUTCOME_COLUMNS)
_OUTCOME_MARKS: Final = ", ".join("?" for _ in OUTCOME_COLUMNS)
_OUTCOME_ADD: Final = ", ".join(f"{o} = {o} + excluded.{o}" for o in OUTCOME_COLUMNS)

_RESULT_COLUMNS: Final = "tenant, id, suite, run_id, nodeid, outcome, duration, start, data"
_INSERT_RESULTS: Final = f"INSERT INTO results ({_RESULT_COLUMNS}) VALUES "
_INSERT_NEW_RESULTS: Final = " ON CONFLICT (tenant, id) DO NOTHING"
_TEST_COLUMNS: Final = (
    f"tenant, suite, nodeid, file, runs, {OUTCOME_LIST}, durations, median, last_outcome, last_seen"
)
_TEST_WIDTH: Final = 9 + len(OUTCOME_COLUMNS)
_UPSERT_RUN: Final = (
    f"INSERT INTO runs (tenant, suite, run_id, info, first_seen, last_seen, started,"
    f" finished, total, {OUTCOME_LIST}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
    f" {_OUTCOME_MARKS}) ON CONFLICT (tenant, suite, run_id) DO UPDATE SET"
    " last_seen = excluded.last_seen,"
    " started = coalesce(min(started, excluded.started), started, excluded.started),"
    " finished = coalesce(max(finished, excluded.finished), finished, excluded.finished),"
    f" total = total + excluded.total, {_OUTCOME_ADD}"
)
_INSERT_BUILD_RUN: Final = (
    "INSERT OR IGNORE INTO build_runs (tenant, suite, build_id, run_id, shard_index,"
    " shard_total, plan_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_SUITE: Final = (
    "INSERT INTO suites (tenant, suite, first_seen, last_seen, results)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, suite) DO UPDATE SET"
    " last_seen = excluded.last_seen, results = results + excluded.results"
)

#: A test's statistics in a write: [file, runs, counts by outcome (a list in OUTCOME_COLUMNS
#: order), passing durations oldest first, last outcome, last seen].
_Delta = list[Any]
#: A run's counts in a write: [info (JSON), started, finished, total, counts by outcome].
_RunDelta = list[Any]


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_rows(
    conn: sqlite3.Connection, head: str, width: int, params: list[Any], tail: str = ""
) -> None:
    """Insert rows given as one flat parameter list, many rows per statement: one SQLite step
    per chunk instead of one per row (much less time spent handing the GIL back and forth)."""
    per_row = "(" + ", ".join("?" * width) + ")"
    step = ROWS_PER_INSERT * width
    full = ""
    for start in range(0, len(params), step):
        part = params[start : start + step]
        if len(part) == step:
            full = full or head + ", ".join([per_row] * ROWS_PER_INSERT) + tail
            conn.execute(full, part)
        else:
            conn.execute(head + ", ".join([per_row] * (len(part) // width)) + tail, part)


@dataclass(slots=True)
class PreparedWrite:
    """A write worked out in Python, before the transaction (see :func:`prepare`); applying
    it does not change it, so a failed transaction can be retried with it."""

    groups: Sequence[RunRows]
    count: int
    now: float
    results: list[Any]  # the parameters of the results insert, row after row
    tests: dict[tuple[str, str], dict[str, _Delta]]  # by (tenant, suite), by nodeid
    runs: dict[tuple[str, str, str], _RunDelta]  # by (tenant, suite, run_id)
    builds: list[tuple[Any, ...]]
    suites: dict[tuple[str, str], int]


def prepare(groups: Sequence[RunRows], now: float) -> PreparedWrite:
    """Everything a write of ``groups`` needs that does not depend on the store: the rows of
    the results insert and the statistics of these results, assuming every one is new."""
    index = _OUTCOME_INDEX
    passed = _PASSED
    width = len(OUTCOME_COLUMNS)
    params: list[Any] = []
    extend = params.extend
    count = 0
    tests: dict[tuple[str, str], dict[str, _Delta]] = {}
    runs: dict[tuple[str, str, str], _RunDelta] = {}
    builds: list[tuple[Any, ...]] = []
    suites: dict[tuple[str, str], int] = {}
    for g in groups:
        tenant, run, rows = g.tenant, g.run, g.rows
        suite, run_id = run.suite, run.run_id
        count += len(rows)
        suite_key = (tenant, suite)
        suites[suite_key] = suites.get(suite_key, 0) + len(rows)
        stats = tests.get(suite_key)
        if stats is None:
            stats = tests[suite_key] = {}
        run_key = (tenant, suite, run_id)
        rd = runs.get(run_key)
        if rd is None:
            info = orjson.dumps(run_to_dict(run), default=dict)
            rd = runs[run_key] = [info, None, None, 0, [0] * width]
            if run.build_id is not None:
                builds.append(
                    (
                        tenant,
                        suite,
                        run.build_id,
                        run_id,
                        run.shard_index,
                        run.shard_total,
                        run.plan_id,
                    )
                )
        run_counts: list[int] = rd[4]
        started, finished = rd[1], rd[2]
        for id_, nodeid, file, outcome, duration, start, stop, data in rows:
            extend((tenant, id_, suite, run_id, nodeid, outcome, duration, start, data))
            i = index[outcome]
            run_counts[i] += 1
            if start and (started is None or start < started):
                started = start
            if stop and (finished is None or stop > finished):
                finished = stop
            seen = stop or now
            d = stats.get(nodeid)
            if d is None:
                counts = [0] * width
                counts[i] = 1
                stats[nodeid] = [file, 1, counts, [duration] if i == passed else [], outcome, seen]
                continue
            d[1] += 1
            d[2][i] += 1
            if i == passed:
                d[3].append(duration)
            if seen >= d[5]:
                d[4] = outcome
                d[5] = seen
        rd[1], rd[2] = started, finished
        rd[3] += len(rows)
    return PreparedWrite(groups, count, now, params, tests, runs, builds, suites)


def apply(conn: sqlite3.Connection, write: PreparedWrite) -> int:
    """Apply a prepared write in the caller's transaction; return how many results were new.

    A failure anywhere leaves the caller to roll back the whole transaction (the savepoint
    with it)."""
    if not write.count:
        return 0
    conn.execute("SAVEPOINT results")
    before = conn.total_changes
    insert_rows(conn, _INSERT_RESULTS, 9, write.results, _INSERT_NEW_RESULTS)
    if conn.total_changes - before != write.count:  # some ids were known: only the new count
        conn.execute("ROLLBACK TO results")
        write = prepare(_new_rows(conn, write.groups), write.now)
        insert_rows(conn, _INSERT_RESULTS, 9, write.results)
    conn.execute("RELEASE results")
    if write.count:
        _write_statistics(conn, write)
    return write.count


def _new_rows(conn: sqlite3.Connection, groups: Sequence[RunRows]) -> list[RunRows]:
    """The groups without rows whose (tenant, id) is stored or earlier in the groups."""
    by_tenant: dict[str, list[str]] = {}
    for g in groups:
        by_tenant.setdefault(g.tenant, []).extend(row[0] for row in g.rows)
    known: set[tuple[str, str]] = set()
    for tenant, ids in by_tenant.items():
        for chunk in chunks(ids):
            rows = conn.execute(
                "SELECT id FROM results WHERE tenant = ?"
                f" AND id IN ({', '.join('?' * len(chunk))})",
                (tenant, *chunk),
            )
            known.update((tenant, row[0]) for row in rows)
    fresh: list[RunRows] = []
    for g in groups:
        keep: list[Row] = []
        for row in g.rows:
            key = (g.tenant, row[0])
            if key not in known:
                known.add(key)
                keep.append(row)
        if keep:
            fresh.append(RunRows(g.tenant, g.run, keep))
    return fresh


def _write_statistics(conn: sqlite3.Connection, write: PreparedWrite) -> None:
    _merge_tests(conn, write.tests)
    now = write.now
    conn.executemany(
        _UPSERT_RUN,
        [
            (*key, info, now, now, started, finished, total, *counts)
            for key, (info, started, finished, total, counts) in write.runs.items()
        ],
    )
    if write.builds:
        conn.executemany(_INSERT_BUILD_RUN, write.builds)
    conn.executemany(_UPSERT_SUITE, [(*key, now, now, n) for key, n in write.suites.items()])


def _merge_tests(conn: sqlite3.Connection, tests: dict[tuple[str, str], dict[str, _Delta]]) -> None:
    """Write the statistics of these tests: their stored rows plus the deltas (which are left
    as they are)."""
    width = len(OUTCOME_COLUMNS)
    params: list[Any] = []
    extend = params.extend
    loads, dumps, median = orjson.loads, orjson.dumps, statistics.median
    recent_n = RECENT_DURATIONS
    for (tenant, suite), stats in tests.items():
        stored: dict[str, tuple[Any, ...]] = {}
        for chunk in chunks(list(stats)):
            for row in conn.execute(
                f"SELECT nodeid, runs, {OUTCOME_LIST}, durations, last_outcome, last_seen"
                " FROM tests WHERE tenant = ? AND suite = ? AND nodeid IN"
                f" ({', '.join('?' * len(chunk))})",
                (tenant, suite, *chunk),
            ):
                stored[row[0]] = row
        for nodeid, (file, runs, counts, durations, last_outcome, last_seen) in stats.items():
            old = stored.get(nodeid)
            if old is not None:
                runs += old[1]
                counts = [n + old[2 + i] for i, n in enumerate(counts)]
                if len(durations) < recent_n:
                    durations = loads(old[2 + width]) + durations
                if old[4 + width] > last_seen:
                    last_outcome, last_seen = old[3 + width], old[4 + width]
            recent = durations[-recent_n:]
            extend(
                (
                    tenant,
                    suite,
                    nodeid,
                    file,
                    runs,
                    *counts,
                    dumps(recent),
                    median(recent) if recent else None,
                    last_outcome,
                    last_seen,
                )
            )
    insert_rows(
        conn, f"INSERT OR REPLACE INTO tests ({_TEST_COLUMNS}) VALUES ", _TEST_WIDTH, params
    )

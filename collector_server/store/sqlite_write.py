"""The write path of the SQLite store: groups of result rows into one transaction.

:func:`prepare` works out in Python what does not depend on the store (it may run in
another thread than the transaction); :func:`apply` runs inside the caller's transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``):

1. results: all rows in multi-row ``INSERT ... ON CONFLICT (tenant, id) DO NOTHING``
   statements under a savepoint.  When every row was inserted (the usual case) that is all;
   when some were not (a redelivered id, or one id twice in the rows), the savepoint is rolled
   back and only the rows whose id is neither stored nor earlier in the rows are inserted.
   Only those count in the statistics, so a result delivered twice counts once.  Each group
   of rows gets consecutive ``seq`` numbers, and one ``batches`` row holds its blob (the
   results as they arrived, rewritten without the dropped ones if some were) with the range
   of its ``seq`` numbers, its suite and run: what the read API answers.
2. runs, build_runs, suites: one upsert per run, build run and suite.
3. tests: the new results are added up per test in Python (see :class:`PendingTests`: one
   row per test per transaction), merged with the stored row (as this connection last
   wrote it, see :class:`KnownTests`, else read) and written back; while the writer is
   behind, this may wait for a later transaction: the ``unmerged`` table lists the batches
   whose statistics wait.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import add
from typing import Any, Final

import orjson

from collector_server.store.rows import RunRows, blob_of, results_in
from pytest_testengine.model import OUTCOMES, run_to_dict

RECENT_DURATIONS: Final = 20
CHUNK: Final = 500  # parameters per IN (...) query
ROWS_PER_INSERT: Final = 400  # rows per multi-row INSERT (at most 32766 parameters)
KNOWN_TESTS: Final = 50_000  # tests statistics kept in memory by the writer (about 50 MB)
#: Seconds test statistics may wait while the writer is behind.  Each merge rewrites every test
#: seen since the one before, so under steady load fewer merges leave the writer more time to
#: apply results (benchmarks/README.md, "Sustained load": 2 s missed a steady 170,000 results/s
#: that 5 s keeps up with).
STATISTICS_DELAY: Final = 5.0
PENDING_TESTS: Final = 50_000  # tests whose statistics may wait (at most about 80 MB)
OUTCOME_COLUMNS: Final = tuple(sorted(OUTCOMES))
_OUTCOME_INDEX: Final = {o: i for i, o in enumerate(OUTCOME_COLUMNS)}
_PASSED: Final = _OUTCOME_INDEX["passed"]
#: the counts of one result of each outcome
_ONE_OF: Final = tuple(
    tuple(int(i == j) for j in range(len(OUTCOME_COLUMNS))) for i in range(len(OUTCOME_COLUMNS))
)

OUTCOME_LIST: Final = ", ".join(OUTCOME_COLUMNS)
_OUTCOME_MARKS: Final = ", ".join("?" for _ in OUTCOME_COLUMNS)
_OUTCOME_ADD: Final = ", ".join(f"{o} = {o} + excluded.{o}" for o in OUTCOME_COLUMNS)

_RESULT_COLUMNS: Final = "tenant, id, nodeid"
_RESULT_WIDTH: Final = 3
_INSERT_RESULTS: Final = f"INSERT INTO results ({_RESULT_COLUMNS}) VALUES "
_INSERT_BATCH: Final = (
    "INSERT INTO batches (last, first, tenant, suite, run_id, data) VALUES (?, ?, ?, ?, ?, ?)"
)
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

#: A test's statistics in a write: [file, runs, its passing durations oldest first (a list,
#: appended to and cut to the last RECENT_DURATIONS once it holds twice as many), last
#: outcome, last seen, then its count of each outcome in OUTCOME_COLUMNS order].
_Delta = list[Any]
_COUNTS: Final = 5  # where a delta's counts start
#: The statistics of tests in a write: by (tenant, suite), by nodeid.
Tests = dict[tuple[str, str], dict[str, _Delta]]
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


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A write worked out in Python, before the transaction (see :func:`prepare`).  Applying
    it changes nothing in it: a failed transaction can be retried with it, and it can be
    applied to several stores."""

    groups: Sequence[RunRows]
    count: int
    now: float
    results: list[Any]  # the parameters of the results insert, row after row
    runs: dict[tuple[str, str, str], _RunDelta]  # by (tenant, suite, run_id)
    builds: list[tuple[Any, ...]]
    suites: dict[tuple[str, str], int]


def prepare(groups: Sequence[RunRows], now: float) -> PreparedWrite:
    """Everything a write of ``groups`` needs that does not depend on the store: the rows of
    the results insert and the counts of runs and suites, assuming every result is new (the
    statistics of tests are added up in the transaction, see :meth:`PendingTests.add`)."""
    index = _OUTCOME_INDEX
    width = len(OUTCOME_COLUMNS)
    params: list[Any] = []
    extend = params.extend
    count = 0
    runs: dict[tuple[str, str, str], _RunDelta] = {}
    builds: list[tuple[Any, ...]] = []
    suites: dict[tuple[str, str], int] = {}
    for g in groups:
        tenant, run, rows = g.tenant, g.run, g.rows
        suite, run_id = run.suite, run.run_id
        count += len(rows)
        suite_key = (tenant, suite)
        suites[suite_key] = suites.get(suite_key, 0) + len(rows)
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
        for id_, nodeid, _file, outcome, _duration, start, stop in rows:
            extend((tenant, id_, nodeid))
            run_counts[index[outcome]] += 1
            if start and (started is None or start < started):
                started = start
            if stop and (finished is None or stop > finished):
                finished = stop
        rd[1], rd[2] = started, finished
        rd[3] += len(rows)
    return PreparedWrite(groups, count, now, params, runs, builds, suites)


def add_statistics(into: Tests, groups: Sequence[RunRows], now: float) -> int:
    """Add the statistics of the results of ``groups`` (written at ``now``) to ``into``, in
    place; return how many tests were not in it.  Results without a stop time count as
    seen at ``now``."""
    index = _OUTCOME_INDEX
    passed = _PASSED
    ones = _ONE_OF
    recent_n = RECENT_DURATIONS
    keep = 2 * recent_n
    added = 0
    for g in groups:
        suite_key = (g.tenant, g.run.suite)
        stats = into.get(suite_key)
        if stats is None:
            stats = into[suite_key] = {}
        get = stats.get
        for _id, nodeid, file, outcome, duration, _start, stop in g.rows:
            i = index[outcome]
            seen = stop or now
            d = get(nodeid)
            if d is None:
                durations = [duration] if i == passed else []
                stats[nodeid] = [file, 1, durations, outcome, seen, *ones[i]]
                added += 1
                continue
            d[0] = file
            d[1] += 1
            d[_COUNTS + i] += 1
            if i == passed:
                durations = d[2]
                durations.append(duration)
                if len(durations) > keep:
                    del durations[:-recent_n]
            if seen >= d[4]:
                d[3] = outcome
                d[4] = seen
    return added


def apply(
    conn: sqlite3.Connection,
    write: PreparedWrite,
    known: KnownTests,
    pending: PendingTests,
    *,
    defer: bool = False,
) -> int:
    """Apply a prepared write in the caller's transaction; return how many results were new.
    With ``defer``, the test statistics of these results may wait in ``pending``.

    A failure anywhere leaves the caller to roll back the whole transaction (the savepoint
    with it) and to tell ``known`` and ``pending`` whether it committed."""
    if not write.count and not pending.tests:
        return 0
    known.check(conn)
    (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM results").fetchone()
    if write.count:
        conn.execute("SAVEPOINT results")
        before = conn.total_changes
        insert_rows(conn, _INSERT_RESULTS, _RESULT_WIDTH, write.results, _INSERT_NEW_RESULTS)
        if conn.total_changes - before != write.count:  # some ids were known: only the new
            conn.execute("ROLLBACK TO results")
            write = prepare(_new_rows(conn, write.groups), write.now)
            insert_rows(conn, _INSERT_RESULTS, _RESULT_WIDTH, write.results)
        conn.execute("RELEASE results")
    batches: list[tuple[int]] = []
    if write.count:
        batches = _write_batches(conn, write.groups, last)
        _write_statistics(conn, write)
    waiting = pending.batches
    tests = pending.add(write, defer=defer, batches=batches)
    if tests is None:
        conn.executemany("INSERT INTO unmerged (last) VALUES (?)", batches)
    else:
        conn.executemany("DELETE FROM unmerged WHERE last = ?", waiting)
        merge_tests(conn, tests, known)
    return write.count


def _write_batches(
    conn: sqlite3.Connection, groups: Sequence[RunRows], base: int
) -> list[tuple[int]]:
    """One ``batches`` row per group: the rows just inserted after ``base`` took the next
    ``seq`` numbers, group after group (SQLite gives a row without a rowid the largest one
    plus one, and this connection is the only writer).  Returns the batches' keys."""
    params = []
    seq = base
    for g in groups:
        if g.rows:
            params.append((seq + len(g.rows), seq + 1, g.tenant, g.run.suite, g.run.run_id, g.blob))
            seq += len(g.rows)
    (last,) = conn.execute("SELECT max(seq) FROM results").fetchone()
    if last != seq:  # the batches would point at other results than their own
        raise sqlite3.IntegrityError(f"results were numbered {base + 1}..{last}, not ..{seq}")
    conn.executemany(_INSERT_BATCH, params)
    return [(p[0],) for p in params]


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
        keep: list[int] = []
        for i, row in enumerate(g.rows):
            key = (g.tenant, row[0])
            if key not in known:
                known.add(key)
                keep.append(i)
        if len(keep) == len(g.rows):
            fresh.append(g)
        elif keep:
            results = results_in(g.blob)
            blob = blob_of([results[i] for i in keep])
            fresh.append(RunRows(g.tenant, g.run, [g.rows[i] for i in keep], blob))
    return fresh


def _write_statistics(conn: sqlite3.Connection, write: PreparedWrite) -> None:
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


class KnownTests:
    """The ``tests`` rows as this connection last wrote them, so that a write need not read
    them back (the statistics of a test are read, merged and written by every write that
    has one of its results).

    Only valid while no other connection writes the database: :meth:`check` (in the write
    transaction) compares ``PRAGMA data_version``, which changes when another connection
    commits, with its value at our last commit, and forgets every row when it changed.
    Rows written by a transaction are kept once it committed (:meth:`committed`); after a
    rollback they are dropped (:meth:`rolled_back`).  Past ``limit`` tests, it starts over.
    """

    def __init__(self, limit: int = KNOWN_TESTS) -> None:
        self.limit = limit
        #: (tenant, suite) -> nodeid -> (runs, counts, recent durations, last outcome, last
        #: seen); the durations parsed, so that a merge need not parse them (a tuple: floats
        #: in tuples are no work for the garbage collector, unlike lists)
        self.rows: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {}
        self.size = 0
        self._pending: list[tuple[tuple[str, str], dict[str, tuple[Any, ...]]]] = []
        self._version: int | None = None

    def check(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self.forget()
            self._version = version

    def forget(self) -> None:
        self.rows.clear()
        self.size = 0
        self._pending.clear()

    def committed(self) -> None:
        for key, rows in self._pending:
            known = self.rows.get(key)
            if known is None:
                known = self.rows[key] = {}
            before = len(known)
            known.update(rows)
            self.size += len(known) - before
        self._pending.clear()
        if self.size > self.limit:
            self.forget()

    def wrote(self, key: tuple[str, str], rows: dict[str, tuple[Any, ...]]) -> None:
        """These rows are written in the transaction in progress."""
        self._pending.append((key, rows))

    def rolled_back(self) -> None:
        self._pending.clear()


def _median(values: Sequence[float]) -> float | None:
    """``statistics.median``, or None for no values."""
    n = len(values)
    if n < 2:
        return values[0] if n else None
    ordered = sorted(values)
    half = n // 2
    return ordered[half] if n % 2 else (ordered[half - 1] + ordered[half]) / 2


class PendingTests:
    """The test statistics of the results of a write in progress and, while the writer is
    behind, of committed results that are not in the ``tests`` table yet.

    Merging a test's statistics (its row read or remembered, merged, written back) is about
    half the work of a write.  A writer that is behind (more is waiting to be written) may
    let them wait, up to ``delay`` seconds and ``limit`` tests: a test seen in several writes
    meanwhile is then merged once.  The first write that does not defer, or that finds them
    due, merges them with its own.  The batches whose statistics wait are listed in the
    ``unmerged`` table, so what a crash loses here is merged again from the stored results
    (see ``SqliteStore``: one writer at a time may let statistics wait).

    Each write adds its results to :attr:`tests` in place (:meth:`add`, in its transaction):
    no statistics of a write are worked out only to be added to those waiting.  A
    transaction that rolls back after that leaves them wrong: :meth:`rolled_back` forgets
    them, and when some of them were of committed results (:attr:`lost`), the store merges
    the ``unmerged`` batches again before its next write.
    """

    def __init__(self, delay: float = STATISTICS_DELAY, limit: int = PENDING_TESTS) -> None:
        self.delay = delay
        self.limit = limit
        self.tests: Tests = {}
        self.size = 0  # tests in self.tests
        self.since: float | None = None  # when the oldest of them was written
        #: the ``unmerged`` rows of the batches whose statistics wait here
        self.batches: list[tuple[int]] = []
        #: statistics of committed results were forgotten (see :meth:`rolled_back`)
        self.lost = False
        #: what the transaction in progress does: (merged now?, its batches, its time)
        self._after: tuple[bool, list[tuple[int]], float] | None = None

    def add(self, write: PreparedWrite, *, defer: bool, batches: list[tuple[int]]) -> Tests | None:
        """Add the statistics of ``write`` (of ``batches``) to those waiting; return them all
        to merge in the transaction in progress, or None if they can wait."""
        since = self.since
        due = since is not None and (
            not 0 <= write.now - since < self.delay  # or the clock went back
            or self.size >= self.limit
        )
        self._after = (not defer or due, batches, write.now)
        self.size += add_statistics(self.tests, write.groups, write.now)
        return None if defer and not due else self.tests

    def committed(self) -> None:
        after, self._after = self._after, None
        if after is None:
            return
        merged, batches, now = after
        if merged:
            self.forget()
            return
        self.batches.extend(batches)
        if self.since is None and self.tests:
            self.since = now

    def rolled_back(self) -> None:
        if self._after is not None:  # statistics were added: forget them all
            self.lost = self.lost or bool(self.batches)
            self.forget()
        self._after = None

    def forget(self) -> None:
        self.tests, self.size, self.since, self.batches = {}, 0, None, []


def merge_tests(conn: sqlite3.Connection, tests: Tests, known: KnownTests) -> None:
    """Write the statistics of these tests: their stored rows plus the deltas (which are left
    as they are).  They are read and written in the order of the table's key, which SQLite
    finds in far fewer pages than tests in the order they ran."""
    width = len(OUTCOME_COLUMNS)
    params: list[Any] = []
    extend = params.extend
    # orjson hands out its whole buffer (4 KiB at least) as the bytes it returns: thousands of
    # those held until the insert cost more (fresh memory for each) than copying each out
    loads, dumps = orjson.loads, orjson.dumps
    recent_n = RECENT_DURATIONS
    index = _OUTCOME_INDEX
    for key in sorted(tests):
        tenant, suite = key
        stats = tests[key]
        nodeids = sorted(stats)
        stored = known.rows.get(key, {})
        missing = [nodeid for nodeid in nodeids if nodeid not in stored]
        if missing:
            stored = dict(stored)
            for chunk in chunks(missing):
                for row in conn.execute(
                    f"SELECT nodeid, runs, {OUTCOME_LIST}, durations, last_outcome, last_seen"
                    " FROM tests WHERE tenant = ? AND suite = ? AND nodeid IN"
                    f" ({', '.join('?' * len(chunk))})",
                    (tenant, suite, *chunk),
                ):
                    parsed = tuple(loads(row[2 + width]))
                    stored[row[0]] = (row[1], row[2 : 2 + width], parsed, *row[3 + width :])
        written: dict[str, tuple[Any, ...]] = {}
        for nodeid in nodeids:
            d = stats[nodeid]
            runs, last_outcome, last_seen = d[1], d[3], d[4]
            durations = tuple(d[2][-recent_n:])
            old = stored.get(nodeid)
            if old is None:
                counts = tuple(d[_COUNTS:])
            else:
                runs += old[0]
                i = index[d[3]]
                if d[_COUNTS + i] == d[1]:  # every result had the last outcome
                    added = list(old[1])
                    added[i] += d[1]
                    counts = tuple(added)
                else:
                    counts = tuple(map(add, d[_COUNTS:], old[1]))
                if len(durations) < recent_n:
                    durations = old[2] + durations
                if old[4] > last_seen:
                    last_outcome, last_seen = old[3], old[4]
            recent = durations[-recent_n:]
            blob = memoryview(dumps(recent)).tobytes()  # a copy of its size
            written[nodeid] = (runs, counts, recent, last_outcome, last_seen)
            extend(
                (
                    tenant,
                    suite,
                    nodeid,
                    d[0],
                    runs,
                    *counts,
                    blob,
                    _median(recent),
                    last_outcome,
                    last_seen,
                )
            )
        known.wrote(key, written)
    insert_rows(
        conn, f"INSERT OR REPLACE INTO tests ({_TEST_COLUMNS}) VALUES ", _TEST_WIDTH, params
    )

"""Durable plans and dynamic queues: one SQLite database (``plans.db``) in the data directory.

Tables (every plan belongs to one tenant; a plan id alone never reaches another tenant's plan):

- ``plans``: one row per plan, unique by its cache key (tenant, suite, build id, shard count,
  granularity, mode, test-set hash); ``meta`` holds the estimates summary as JSON, ``shards``
  the static assignment as the JSON array the API answers with (``[]`` for a dynamic plan).
- ``plan_asks``: which shard indexes asked for a plan, how often, first and last time.
- ``chunks``: the queue of a dynamic plan: each chunk's tests, estimate, lease holder and
  expiry, and when it was completed.

This module is storage only: which chunk to hand out is decided by
:func:`collector_server.planner.next_chunk`, called by :meth:`PlanStore.next` inside one
write transaction, so two shards can never lease the same chunk.  One connection serves every
call under a lock (plans are read and written a few times per shard, not per result).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

PLANS_FILE: Final = "plans.db"

T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    suite TEXT NOT NULL,
    build_id TEXT NOT NULL,
    total INTEGER NOT NULL,
    split_by TEXT NOT NULL,
    mode TEXT NOT NULL,
    test_set_hash TEXT NOT NULL,
    tests INTEGER NOT NULL,
    created REAL NOT NULL,
    meta BLOB NOT NULL,
    shards BLOB NOT NULL
) WITHOUT ROWID;
-- plan_id is a digest of (tenant, suite, build, total, split_by, mode, test set): the primary
-- key already keeps one plan per key; an index of the key itself only costs writes
DROP INDEX IF EXISTS plans_key;
CREATE INDEX IF NOT EXISTS plans_build ON plans (tenant, suite, build_id, created);
CREATE TABLE IF NOT EXISTS plan_asks (
    plan_id TEXT NOT NULL,
    shard_index INTEGER NOT NULL,
    asks INTEGER NOT NULL,
    first_asked REAL NOT NULL,
    last_asked REAL NOT NULL,
    PRIMARY KEY (plan_id, shard_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    plan_id TEXT NOT NULL,
    chunk_id INTEGER NOT NULL,
    tests BLOB NOT NULL,
    estimate REAL NOT NULL,
    holder INTEGER,
    lease_until REAL,
    leases INTEGER NOT NULL DEFAULT 0,
    completed REAL,
    PRIMARY KEY (plan_id, chunk_id)
) WITHOUT ROWID;
"""

_PLAN_COLUMNS: Final = (
    "plan_id, tenant, suite, build_id, total, split_by, mode, test_set_hash, tests, created, meta"
)


@dataclass(frozen=True, slots=True)
class PlanRow:
    """A stored plan without its assignment (``shards``), which can be large."""

    plan_id: str
    tenant: str
    suite: str
    build_id: str
    total: int
    by: str
    mode: str
    test_set_hash: str
    tests: int
    created: float
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewChunk:
    chunk_id: int
    tests: Sequence[str]
    estimate: float


@dataclass(frozen=True, slots=True)
class NewPlan:
    row: PlanRow
    shards: bytes  # the static assignment as JSON, b"[]" for a dynamic plan
    chunks: Sequence[NewChunk]


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """The state of one chunk of a dynamic queue (its tests are read only when handed out)."""

    chunk_id: int
    estimate: float
    holder: int | None
    lease_until: float | None
    leases: int
    completed: float | None


@dataclass(frozen=True, slots=True)
class ChunkChange:
    """What :meth:`PlanStore.next` writes: set ``completed`` and/or a new lease."""

    chunk_id: int
    completed: float | None = None
    holder: int | None = None
    lease_until: float | None = None
    handed_out: bool = False  # a new lease (counted in ``leases``), not a renewal


def _plan_row(row: Sequence[Any]) -> PlanRow:
    return PlanRow(
        plan_id=row[0],
        tenant=row[1],
        suite=row[2],
        build_id=row[3],
        total=row[4],
        by=row[5],
        mode=row[6],
        test_set_hash=row[7],
        tests=row[8],
        created=row[9],
        meta=orjson.loads(row[10]),
    )


class PlanStore:
    """Plans, shard asks and dynamic queues in ``plans.db``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> PlanStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        with self._lock:
            self._conn = conn
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise sqlite3.ProgrammingError("plan store is closed")
            yield self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    # -- plans -----------------------------------------------------------------------------

    def find(self, key: tuple[str, str, str, int, str, str, str]) -> PlanRow | None:
        """The plan cached under (tenant, suite, build id, total, by, mode, test-set hash)."""
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_PLAN_COLUMNS} FROM plans WHERE tenant = ? AND suite = ?"
                " AND build_id = ? AND total = ? AND split_by = ? AND mode = ?"
                " AND test_set_hash = ?",
                key,
            ).fetchone()
        return None if row is None else _plan_row(row)

    def get(self, tenant: str, plan_id: str) -> PlanRow | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_PLAN_COLUMNS} FROM plans WHERE plan_id = ? AND tenant = ?",
                (plan_id, tenant),
            ).fetchone()
        return None if row is None else _plan_row(row)

    def shards(self, plan_id: str) -> bytes:
        """The static assignment of a plan as stored (JSON bytes)."""
        with self._connection() as conn:
            row = conn.execute("SELECT shards FROM plans WHERE plan_id = ?", (plan_id,)).fetchone()
        return b"[]" if row is None else bytes(row[0])

    def insert(self, plan: NewPlan) -> bool:
        """Store a plan and its queue unless a plan with its key exists; True if stored."""
        r = plan.row
        dumps = orjson.dumps
        with self._transaction() as conn:
            cursor = conn.execute(
                f"INSERT OR IGNORE INTO plans ({_PLAN_COLUMNS}, shards)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.plan_id,
                    r.tenant,
                    r.suite,
                    r.build_id,
                    r.total,
                    r.by,
                    r.mode,
                    r.test_set_hash,
                    r.tests,
                    r.created,
                    dumps(r.meta),
                    plan.shards,
                ),
            )
            if cursor.rowcount != 1:
                return False
            conn.executemany(
                "INSERT INTO chunks (plan_id, chunk_id, tests, estimate) VALUES (?, ?, ?, ?)",
                [(r.plan_id, c.chunk_id, dumps(list(c.tests)), c.estimate) for c in plan.chunks],
            )
        return True

    def prune(self, before: float) -> int:
        """Delete the plans made before ``before`` (epoch seconds), with their asks and
        queues; return how many plans went."""
        with self._transaction() as conn:
            old = "SELECT plan_id FROM plans WHERE created < ?"
            conn.execute(f"DELETE FROM plan_asks WHERE plan_id IN ({old})", (before,))
            conn.execute(f"DELETE FROM chunks WHERE plan_id IN ({old})", (before,))
            return conn.execute("DELETE FROM plans WHERE created < ?", (before,)).rowcount

    def record_ask(self, plan_id: str, index: int, now: float) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO plan_asks (plan_id, shard_index, asks, first_asked, last_asked)"
                " VALUES (?, ?, 1, ?, ?) ON CONFLICT (plan_id, shard_index) DO UPDATE SET"
                " asks = asks + 1, last_asked = excluded.last_asked",
                (plan_id, index, now, now),
            )

    def build(self, tenant: str, suite: str, build_id: str) -> list[tuple[PlanRow, list[int]]]:
        """The plans of a build, oldest first, each with the shard indexes that asked for it."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_PLAN_COLUMNS} FROM plans WHERE tenant = ? AND suite = ?"
                " AND build_id = ? ORDER BY created, plan_id",
                (tenant, suite, build_id),
            ).fetchall()
            plans = [_plan_row(row) for row in rows]
            return [
                (
                    plan,
                    [
                        index
                        for (index,) in conn.execute(
                            "SELECT shard_index FROM plan_asks WHERE plan_id = ?"
                            " ORDER BY shard_index",
                            (plan.plan_id,),
                        )
                    ],
                )
                for plan in plans
            ]

    def planned_tests(self, plan: PlanRow) -> list[str]:
        """Every test of a plan (static: the shards; dynamic: the chunks)."""
        with self._connection() as conn:
            if plan.mode != "dynamic":
                row = conn.execute(
                    "SELECT shards FROM plans WHERE plan_id = ?", (plan.plan_id,)
                ).fetchone()
                shards = orjson.loads(row[0]) if row else []
                return [test for shard in shards for test in shard["tests"]]
            return [
                test
                for (tests,) in conn.execute(
                    "SELECT tests FROM chunks WHERE plan_id = ? ORDER BY chunk_id",
                    (plan.plan_id,),
                )
                for test in orjson.loads(tests)
            ]

    # -- dynamic queues --------------------------------------------------------------------

    def chunks(self, plan_id: str) -> list[ChunkRow]:
        with self._connection() as conn:
            return _chunk_rows(conn, plan_id)

    def next(
        self,
        plan_id: str,
        decide: Callable[[list[ChunkRow]], tuple[Sequence[ChunkChange], int | None, T]],
    ) -> tuple[T, list[str] | None]:
        """Apply ``decide(chunk states)`` in one write transaction.

        ``decide`` returns the changes to write, the id of the chunk handed out (or None) and
        an answer that is passed back with the tests of that chunk.
        """
        with self._transaction() as conn:
            changes, leased, answer = decide(_chunk_rows(conn, plan_id))
            for change in changes:
                if change.completed is not None:
                    conn.execute(
                        "UPDATE chunks SET completed = ? WHERE plan_id = ? AND chunk_id = ?"
                        " AND completed IS NULL",
                        (change.completed, plan_id, change.chunk_id),
                    )
                if change.holder is not None:
                    conn.execute(
                        "UPDATE chunks SET holder = ?, lease_until = ?, leases = leases + ?"
                        " WHERE plan_id = ? AND chunk_id = ?",
                        (
                            change.holder,
                            change.lease_until,
                            int(change.handed_out),
                            plan_id,
                            change.chunk_id,
                        ),
                    )
            tests: list[str] | None = None
            if leased is not None:
                row = conn.execute(
                    "SELECT tests FROM chunks WHERE plan_id = ? AND chunk_id = ?",
                    (plan_id, leased),
                ).fetchone()
                tests = orjson.loads(row[0])
        return answer, tests


def _chunk_rows(conn: sqlite3.Connection, plan_id: str) -> list[ChunkRow]:
    return [
        ChunkRow(*row)
        for row in conn.execute(
            "SELECT chunk_id, estimate, holder, lease_until, leases, completed FROM chunks"
            " WHERE plan_id = ? ORDER BY chunk_id",
            (plan_id,),
        )
    ]

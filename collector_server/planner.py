"""Plans for sharded builds: made once from the store's durations, cached, served to every shard.

Contract notes (the HTTP API is documented in docs/collector-api.md); everything else is as
agreed, and these only add to it or pin down what it left open:

- ``POST /v1/plans/{plan_id}/next`` answers ``retry_after`` (seconds, 0.1 to 5) whenever it
  hands out no chunk and the queue is not done, even when the only chunks left are leased to
  the asker itself; ``retry_after`` is null exactly when a chunk is handed out or the queue is
  done.  It is the time until another shard's chunk is expected to be completed (lease start
  + estimate, at least 1 s) or its lease expires, whichever comes first, so an idle shard
  learns soon that the queue is done.  ``next`` on a static plan is 409 ``plan_not_dynamic``.
- A chunk's lease is ``max(lease_seconds, 3 x chunk estimate + lease_margin)``; both are
  collector settings (defaults 60 and 30 seconds, the agreed formula).
- The plan answer also carries ``tests`` (how many node ids the plan holds); the builds
  report's ``dynamic`` object also carries ``re_leased`` (chunks handed out more than once).
- The builds report counts a test in ``ran_more_than_once`` when more than one run (pytest
  session) of the build reported it; ``one_plan`` is true when at least one run reported and
  every run carried the same plan id; ``planned`` is the union of the build's plans' tests.

A plan is keyed by (tenant, suite, build id, shard count, granularity, mode, test-set hash) and
its id is a digest of that key, so every shard of a build that collected the same tests gets the
same plan, whenever it asks and whatever durations arrived meanwhile: the first request makes
it (:func:`make_plan`), later ones read it back from :class:`PlanStore`.

Dynamic mode cuts the plan's units into a queue of chunks (:func:`dynamic_chunks`); shards pull
them with :func:`next_chunk`, a pure decision over the queue's state and an injected time.

Pure decisions (:func:`make_plan`, :func:`next_chunk`, and
:func:`collector_server.builds.build_report`) are apart from the I/O in :class:`Planner`, whose
methods block and run in a worker thread.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from collector_server.builds import BuildPlan, build_report
from collector_server.errors import RequestError
from collector_server.settings import CollectorSettings
from collector_server.store import Store
from collector_server.store.plans import (
    PLANS_FILE,
    ChunkChange,
    ChunkRow,
    NewChunk,
    NewPlan,
    PlanRow,
    PlanStore,
)
from pytest_testengine.splitting import (
    DEFAULT_OVERHEAD,
    SplitBy,
    dynamic_chunks,
    estimate,
    plan_tests,
    test_set_hash,
)

#: Plans past their retention are deleted at start and at most this often (seconds) after.
PRUNE_INTERVAL: Final = 3600.0

Mode = Literal["static", "dynamic"]
MODES: Final[tuple[Mode, ...]] = ("static", "dynamic")

#: Bounds of the ``retry_after`` a shard is told when no chunk is free.
RETRY_AFTER_MIN: Final = 0.1
RETRY_AFTER_MAX: Final = 5.0
#: How often a shard with nothing to do asks again while others run chunks past their estimate.
OVERDUE_POLL: Final = 1.0
#: A chunk's lease is at least this many times its estimate (plus the margin).
LEASE_FACTOR: Final = 3.0

PlanKey = tuple[str, str, str, int, str, str, str]


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """A validated ``POST /v1/plans`` body."""

    suite: str
    build_id: str
    total: int
    index: int
    by: SplitBy
    mode: Mode
    tests: Sequence[str]  # unique node ids in collection order


@dataclass(frozen=True, slots=True)
class NextRequest:
    """A validated ``POST /v1/plans/{plan_id}/next`` body (chunk ids not yet range-checked)."""

    index: int
    completed: Sequence[int]
    holding: Sequence[int]
    take: bool = True  # False: complete and renew only, hand out no chunk


@dataclass(frozen=True, slots=True)
class QueueAnswer:
    chunk: int | None
    estimate: float
    done: bool
    retry_after: float | None
    lease_seconds: float
    remaining: int


# -- pure decisions --------------------------------------------------------------------------


def plan_id_of(key: PlanKey) -> str:
    """The id of the plan cached under *key*: 32 hex digits of a digest of the key."""
    text = "".join(f"{len(str(part))}:{part}\n" for part in ("testengine-plan-id-v1", *key))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def lease_for(estimate: float, *, base: float, margin: float) -> float:
    """Seconds a chunk estimated at *estimate* seconds stays leased to one shard."""
    return max(base, LEASE_FACTOR * estimate + margin)


def make_plan(
    key: PlanKey,
    request: PlanRequest,
    durations: Mapping[str, float],
    *,
    created: float,
    lease_seconds: float,
    overhead: float = DEFAULT_OVERHEAD,
) -> NewPlan:
    """The plan of *request* from the known *durations* (median passing seconds per node id)."""
    tenant, suite, build_id, total, by, mode, digest = key
    chunks: list[NewChunk] = []
    meta: dict[str, Any]
    if request.mode == "static":
        plan, estimates = plan_tests(
            request.tests, durations, request.total, by=request.by, overhead=overhead
        )
        shards = orjson.dumps(
            [
                {"index": s.index, "tests": s.test_ids, "estimated": round(s.estimate, 3)}
                for s in plan.shards
            ]
        )
        estimated_total = plan.total
        meta = {}
    else:
        estimates = estimate(request.tests, durations, overhead=overhead)
        queue = dynamic_chunks(request.tests, estimates.seconds, request.total, by=request.by)
        chunks = [NewChunk(c.index, c.test_ids, c.estimate) for c in queue]
        shards = b"[]"
        estimated_total = math.fsum(c.estimate for c in queue)
        meta = {"chunks": len(chunks), "lease_seconds": lease_seconds}
    meta = {
        "estimated_total": round(estimated_total, 3),
        "without_history": estimates.without_history,
        "estimate_sources": estimates.counts(),
        **meta,
    }
    row = PlanRow(
        plan_id=plan_id_of(key),
        tenant=tenant,
        suite=suite,
        build_id=build_id,
        total=total,
        by=by,
        mode=mode,
        test_set_hash=digest,
        tests=len(request.tests),
        created=round(created, 3),
        meta=meta,
    )
    return NewPlan(row=row, shards=shards, chunks=chunks)


def plan_body(row: PlanRow, *, cached: bool, shards: bytes) -> bytes:
    """The JSON answer to ``POST /v1/plans``; *shards* is the stored assignment, as JSON."""
    head = orjson.dumps(
        {
            "plan_id": row.plan_id,
            "suite": row.suite,
            "build_id": row.build_id,
            "total": row.total,
            "by": row.by,
            "mode": row.mode,
            "test_set_hash": row.test_set_hash,
            "cached": cached,
            "created": row.created,
            "tests": row.tests,
            **row.meta,
        }
    )
    return head[:-1] + b',"shards":' + shards + b"}"


def next_chunk(
    chunks: Sequence[ChunkRow],
    index: int,
    completed: Iterable[int],
    holding: Iterable[int],
    *,
    now: float,
    lease: Callable[[float], float],
    take: bool = True,
) -> tuple[list[ChunkChange], int | None, QueueAnswer]:
    """Decide one ``next`` call of shard *index*: what to write, and which chunk to hand out.

    *completed* chunks are marked done (idempotent, even after their lease expired); the
    *holding* chunks' leases are renewed unless another shard holds them under a lease that has
    not expired; then the first chunk (longest first) that is neither done nor under an
    unexpired lease is leased to the asker (unless *take* is false: a renewal only).  A lease
    ending at or before *now* has expired.
    """
    by_id = {c.chunk_id: c for c in chunks}
    changes: list[ChunkChange] = []
    done = {c.chunk_id for c in chunks if c.completed is not None}
    for chunk_id in completed:
        if chunk_id not in done:
            done.add(chunk_id)
            changes.append(ChunkChange(chunk_id, completed=now))
    renewed: dict[int, float] = {}
    for chunk_id in holding:
        c = by_id[chunk_id]
        if chunk_id in done or chunk_id in renewed or c.holder is None:
            continue
        if c.holder == index or c.lease_until is None or c.lease_until <= now:
            renewed[chunk_id] = now + lease(c.estimate)
            changes.append(ChunkChange(chunk_id, holder=index, lease_until=renewed[chunk_id]))
    free = None
    for c in chunks if take else ():
        if c.chunk_id in done or c.chunk_id in renewed:
            continue
        if c.holder is None or c.lease_until is None or c.lease_until <= now:
            free = c
            break
    remaining = len(chunks) - len(done)
    if free is not None:
        seconds = lease(free.estimate)
        changes.append(
            ChunkChange(free.chunk_id, holder=index, lease_until=now + seconds, handed_out=True)
        )
        answer = QueueAnswer(free.chunk_id, free.estimate, False, None, seconds, remaining)
        return changes, free.chunk_id, answer
    retry_after: float | None = None
    if remaining:
        waits = [
            _wait_for(c.lease_until, c.estimate, now, lease)
            for c in chunks
            if c.chunk_id not in done
            and c.chunk_id not in renewed
            and c.lease_until is not None
            and c.lease_until > now
        ]
        wait = min(waits) if waits else RETRY_AFTER_MAX
        retry_after = round(min(max(wait, RETRY_AFTER_MIN), RETRY_AFTER_MAX), 3)
    answer = QueueAnswer(None, 0.0, remaining == 0, retry_after, lease(0.0), remaining)
    return changes, None, answer


def _wait_for(
    lease_until: float, estimate: float, now: float, lease: Callable[[float], float]
) -> float:
    """Seconds until another shard's chunk may change: its lease expires, or it is expected
    to be completed (lease start + estimate; at least OVERDUE_POLL seconds)."""
    finishes = lease_until - lease(estimate) + estimate - now
    return min(lease_until - now, max(finishes, OVERDUE_POLL))


def check_chunk_ids(request: NextRequest, chunks: int) -> None:
    """422 for a chunk id the plan does not have, naming the field."""
    for name, ids in (("completed", request.completed), ("holding", request.holding)):
        for position, chunk_id in enumerate(ids):
            if not 0 <= chunk_id < chunks:
                raise RequestError(
                    422,
                    "invalid_value",
                    f"[testengine] unknown chunk id {chunk_id} in {name}[{position}]: this "
                    f"plan has chunks 0 to {chunks - 1}",
                    f"{name}[{position}]",
                )


# -- I/O -------------------------------------------------------------------------------------


def not_found(plan_id: str) -> RequestError:
    return RequestError(
        404,
        "plan_not_found",
        f"[testengine] no plan {plan_id[:40]!r} for this token's tenant: ask POST /v1/plans "
        "for a plan first",
        "plan_id",
    )


class Planner:
    """Plans from the store's durations, kept in a :class:`PlanStore`.  Methods block."""

    def __init__(
        self,
        settings: CollectorSettings,
        plans: PlanStore,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.plans = plans
        self.store = store
        self.clock = clock
        self._making = threading.Lock()  # one plan made at a time: shards of a build agree
        self._pruned = -math.inf  # when plans past their retention were last deleted

    @classmethod
    def from_settings(cls, settings: CollectorSettings, store: Store) -> Planner:
        """A planner keeping its plans in the data directory's ``plans.db``."""
        return cls(settings, PlanStore(settings.data_dir / PLANS_FILE), store)

    def open(self) -> None:
        if not self.plans.is_open:
            self.plans.open()
        self.prune()

    def prune(self) -> int:
        """Delete plans older than the ``plan_retention`` setting; at most once an hour."""
        now = self.clock()
        if now - self._pruned < PRUNE_INTERVAL:
            return 0
        self._pruned = now
        return self.plans.prune(now - self.settings.plan_retention)

    def close(self) -> None:
        self.plans.close()

    def lease(self, estimate: float) -> float:
        return lease_for(
            estimate, base=self.settings.lease_seconds, margin=self.settings.lease_margin
        )

    def plan(self, tenant: str, request: PlanRequest) -> bytes:
        """The plan for *request* (made now, or the one an earlier request made) as JSON."""
        key: PlanKey = (
            tenant,
            request.suite,
            request.build_id,
            request.total,
            request.by,
            request.mode,
            test_set_hash(request.tests),
        )
        row = self.plans.find(key)
        shards: bytes | None = None
        if row is None:
            with self._making:
                row = self.plans.find(key)
                if row is None:
                    self.prune()
                    durations = self.store.durations(tenant, request.suite)
                    new = make_plan(
                        key,
                        request,
                        durations,
                        created=self.clock(),
                        lease_seconds=self.settings.lease_seconds,
                    )
                    if self.plans.insert(new):
                        row, shards = new.row, new.shards
                    else:  # made by another collector on the same file
                        row = self.plans.find(key)
        if row is None:  # pragma: no cover - only plans past their retention are deleted
            raise RuntimeError("plan vanished")
        cached = shards is None
        if shards is None:
            shards = self.plans.shards(row.plan_id) if row.mode == "static" else b"[]"
        self.plans.record_ask(row.plan_id, request.index, self.clock())
        return plan_body(row, cached=cached, shards=shards)

    def next(self, tenant: str, plan_id: str, request: NextRequest) -> dict[str, Any]:
        """Complete, renew and lease chunks of a dynamic plan for shard ``request.index``."""
        row = self.plans.get(tenant, plan_id)
        if row is None:
            raise not_found(plan_id)
        if row.mode != "dynamic":
            raise RequestError(
                409,
                "plan_not_dynamic",
                f"[testengine] plan {plan_id} is static: its shards are in the answer of "
                'POST /v1/plans; ask with "mode": "dynamic" for a queue',
                "plan_id",
            )
        if request.index >= row.total:
            raise RequestError(
                422,
                "invalid_value",
                f"[testengine] invalid value {request.index} for index: this plan has "
                f"{row.total} shards, expected an integer from 0 to {row.total - 1}",
                "index",
            )
        check_chunk_ids(request, int(row.meta.get("chunks", 0)))
        now = self.clock()

        def decide(chunks: list[ChunkRow]) -> tuple[list[ChunkChange], int | None, QueueAnswer]:
            return next_chunk(
                chunks,
                request.index,
                request.completed,
                request.holding,
                now=now,
                lease=self.lease,
                take=request.take,
            )

        answer, tests = self.plans.next(plan_id, decide)
        chunk = None
        if answer.chunk is not None:
            chunk = {"id": answer.chunk, "tests": tests, "estimated": round(answer.estimate, 3)}
        return {
            "chunk": chunk,
            "done": answer.done,
            "retry_after": answer.retry_after,
            "lease_seconds": round(answer.lease_seconds, 3),
            "remaining": answer.remaining,
        }

    def build(self, tenant: str, suite: str, build_id: str) -> dict[str, Any] | None:
        """The builds report, or None when the build has neither plans nor results."""
        results = self.store.build(tenant, suite, build_id)
        plans = [
            BuildPlan(
                row=row,
                asked_by=asked_by,
                tests=self.plans.planned_tests(row),
                chunks=self.plans.chunks(row.plan_id) if row.mode == "dynamic" else (),
            )
            for row, asked_by in self.plans.build(tenant, suite, build_id)
        ]
        if not plans and not results.runs:
            return None
        return build_report(suite, build_id, plans, results, now=self.clock())

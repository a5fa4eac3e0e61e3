"""The builds report (``GET /v1/suites/{suite}/builds/{build_id}``): which plans a CI build
used, which shards and plans reported results, and which planned tests never ran (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from collector_server.store import BuildResults
from collector_server.store.plans import ChunkRow, PlanRow

#: How many never-reported tests the builds report lists.
NOT_RUN_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """One plan of a build, as the builds report needs it."""

    row: PlanRow
    asked_by: Sequence[int]
    tests: Sequence[str]
    chunks: Sequence[ChunkRow]  # empty for a static plan


def build_report(
    suite: str, build_id: str, plans: Sequence[BuildPlan], results: BuildResults, *, now: float
) -> dict[str, Any]:
    """The ``GET /v1/suites/{suite}/builds/{build_id}`` answer."""
    runs = results.runs
    shards = sorted({r.shard_index for r in runs if r.shard_index is not None})
    plan_ids = sorted({r.plan_id for r in runs if r.plan_id is not None})
    one_plan = bool(runs) and len(plan_ids) == 1 and all(r.plan_id is not None for r in runs)
    planned: set[str] = set()
    for plan in plans:
        planned.update(plan.tests)
    reported = results.counts
    not_run = sorted(test for test in planned if test not in reported)
    body: dict[str, Any] = {
        "suite": suite,
        "build_id": build_id,
        "plans": [
            {
                "plan_id": p.row.plan_id,
                "total": p.row.total,
                "by": p.row.by,
                "mode": p.row.mode,
                "tests": p.row.tests,
                "created": p.row.created,
                "asked_by": list(p.asked_by),
            }
            for p in plans
        ],
        "shards_reported": shards,
        "plans_reported": plan_ids,
        "one_plan": one_plan,
        "planned": len(planned),
        "ran": len(planned) - len(not_run),
        "not_run": not_run[:NOT_RUN_LIMIT],
        "not_run_count": len(not_run),
        "ran_more_than_once": sum(1 for test in planned if reported.get(test, 0) > 1),
    }
    queues = [p.chunks for p in plans if p.row.mode == "dynamic"]
    if queues:
        chunks = [c for queue in queues for c in queue]
        body["dynamic"] = {
            "chunks": len(chunks),
            "completed": sum(1 for c in chunks if c.completed is not None),
            "leased": sum(
                1
                for c in chunks
                if c.completed is None and c.lease_until is not None and c.lease_until > now
            ),
            "expired_leases": sum(
                1
                for c in chunks
                if c.completed is None and c.lease_until is not None and c.lease_until <= now
            ),
            "re_leased": sum(1 for c in chunks if c.leases > 1),
        }
    return body

"""GET /v1/suites/{suite}/builds/{build_id}: what a build planned and what its shards ran."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.collector.test_planner import TESTS, ask, report

pytestmark = pytest.mark.anyio


async def build(client: httpx.AsyncClient, build_id: str = "b-1") -> dict[str, Any]:
    response = await client.get(f"/v1/suites/default/builds/{build_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def run_shard(
    client: httpx.AsyncClient,
    app: Starlette,
    plan: dict[str, Any],
    index: int,
    tests: list[str] | None = None,
    plan_id: str | None = "same",
) -> None:
    """Report the results of one shard of *plan* (its own tests unless *tests* is given)."""
    ran = plan["shards"][index]["tests"] if tests is None else tests
    await report(
        client,
        app,
        dict.fromkeys(ran, 0.1),
        build_id=plan["build_id"],
        shard_index=index,
        shard_total=plan["total"],
        plan_id=plan["plan_id"] if plan_id == "same" else plan_id,
    )


async def test_a_shard_that_never_reported(client: httpx.AsyncClient, app: Starlette) -> None:
    plan = await ask(client)
    for index in (1, 2, 3):
        await ask(client, index=index)
    for index in (0, 1, 2):
        await run_shard(client, app, plan, index)
    body = await build(client)
    missing = sorted(plan["shards"][3]["tests"])
    assert missing
    assert body == {
        "suite": "default",
        "build_id": "b-1",
        "plans": [
            {
                "plan_id": plan["plan_id"],
                "total": 4,
                "by": "test",
                "mode": "static",
                "tests": 40,
                "created": plan["created"],
                "asked_by": [0, 1, 2, 3],
            }
        ],
        "shards_reported": [0, 1, 2],
        "plans_reported": [plan["plan_id"]],
        "one_plan": True,
        "planned": 40,
        "ran": 40 - len(missing),
        "not_run": missing,
        "not_run_count": len(missing),
        "ran_more_than_once": 0,
    }
    # the last shard is retried and runs one test of shard 0 as well
    await run_shard(client, app, plan, 3, [*missing, plan["shards"][0]["tests"][0]])
    body = await build(client)
    assert (body["shards_reported"], body["ran"], body["not_run"]) == ([0, 1, 2, 3], 40, [])
    assert (body["not_run_count"], body["ran_more_than_once"], body["one_plan"]) == (0, 1, True)


async def test_two_plans_in_one_build(client: httpx.AsyncClient, app: Starlette) -> None:
    four = await ask(client)
    three = await ask(client, total=3, tests=TESTS[:-1])  # a shard collected other tests
    await run_shard(client, app, four, 0)
    await run_shard(client, app, three, 1)
    body = await build(client)
    assert [p["plan_id"] for p in body["plans"]] == [four["plan_id"], three["plan_id"]]
    assert [p["asked_by"] for p in body["plans"]] == [[0], [0]]
    assert body["plans_reported"] == sorted([four["plan_id"], three["plan_id"]])
    assert body["one_plan"] is False
    assert body["planned"] == 40  # the union of both plans' tests
    ran = set(four["shards"][0]["tests"]) | set(three["shards"][1]["tests"])
    assert body["ran"] == len(ran)
    assert body["not_run"] == sorted(set(TESTS) - ran)


async def test_a_shard_without_a_plan_id_breaks_one_plan(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    plan = await ask(client, total=2)
    await run_shard(client, app, plan, 0)
    assert (await build(client))["one_plan"] is True
    await run_shard(client, app, plan, 1, plan_id=None)  # a shard on its local fallback
    body = await build(client)
    assert body["one_plan"] is False
    assert body["plans_reported"] == [plan["plan_id"]]
    assert body["not_run"] == []


async def test_results_without_plans(client: httpx.AsyncClient, app: Starlette) -> None:
    await report(client, app, {"a.py::t": 1.0}, build_id="b-7", shard_index=0, shard_total=1)
    await report(client, app, {"a.py::t": 1.0}, build_id="b-8")
    body = await build(client, "b-7")
    assert (body["plans"], body["shards_reported"], body["plans_reported"]) == ([], [0], [])
    assert (body["planned"], body["ran"], body["not_run"], body["one_plan"]) == (0, 0, [], False)
    assert "dynamic" not in body
    assert (await build(client, "b-8"))["shards_reported"] == []
    assert (await client.get("/v1/suites/other/builds/b-7")).status_code == 404


async def test_not_run_lists_the_first_thousand(client: httpx.AsyncClient) -> None:
    tests = [f"t.py::test_{i:05}" for i in range(1500)]
    await ask(client, tests=tests, total=2)
    body = await build(client)
    assert body["not_run"] == tests[:1000]
    assert body["not_run_count"] == 1500


async def test_dynamic_build_counts(client: httpx.AsyncClient, app: Starlette) -> None:
    plan = await ask(client, mode="dynamic", total=2)
    path = f"/v1/plans/{plan['plan_id']}/next"
    first = (await client.post(path, json={"index": 0})).json()["chunk"]
    await client.post(path, json={"index": 1})
    await client.post(path, json={"index": 0, "completed": [first["id"]]})
    body = await build(client)
    assert body["dynamic"] == {
        "chunks": plan["chunks"],
        "completed": 1,
        "leased": 2,
        "expired_leases": 0,
        "re_leased": 0,
    }
    await report(
        client,
        app,
        dict.fromkeys(first["tests"], 0.1),
        build_id="b-1",
        shard_index=0,
        shard_total=2,
        plan_id=plan["plan_id"],
    )
    body = await build(client)
    assert body["ran"] == len(first["tests"])
    assert body["not_run_count"] == 40 - len(first["tests"])


async def test_a_build_id_with_slashes(client: httpx.AsyncClient, app: Starlette) -> None:
    build_id = "release/2.4/1234"
    plan = await ask(client, build_id=build_id, total=2)
    await run_shard(client, app, plan, 0)
    body = await build(client, build_id)
    assert (body["build_id"], body["shards_reported"], body["planned"]) == (build_id, [0], 40)
    assert sorted(body["not_run"]) == sorted(plan["shards"][1]["tests"])
